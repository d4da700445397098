"""Peer scan episodes: one alert per episode, a new one after the cooldown, restored after a restart."""

from __future__ import annotations

from core.peer_scan import DAY, PeerScan

HOT = {"count": 9.0, "exposure": 20.0, "peer_count": 10.0, "peer_exposure": 1000.0}
COLD = {"count": 1.0, "exposure": 20.0, "peer_count": 10.0, "peer_exposure": 1000.0}
KEY = ("M", "B", "fire")


def _scan() -> PeerScan:
    params = {"min_count": 3, "min_ratio": 2.0, "max_p": 1.0}
    return PeerScan("disproportionality", params, window_s=90 * DAY, cooldown_s=30 * DAY, config_version="v")


def test_one_alert_per_episode_and_a_new_one_after_the_cooldown() -> None:
    scan = _scan()
    (first,) = scan.scan({KEY: HOT}, at=100 * DAY)
    assert first.opened_at == 100 * DAY and first.detector == "disproportionality"
    assert scan.scan({KEY: HOT}, at=120 * DAY) == []  # still alarming: the same episode
    assert scan.scan({KEY: COLD}, at=140 * DAY) == []  # quiet, but not for 30 days yet
    assert scan.scan({KEY: HOT}, at=149 * DAY) == []  # within 30 days of the last alarm (day 120)
    assert scan.scan({KEY: COLD}, at=190 * DAY) == []  # 41 days quiet: the episode ends
    (second,) = scan.scan({KEY: HOT}, at=200 * DAY)
    assert second.alert_id != first.alert_id


def test_the_same_day_gives_the_same_alert_id_and_no_news_scores_nothing() -> None:
    a, b = _scan(), _scan()
    (x,) = a.scan({KEY: HOT}, at=100 * DAY + 5)
    (y,) = b.scan({KEY: HOT}, at=100 * DAY + 7_000)
    assert x.alert_id == y.alert_id  # two leaders, or a replay, on one day
    assert a.scan({("M", "B", "seat"): HOT}, at=100 * DAY + 5) == []  # time did not move


def test_keys_without_recent_incidents_are_not_scored() -> None:
    scan = _scan()
    assert scan.scan({KEY: {**HOT, "count": 0.0}}, at=DAY) == [] and scan.detectors == {}


def test_restore_reopens_episodes_from_stored_alerts() -> None:
    scan = _scan()
    scan.restore(
        [{"alert_id": "a1", "model": "M", "batch": "B", "failure_mode": "fire", "opened_at": 95 * DAY}]
    )
    assert scan.scan({KEY: HOT}, at=100 * DAY) == []
    assert scan.episodes[KEY].alert_id == "a1"
