"""Case storage in ClickHouse: the append-only case log, command results and Slack thread positions.

The same SQL runs on chdb and on the 18.16 server. Writes are idempotent: an event is keyed by
(case_id, seq), a command result by command_id and a thread position keeps its highest seq, so a
worker killed between writing and acknowledging writes the same rows again and nothing changes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from cases.lifecycle import CaseEvent
from sinks.clickhouse import ClickHouseStore


@dataclass(frozen=True, slots=True)
class CommandResult:
    command_id: str
    case_id: str
    status: str  # "ok" | "refused" | "unknown_case" | "invalid"
    detail: str
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ThreadPosition:
    case_id: str
    channel: str
    ts: str
    posted_seq: int


def event_row(event: CaseEvent, recorded_at: float) -> dict[str, Any]:
    raw = event.to_dict()
    identity = event.data.get("identity")
    return {
        **{
            k: raw[k] for k in ("case_id", "seq", "at", "actor", "action", "from_state", "to_state", "reason")
        },
        "data": orjson.dumps(raw["data"]).decode(),
        "identity": "/".join(identity) if isinstance(identity, list | tuple) else "",
        "command_id": str(event.data.get("command_id") or ""),
        "recorded_at": recorded_at,
    }


def event_from_row(row: dict[str, Any]) -> CaseEvent:
    return CaseEvent.from_dict({**row, "seq": int(row["seq"]), "data": orjson.loads(row["data"])})


class CaseStore:
    def __init__(self, store: ClickHouseStore) -> None:
        self.store = store

    def append(self, events: Sequence[CaseEvent], recorded_at: float | None = None) -> None:
        if events:
            at = time.time() if recorded_at is None else recorded_at
            self.store.insert("case_events", [event_row(e, at) for e in events])

    def events(self, case_id: str | None = None, since: float | None = None) -> list[CaseEvent]:
        """The log in (case_id, seq) order: one case's, or every case's (recorded after ``since``)."""
        sql = "SELECT * FROM case_events FINAL WHERE 1"
        params: dict[str, Any] = {}
        if case_id is not None:
            sql += " AND case_id = {case_id}"
            params["case_id"] = case_id
        if since is not None:
            sql += " AND recorded_at >= {since}"
            params["since"] = since
        sql += " ORDER BY case_id, seq"
        return [event_from_row(r) for r in self.store.query(sql, params)]

    def case_ids(self, state: str | None = None, limit: int = 100) -> list[str]:
        """Case ids, most recently changed first, optionally only those whose latest state is ``state``."""
        sql = (
            "SELECT case_id, argMax(to_state, seq) AS state, max(at) AS updated"
            " FROM case_events FINAL GROUP BY case_id"
        )
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            sql += " HAVING state = {state}"
            params["state"] = state
        sql += " ORDER BY updated DESC, case_id LIMIT {limit}"
        return [r["case_id"] for r in self.store.query(sql, params)]

    def record_result(self, result: CommandResult, recorded_at: float | None = None) -> None:
        row = {
            "command_id": result.command_id,
            "case_id": result.case_id,
            "status": result.status,
            "detail": result.detail[:2000],
            "seqs": list(result.seqs),
            "recorded_at": time.time() if recorded_at is None else recorded_at,
        }
        self.store.insert("case_command_results", [row])

    def result(self, command_id: str) -> CommandResult | None:
        rows = self.store.query(
            "SELECT * FROM case_command_results FINAL WHERE command_id = {id}", {"id": command_id}
        )
        if not rows:
            return None
        r = rows[0]
        seqs = tuple(int(s) for s in r["seqs"])
        return CommandResult(r["command_id"], r["case_id"], r["status"], r["detail"], seqs)

    def thread(self, case_id: str) -> ThreadPosition | None:
        rows = self.store.query("SELECT * FROM case_threads FINAL WHERE case_id = {id}", {"id": case_id})
        if not rows:
            return None
        r = rows[0]
        return ThreadPosition(r["case_id"], r["channel"], r["ts"], int(r["posted_seq"]))

    def latest_thread_channel(self) -> str | None:
        """The channel of the thread position saved last, skipping refused roots and the console.

        A restarted worker configured with a channel name reads its id here, so it can look for a
        root lost in a crash before its own first root post has told it the id.
        """
        rows = self.store.query(
            "SELECT channel FROM case_threads FINAL WHERE ts != '' AND channel NOT IN ('none', 'console')"
            " AND channel NOT LIKE '#%' ORDER BY updated_at DESC LIMIT 1"
        )
        return str(rows[0]["channel"]) if rows else None

    def save_thread(self, position: ThreadPosition, updated_at: float | None = None) -> None:
        row = {
            "case_id": position.case_id,
            "channel": position.channel,
            "ts": position.ts,
            "posted_seq": position.posted_seq,
            "updated_at": time.time() if updated_at is None else updated_at,
        }
        self.store.insert("case_threads", [row])


class ConcernIndex:
    """Which cases and alerts concern a unit, from an in-memory index by cell and supplier lot.

    A unit lookup must answer in a few milliseconds, and each query costs about 0.8-2.7 ms on chdb.
    Cases and alerts are few (hundreds or thousands, not millions) and change at human pace, so two
    queries rebuild the whole index when it is older than ``max_age_s``; a lookup costs dict reads.
    """

    def __init__(
        self, cases: CaseStore, max_age_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cases, self.max_age_s, self._clock = cases, max_age_s, clock
        self._lock = threading.Lock()
        self._built_at: float | None = None
        self._by_cell: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._by_lot: dict[str, list[dict[str, Any]]] = {}
        self._alerts: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def alerts(self, model: str, batch: str) -> list[dict[str, Any]]:
        """Alerts on a (model, batch), newest first."""
        with self._lock:
            self._fresh()
            return list(self._alerts.get((model, batch), ()))

    def _fresh(self) -> None:
        if self._built_at is None or self._clock() - self._built_at > self.max_age_s:
            self._rebuild()

    def concerning(self, model: str, batch: str, lots: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Cases about a unit's (model, batch), any failure mode, or one of its supplier lots."""
        with self._lock:
            self._fresh()
            found = list(self._by_cell.get((model, batch), ()))
            for lot in lots:
                found += self._by_lot.get(lot, ())
        return sorted(found, key=lambda c: c["case_id"])

    def _rebuild(self) -> None:
        rows = self.cases.store.query(
            "SELECT case_id, argMax(to_state, seq) AS state, argMin(data, seq) AS first,"
            " argMaxIf(data, seq, action = 'decide') AS decided,"
            " argMaxIf(data, seq, action = 'launch_campaign') AS campaign"
            " FROM case_events FINAL GROUP BY case_id"
        )
        by_cell: dict[tuple[str, str], list[dict[str, Any]]] = {}
        by_lot: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            identity = orjson.loads(r["first"]).get("identity") or []
            if r["state"] == "new" or not identity:
                continue  # only muted so far: nobody opened a case
            campaign = orjson.loads(r["campaign"]) if r["campaign"] else {}
            case = {
                "case_id": r["case_id"],
                "signal": identity,
                "state": r["state"],
                "decision": orjson.loads(r["decided"]).get("decision") if r["decided"] else None,
                "remedy": campaign.get("remedy") if r["state"] == "campaign" else None,
            }
            # A running campaign also concerns the neighbouring batches and lots it was extended to.
            covered = [identity, *(campaign.get("scope", []) if r["state"] == "campaign" else [])]
            keys = {(i[0], *i[1:3]) for i in covered if i and i[0] in ("lot", "cell")}
            for kind, *parts in sorted(keys):
                if kind == "lot":
                    by_lot.setdefault(parts[0], []).append(case)
                else:
                    by_cell.setdefault((parts[0], parts[1]), []).append(case)
        alerts: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for a in self.cases.store.query(
            "SELECT alert_id, model, batch, opened_at, failure_mode, detector, score FROM alerts FINAL"
            " ORDER BY opened_at DESC, alert_id"
        ):
            cell = (a.pop("model"), a.pop("batch"))
            alerts.setdefault(cell, []).append(a)
        self._by_cell, self._by_lot, self._alerts = by_cell, by_lot, alerts
        self._built_at = self._clock()


def seqs_of(events: Iterable[CaseEvent]) -> tuple[int, ...]:
    return tuple(e.seq for e in events)
