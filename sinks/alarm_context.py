"""What the alarm ranker needs to know about an alert, read from the ``events`` table.

The worker's cells each see one (model, batch): they cannot know how the same failure mode runs in
the model's other batches or across the fleet. ClickHouse holds every event, so at the moment an
alert is ranked one query gives the observation ``core.peers.PeerWindows`` gives the backtest, with
the same definitions (trailing window and long history, own cell excluded from its peers), so the
ranker reads live alerts as it read its training data. Alerts are rare, so one scan per alert is
cheap; ``uniqExact(event_id)`` instead of ``FINAL`` keeps a replayed, not yet merged event from
counting twice.
"""

from __future__ import annotations

from typing import Any

from core.peer_scan import KeyCounts, peer_observations
from sinks.clickhouse import ClickHouseStore

DAY = 86_400

_KEYS_SQL = """
SELECT model, batch, failure_mode,  -- "n_" names: an alias must not shadow the flag columns
    uniqExactIf(event_id, hist) AS n_history,
    uniqExactIf(event_id, recent) AS n_recent,
    uniqExactIf(event_id, previous) AS n_previous,
    uniqExactIf(event_id, recent AND crash = 1) AS n_crash,
    uniqExactIf(event_id, recent AND fire = 1) AS n_fire,
    uniqExactIf(event_id, recent AND injury = 1) AS n_injury,
    toUInt32(min(occurred_at)) AS first_seen
FROM (
    SELECT event_id, model, batch, failure_mode, crash, fire, injury, occurred_at,
        toUInt32(occurred_at) > {recent_from} AS recent,
        toUInt32(occurred_at) > {previous_from} AND toUInt32(occurred_at) <= {recent_from} AS previous,
        toUInt32(occurred_at) > {history_from} AS hist
    FROM events
    WHERE kind IN ('complaint', 'repair', 'return') AND toUInt32(occurred_at) <= {at}
)
GROUP BY model, batch, failure_mode
"""


class AlarmContext:
    """Reads an alert's ranking observation; ``window_days`` and ``history_days`` are the ranker's."""

    def __init__(self, store: ClickHouseStore, window_days: int, history_days: int) -> None:
        self.store = store
        self.window_s = window_days * DAY
        self.history_s = history_days * DAY

    def observation(self, model: str, batch: str, failure_mode: str, at: float) -> dict[str, float]:
        """One key's observation at ``at``: the peer scan's, so both read the same counts."""
        found = peer_observations(self.key_counts(at), at).get((model, batch, failure_mode))
        return found if found is not None else dict.fromkeys(_FIELDS, 0.0)

    def holds_event(self, model: str, batch: str, event_id: str) -> bool:
        """Whether an event's row is written (read by the events' primary key)."""
        rows = self.store.query(
            "SELECT count() AS n FROM events WHERE model = {m} AND batch = {b} AND event_id = {e}",
            {"m": model, "b": batch, "e": event_id},
        )
        return bool(rows and rows[0]["n"])

    def latest_event_time(self) -> int:
        """The newest incident's event time: a scan's "now", so replays and simulations scan at
        their own pace rather than the wall clock's."""
        rows = self.store.query(
            "SELECT toUInt32(max(occurred_at)) AS at FROM events"
            " WHERE kind IN ('complaint', 'repair', 'return')"
        )
        return int(rows[0]["at"] or 0) if rows else 0

    def key_counts(self, at: float) -> list[KeyCounts]:
        """Every (model, batch, failure mode)'s counts as of ``at``, in one grouped query."""
        end = int(at)
        params = {"at": end, "recent_from": end - self.window_s, "previous_from": end - 2 * self.window_s,
                  "history_from": end - self.history_s}  # fmt: skip
        return [_key_counts(r) for r in self.store.query(_KEYS_SQL, params)]


def _key_counts(r: dict[str, Any]) -> KeyCounts:
    key = (str(r["model"]), str(r["batch"]), str(r["failure_mode"]))
    numbers = [int(r[f"n_{k}"]) for k in ("recent", "previous", "history", "crash", "fire", "injury")]
    return KeyCounts(*key, *numbers, first_seen=float(r["first_seen"]))


_FIELDS = (
    "count", "exposure", "previous_count", "peer_count", "peer_exposure", "model_peer_count",
    "model_peer_exposure", "crash_count", "fire_count", "injury_count", "cell_age_days",
)  # fmt: skip
