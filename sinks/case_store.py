"""Case storage in ClickHouse: the append-only case log, command results and Slack thread positions.

The same SQL runs on chdb and on the 18.16 server. Writes are idempotent: an event is keyed by
(case_id, seq), a command result by command_id and a thread position keeps its highest seq, so a
worker killed between writing and acknowledging writes the same rows again and nothing changes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from cases.identity import SignalIdentity, case_id_for
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

    def concerning(self, model: str, batch: str, lots: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Cases about a unit's (model, batch), any failure mode, or one of its supplier lots."""
        prefix = "/".join(("cell", model, batch, ""))
        where = "substring(identity, 1, length({prefix})) = {prefix}"
        params: dict[str, Any] = {"prefix": prefix}
        if lots:  # the 18.16 server refuses has() on an empty list
            where += " OR has({lot_ids}, case_id)"
            params["lot_ids"] = [case_id_for(SignalIdentity.lot(lot)) for lot in lots]
        rows = self.store.query(
            "SELECT case_id, argMax(to_state, seq) AS state,"
            " argMaxIf(data, seq, action = 'decide') AS decided,"
            " anyIf(identity, identity != '') AS signal FROM case_events FINAL"
            f" WHERE case_id IN (SELECT case_id FROM case_events WHERE {where})"
            " GROUP BY case_id ORDER BY case_id",
            params,
        )
        return [
            {
                "case_id": r["case_id"],
                "signal": r["signal"],
                "state": r["state"],
                "decision": orjson.loads(r["decided"]).get("decision") if r["decided"] else None,
            }
            for r in rows
            if r["state"] != "new"  # only muted so far: nobody opened a case
        ]

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

    def save_thread(self, position: ThreadPosition, updated_at: float | None = None) -> None:
        row = {
            "case_id": position.case_id,
            "channel": position.channel,
            "ts": position.ts,
            "posted_seq": position.posted_seq,
            "updated_at": time.time() if updated_at is None else updated_at,
        }
        self.store.insert("case_threads", [row])


def seqs_of(events: Iterable[CaseEvent]) -> tuple[int, ...]:
    return tuple(e.seq for e in events)
