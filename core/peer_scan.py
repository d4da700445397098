"""The worker's peer detector: every key against all other cells, as the backtest tunes it.

A cell's own detectors (``core.cells``) compare a (model, batch) with its own past; a defect that
is in a batch from its first day, or a failure mode that a whole fleet reports at a low rate, needs
the comparison with *peers*: the same component in other cells and in the model's other batches.
Cells live in different partitions, so the worker's leader periodically reads every key's counts
(one grouped query, ``sinks/alarm_context.py``), turns them into the observations
``core.peers.PeerWindows`` gives the backtest (:func:`peer_observations`; a test holds the two
equal), and runs the backtest's detector class with the backtest's tuned parameters
(:class:`PeerScan`). So what a data scientist tunes with ``recallwatch tune`` is what runs live.

Episodes: one alert per key until it has been quiet for ``cooldown_s`` of event time (the scorer
folds alarms within 90 days into one episode too). An alert's id comes from the key and the day
its episode started, so two scans of the same day, or a restarted leader, give the same id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.alerts import Alert, alert_id_for
from models import build_detector
from models.base import Detector

DAY = 86_400
Key = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class KeyCounts:
    """One (model, batch, failure mode) as of the scan: incidents in the trailing window, the
    window before it and the long history, severe incidents in the window, and the first incident."""

    model: str
    batch: str
    failure_mode: str
    recent: int
    previous: int
    history: int
    crash: int = 0
    fire: int = 0
    injury: int = 0
    first_seen: float = 0.0


def peer_observations(rows: Iterable[KeyCounts], at: float) -> dict[Key, dict[str, float]]:
    """Each key's observation at ``at``, with the fields and meaning of ``PeerWindows.observe``.

    >>> rows = [KeyCounts("M", "B1", "brakes", 4, 1, 9, crash=2, first_seen=0.0),
    ...         KeyCounts("M", "B1", "seat", 1, 0, 5), KeyCounts("M", "B2", "brakes", 0, 0, 6)]
    >>> x = peer_observations(rows, at=10 * DAY)[("M", "B1", "brakes")]
    >>> x["count"], x["exposure"], x["peer_count"], x["peer_exposure"], x["cell_age_days"]
    (4.0, 5.0, 6.0, 6.0, 10.0)
    """
    rows = list(rows)
    cell_recent: Counter[tuple[str, str]] = Counter()
    cell_hist: Counter[tuple[str, str]] = Counter()
    component_hist: Counter[str] = Counter()
    model_component_hist: Counter[tuple[str, str]] = Counter()
    model_hist: Counter[str] = Counter()
    first_seen: dict[tuple[str, str], float] = {}
    for r in rows:
        cell = (r.model, r.batch)
        cell_recent[cell] += r.recent
        cell_hist[cell] += r.history
        component_hist[r.failure_mode] += r.history
        model_component_hist[(r.model, r.failure_mode)] += r.history
        model_hist[r.model] += r.history
        first_seen[cell] = min(first_seen.get(cell, r.first_seen), r.first_seen)
    total = sum(cell_hist.values())
    out: dict[Key, dict[str, float]] = {}
    for r in rows:
        cell = (r.model, r.batch)
        out[(r.model, r.batch, r.failure_mode)] = {
            "count": float(r.recent),
            "exposure": float(cell_recent[cell]),
            "peer_count": float(component_hist[r.failure_mode] - r.history),
            "peer_exposure": float(total - cell_hist[cell]),
            "model_peer_count": float(model_component_hist[(r.model, r.failure_mode)] - r.history),
            "model_peer_exposure": float(model_hist[r.model] - cell_hist[cell]),
            "previous_count": float(r.previous),
            "crash_count": float(r.crash),
            "fire_count": float(r.fire),
            "injury_count": float(r.injury),
            "cell_age_days": max(0.0, (at - first_seen[cell]) / DAY),
        }
    return out


@dataclass
class PeerEpisode:
    alert_id: str
    started_at: float
    last_alarm_at: float


@dataclass
class PeerScan:
    """Runs one detector per key over scan observations and opens one alert per episode.

    >>> scan = PeerScan("disproportionality", {"min_count": 3, "min_ratio": 2.0, "max_p": 1.0},
    ...                 window_s=90 * DAY, cooldown_s=90 * DAY, config_version="v1")
    >>> hot = {"count": 9, "exposure": 20, "peer_count": 10, "peer_exposure": 1000}
    >>> [a.failure_mode for a in scan.scan({("M", "B", "fire"): hot}, at=100 * DAY)]
    ['fire']
    >>> scan.scan({("M", "B", "fire"): hot}, at=101 * DAY)  # the same episode: no second alert
    []
    """

    detector: str
    params: Mapping[str, Any]
    window_s: int
    cooldown_s: float
    config_version: str
    episodes: dict[Key, PeerEpisode] = field(default_factory=dict)
    detectors: dict[Key, Detector] = field(default_factory=dict)
    last_at: float = float("-inf")

    def restore(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        """Re-open the episodes of alerts this scan raised before (a new leader's memory)."""
        for a in alerts:
            key = (str(a["model"]), str(a["batch"]), str(a["failure_mode"]))
            at = float(a["opened_at"])
            known = self.episodes.get(key)
            if known is None or at > known.last_alarm_at:
                self.episodes[key] = PeerEpisode(str(a["alert_id"]), at, at)

    def scan(
        self,
        observations: Mapping[Key, Mapping[str, float]],
        at: float,
        related_recalls: Callable[[str, str, str], int] | None = None,
    ) -> list[Alert]:
        """Alerts for keys whose detector alarms at ``at`` (event time) and have no open episode."""
        if at <= self.last_at:
            return []  # nothing new since the last scan: scoring again would teach the same bucket twice
        self.last_at = at
        alerts: list[Alert] = []
        for key in sorted(observations):
            model, batch, mode = key
            x = dict(observations[key])
            if x["count"] <= 0:
                continue  # nothing recent: no detector here alarms on silence
            if related_recalls is not None:
                x["related_recalls"] = float(related_recalls(model, mode, batch))
            detector = self.detectors.get(key)
            if detector is None:
                detector = self.detectors[key] = build_detector(self.detector, dict(self.params))
            score = detector.score_one(x)
            detector.learn_one(x)
            episode = self.episodes.get(key)
            if episode is not None and at - episode.last_alarm_at > self.cooldown_s:
                del self.episodes[key]  # cooled down: the next alarm is a new episode
                episode = None
            if score < 1.0:
                continue
            if episode is not None:
                episode.last_alarm_at = at
                continue
            start = float(int(at // DAY) * DAY)
            alert_id = alert_id_for(model, batch, mode, start)
            self.episodes[key] = PeerEpisode(alert_id, start, at)
            alert = Alert(
                alert_id=alert_id, model=model, batch=batch, failure_mode=mode, opened_at=at,
                detector=detector.name, detector_params=detector.params(),
                config_version=self.config_version, score=score, count=int(x["count"]),
                expected=detector.expected(x), units_in_field=0, rate_per_1000=0.0,
                expected_rate_per_1000=0.0, window_s=self.window_s, detectors_fired=(detector.name,),
            )  # fmt: skip
            alerts.append(alert)
        return alerts
