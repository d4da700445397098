"""The live ranking context read from ClickHouse equals the backtest's observation of the same events."""

from __future__ import annotations

import random

from core.peer_scan import peer_observations
from core.peers import CRASH, DAY, FIRE, INJURY, PeerWindows
from sinks.alarm_context import AlarmContext
from sinks.clickhouse import ClickHouseStore
from streams.processing import event_row
from streams.records import Event

T0 = 1_600_000_000
KEYS = [("M1", "B1", "brakes"), ("M1", "B1", "seat"), ("M1", "B2", "brakes"), ("M2", "B9", "brakes"),
        ("M2", "B9", "fuel")]  # fmt: skip


class _Src:  # where an event came from: only partition and offset are read
    def __init__(self, offset: int) -> None:
        self.partition, self.offset, self.timestamp, self.value = 0, offset, 0.0, None


def _history(n: int = 400) -> list[tuple[int, tuple[str, str, str], int]]:
    rng = random.Random(5)
    out = [(T0 + rng.randrange(0, 400 * DAY), rng.choice(KEYS), rng.choice([0, 0, 0, CRASH, FIRE | INJURY]))
           for _ in range(n)]  # fmt: skip
    return sorted(out)


def _insert(store: ClickHouseStore, history: list[tuple[int, tuple[str, str, str], int]]) -> None:
    rows = []
    for i, (t, (model, batch, mode), severity) in enumerate(history):
        flags = {
            "crash": bool(severity & CRASH),
            "fire": bool(severity & FIRE),
            "injury": bool(severity & INJURY),
        }
        event = Event.model_validate(
            {"event_id": f"e{i}", "kind": "complaint", "occurred_at": t, "model": model, "batch": batch,
             "failure_mode": mode, "severity": flags}
        )  # fmt: skip
        rows.append(event_row(event, _Src(i), T0))
    # Units shipped are not incidents: they must not count as exposure or peers.
    ship = Event.model_validate({"event_id": "s1", "kind": "shipment", "occurred_at": T0 + DAY, "model": "M1",
                                 "batch": "B1", "units": 500})  # fmt: skip
    rows.append(event_row(ship, _Src(10_000), T0))
    store.insert("events", rows)
    store.insert("events", rows[:50])  # a replay not merged yet counts once


def test_context_matches_the_backtest_observation(store: ClickHouseStore) -> None:
    history = _history()
    _insert(store, history)
    context = AlarmContext(store, window_days=60, history_days=300)
    windows = PeerWindows(60 * DAY, 300 * DAY)
    checked = 0
    for i, (t, (model, batch, mode), severity) in enumerate(history):
        expected = windows.observe(t, model, batch, mode, severity)
        # Ties at one timestamp: the backtest has seen only the earlier of them; compare after the last.
        if i % 37 or (i + 1 < len(history) and history[i + 1][0] == t):
            continue
        got = context.observation(model, batch, mode, t)
        assert got == {k: v for k, v in expected.items()}, (i, got, expected)
        checked += 1
    assert checked >= 8


def test_context_of_a_cell_without_events(store: ClickHouseStore) -> None:
    x = AlarmContext(store, 90, 3650).observation("none", "none", "brakes", T0)
    assert x["count"] == 0 and x["exposure"] == 0 and x["cell_age_days"] == 0.0


def test_the_scan_observations_match_the_backtest_observation(store: ClickHouseStore) -> None:
    history = _history()
    _insert(store, history)
    context = AlarmContext(store, window_days=60, history_days=300)
    assert context.latest_event_time() == history[-1][0]  # shipments are not incidents
    windows = PeerWindows(60 * DAY, 300 * DAY)
    checked = 0
    for i, (t, key, severity) in enumerate(history):
        expected = windows.observe(t, *key, severity)
        if i % 53 or (i + 1 < len(history) and history[i + 1][0] == t):
            continue
        scanned = peer_observations(context.key_counts(t), t)
        assert scanned[key] == expected, (i, scanned[key], expected)
        checked += 1
    assert checked >= 5
