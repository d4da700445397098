"""Recall case routes: read a case from its stored log, send people's commands to the case's writer.

Reads fold the stored log (``Case.replay``) rather than asking an in-memory book, so an API process
sees exactly what the workers wrote. Commands are checked at the edge (role, argument shapes) so a
typo is a 422 here instead of a refusal recorded by the worker; the core checks everything again.

No `from __future__ import annotations` here: FastAPI must resolve the closure-local `Role` alias.
"""

import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Header, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from cases.commands import HANDLERS, REVIEWER_ROLES, Command
from cases.identity import SignalIdentity, case_id_for
from cases.lifecycle import Case, CaseEvent, Decision, State
from cases.risk import DIMENSIONS, RiskMatrix
from cases.view import view_of, view_to_dict
from core.access import AccessPolicy
from core.alerts import ALL_MODES
from recallwatch.case_bus import CommandBus
from registry.scope import Scope
from sinks.case_store import CaseStore, CommandResult, event_from_row
from sinks.clickhouse import ClickHouseError, ClickHouseUnavailable, literal_chunks
from sinks.registry_store import RegistryStore

CASE_ID = re.compile(r"^case-[0-9a-f]{20}$")
# Visible ASCII only: the key becomes the command id, which is stored and shown in the audit trail.
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
# Command ids the system hands out itself: a caller's key must not pre-empt (and so swallow) them.
_RESERVED_KEY_PREFIXES = ("slack-", "escalate-")
# The actor of alert handling and escalations: a caller naming themselves so would forge the trail.
# ("slack:<user>" stays open: whoever took a case in Slack scores it under that name.)
SYSTEM_ACTOR = "recallwatch"
SYSTEM_ONLY = frozenset({"escalate"})  # the worker escalates overdue tasks; nobody asks for it
_SUMMARY_FIELDS = (
    "case_id", "identity", "title", "state", "decision", "opened_at", "updated_at", "owner",
    "alerts", "muted_alerts", "events", "rank",
)  # fmt: skip


# --- request bodies ------------------------------------------------------------------------------


def _one_of(values: Sequence[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in values:
            raise ValueError(f"{what} must be one of {', '.join(values)}, got {value!r}")
        return value

    return check


def _identity(items: list[str]) -> list[str]:
    try:
        identity = SignalIdentity.from_list(items)
    except (ValueError, IndexError):
        raise ValueError("identity must be ['cell', model, batch, failure_mode] or ['lot', lot_id]") from None
    # The worker refuses names outside the system's rules (a '|' or a control character in a model,
    # say): accepted here, such a command would be queued, dead-lettered there, and never answered.
    return identity.checked().to_list()


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
Identity = Annotated[list[Name], Field(min_length=2, max_length=4), AfterValidator(_identity)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
# Epoch bounds of a task's due time and a silence's expiry. Any finite float used to pass, and 1e18
# was stored and later broke every place that formats it as a date (Python's datetime ends in 9999,
# ClickHouse's DateTime in 2106). Nothing a person plans is before 1970 or after 2100.
EPOCH_MIN, EPOCH_MAX = 0.0, 4_102_444_800.0  # 1970-01-01 and 2100-01-01T00:00:00Z, in epoch seconds


def _plausible_epoch(value: float) -> float:
    if not EPOCH_MIN <= value <= EPOCH_MAX:
        raise ValueError(
            f"must be epoch seconds from {EPOCH_MIN:.0f} (1970-01-01) to {EPOCH_MAX:.0f} (2100-01-01 UTC),"
            f" got {value!r}"
        )
    return value


# strict: "soon" or true is a typo
Epoch = Annotated[float, Field(strict=True, allow_inf_nan=False), AfterValidator(_plausible_epoch)]
ReviewerRole = Annotated[str, AfterValidator(_one_of(REVIEWER_ROLES, "reviewer role"))]


def _actor(value: str) -> str:
    if value == SYSTEM_ACTOR:
        raise ValueError(f"actor {value!r} is the system's; name yourself")
    return value


# API keys are per role, not per person, so the caller names themselves; the audit trail shows it.
Actor = Annotated[Name, AfterValidator(_actor)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 422, not silently ignored


class CommandBody(_Strict):
    reason: Reason
    actor: Actor
    args: dict[str, Any] = Field(default_factory=dict)


class OpenBody(_Strict):
    identity: Identity
    reason: Reason
    actor: Actor


class NoArgs(_Strict):
    pass


class AssignArgs(_Strict):
    person: Name
    role: ReviewerRole


class TakeArgs(_Strict):
    role: ReviewerRole = "quality"


class ScoreArgs(_Strict):
    dimension: Annotated[str, AfterValidator(_one_of(DIMENSIONS, "dimension"))]
    value: Annotated[int, Field(strict=True, ge=1, le=5)]


class DecideArgs(_Strict):
    decision: Decision


class CampaignArgs(_Strict):
    scope: Annotated[list[Identity], Field(max_length=1000)] = Field(default_factory=list)
    remedy: Literal["repair", "replace", "refund", "inspect"] = "repair"


class SilenceArgs(_Strict):
    until: Epoch


class AddTaskArgs(_Strict):
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
    owner: Name
    role: Name
    due: Epoch


class CompleteTaskArgs(_Strict):
    task_id: Annotated[str, Field(pattern=r"^task-[0-9a-f]{12}$")]


class EvidenceArgs(_Strict):
    note: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=5000)]
    complaints: Annotated[list[Name], Field(max_length=1000)] = Field(default_factory=list)


ARGS: Mapping[str, type[BaseModel]] = {
    "assess": NoArgs,
    "assign": AssignArgs,
    "take": TakeArgs,
    "acknowledge": NoArgs,
    "score": ScoreArgs,
    "decide": DecideArgs,
    "launch_campaign": CampaignArgs,
    "close": NoArgs,
    "reassess": NoArgs,
    "reopen": NoArgs,
    "silence": SilenceArgs,
    "add_task": AddTaskArgs,
    "complete_task": CompleteTaskArgs,
    "evidence": EvidenceArgs,
}
"""Argument shapes of the commands people send (``open`` has its own route, ``escalate`` is the system's)."""
assert set(ARGS) | {"open"} | SYSTEM_ONLY == set(HANDLERS), "every command needs an argument shape"


# --- reading cases from the log ------------------------------------------------------------------


def case_from_events(events: Sequence[CaseEvent], matrix: RiskMatrix) -> dict[str, Any]:
    """The JSON case of a non-empty log; its first event carries the identity (the case book's rule)."""
    identity = SignalIdentity.from_list(events[0].data["identity"])
    return view_to_dict(view_of(Case.replay(events), identity, matrix))


def read_case(cases: CaseStore, case_id: str, matrix: RiskMatrix) -> dict[str, Any] | None:
    events = cases.events(case_id)
    return case_from_events(events, matrix) if events else None


def list_cases(
    cases: CaseStore,
    matrix: RiskMatrix,
    *,
    state: str | None,
    model: str | None,
    batch: str | None,
    limit: int,
    order: str = "updated",
) -> list[dict[str, Any]]:
    """Cases most recently changed first (or likeliest recall first, ``order="rank"``, unranked
    last); model and batch filter on the identity of cell cases.

    Two queries for a page: the latest state and first event of every case, then the logs of the
    chosen ones (ordered by rank, every matching case is chosen: its logs are read in queries of
    bounded size). The identity is matched in Python on the first event's data, because
    the stored ``identity`` column joins the parts with "/" and a model name may contain one.
    """
    sql = (
        "SELECT case_id, argMax(to_state, seq) AS state, max(at) AS updated, argMin(data, seq) AS first_data"
        " FROM case_events FINAL GROUP BY case_id"
    )
    params: dict[str, Any] = {}
    if state is not None:
        sql += " HAVING state = {state}"
        params["state"] = state
    sql += " ORDER BY updated DESC, case_id"
    filtered = model is not None or batch is not None
    by_rank = order == "rank"  # the rank lives in the logs: every matching case is read, then cut
    if not filtered and not by_rank:
        sql += " LIMIT {limit}"
        params["limit"] = limit
    ids: list[str] = []
    for row in cases.store.query(sql, params):
        if filtered and not _matches(row["first_data"], model, batch):
            continue
        ids.append(row["case_id"])
        if len(ids) == limit and not by_rank:
            break
    logs: dict[str, list[CaseEvent]] = {}
    # The ids go into the query text, and ClickHouse refuses a query past max_query_size (256 KiB,
    # which the 18.16 server takes no per-query override of): ordered by rank, every case's id was
    # in one list, a 500 from about 9,000 cases on. Bounded chunks keep each query small.
    for chunk in literal_chunks(ids):
        rows = cases.store.query(
            "SELECT * FROM case_events FINAL WHERE has({ids}, case_id) ORDER BY case_id, seq", {"ids": chunk}
        )
        for r in rows:
            event = event_from_row(r)
            logs.setdefault(event.case_id, []).append(event)
    found = [case_from_events(logs[cid], matrix) for cid in ids if cid in logs]
    if by_rank:  # stable: equal ranks keep the most recently changed first
        found.sort(key=lambda c: -c["rank"]["score"] if c["rank"] else 1.0)
    return found[:limit]


def _matches(first_data: str, model: str | None, batch: str | None) -> bool:
    identity = orjson.loads(first_data).get("identity") or []
    if len(identity) != 4 or identity[0] != "cell":
        return False  # a supplier lot case has no model or batch
    return (model is None or identity[1] == model) and (batch is None or identity[2] == batch)


def signal_scope(identity: Sequence[str]) -> Scope:
    if identity[0] == "lot":
        return Scope(supplier_lots=[identity[1]])
    return Scope(models=[identity[1]], batches=[identity[2]])


def affected_scope(registry: RegistryStore, scope: Scope, matrix: RiskMatrix) -> dict[str, Any]:
    """The units the signal's scope covers, from the traceability registry, and the score they suggest."""
    found = registry.resolve(scope, max_ranges=50)
    regions = len(found["by_region"])
    return {
        "units": found["units"],
        "reachable_customers": found["reachable_customers"],
        "regions": regions,
        "by_region": found["by_region"],
        "ranges": found["ranges"],
        "ranges_truncated": found["ranges_truncated"],
        "suggested_scope_score": matrix.scope_score(found["units"], regions),
    }


def linked_complaints(
    registry: RegistryStore, identity: Sequence[str], limit: int = 50
) -> list[dict[str, Any]]:
    """The latest complaint, repair and return events of the signal (a cell's, or its lot's units')."""
    cols = "event_id, kind, occurred_at, serial, model, batch, failure_mode, region"
    if identity[0] == "lot":
        where = "serial IN (SELECT serial FROM units FINAL WHERE has(lot_ids, {lot}))"
        params: dict[str, Any] = {"lot": identity[1]}
    else:
        where = "model = {model} AND batch = {batch}"
        params = {"model": identity[1], "batch": identity[2]}
        if identity[3] != ALL_MODES:
            where += " AND failure_mode = {mode}"
            params["mode"] = identity[3]
    sql = f"SELECT {cols} FROM events FINAL WHERE {where} ORDER BY occurred_at DESC, event_id LIMIT {{limit}}"
    return registry.store.query(sql, {**params, "limit": limit})


def audit_row(event: CaseEvent) -> dict[str, Any]:
    row = event.to_dict()
    return {k: row[k] for k in ("seq", "at", "actor", "action", "from_state", "to_state", "reason", "data")}


# --- the router ----------------------------------------------------------------------------------


def case_router(
    cases: CaseStore,
    bus: CommandBus,
    policy: AccessPolicy,
    caller_role: Any,
    matrix: RiskMatrix,
    public_url: str,
    clock: Callable[[], float] = time.time,
    registry: RegistryStore | None = None,
) -> APIRouter:
    router = APIRouter()
    Role = Annotated[str, Depends(caller_role)]

    def with_url(case: dict[str, Any]) -> dict[str, Any]:
        return {**case, "url": f"{public_url}/v1/cases/{case['case_id']}"}

    def summary(case: dict[str, Any]) -> dict[str, Any]:
        a = case["assessment"]
        out = {k: case[k] for k in _SUMMARY_FIELDS}
        return with_url({**out, "combined": a["combined"], "recommendation": a["recommendation"]})

    @router.get("/v1/cases")
    def cases_list(
        role: Role,
        state: Annotated[State | None, Query()] = None,
        model: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        batch: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        limit: Annotated[int, Query(gt=0, le=1000)] = 100,
        order: Annotated[Literal["updated", "rank"], Query()] = "updated",
    ) -> dict[str, Any]:
        """Cases by state and by (model, batch) of their signal: most recently changed first, or
        with ``order=rank`` likeliest recall first (the alarm ranker's score of the latest alert)."""
        found = list_cases(
            cases, matrix, state=None if state is None else str(state), model=model, batch=batch,
            limit=limit, order=order,
        )  # fmt: skip
        return {"cases": [summary(c) for c in found]}

    @router.get("/v1/cases/{case_id}")
    def case(case_id: str, role: Role) -> dict[str, Any]:
        """The case as its log says now: state, people, scores and assessment, tasks, evidence.

        ``scope`` is null, and ``scope_note`` says why, when the signal's names cannot form a
        registry scope: the rest of the case is still answered.
        """
        found = read_case(cases, _checked(case_id), matrix)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no case {case_id}")
        if registry is not None:
            try:
                scope = signal_scope(found["identity"])
            except ValidationError as exc:
                # Alerts from the topic may name a model or batch longer than a registry scope
                # allows (128 characters); such a signal covers no registered unit, and the case
                # must still be readable, so only the affected-units part is left out.
                found["scope"] = None
                found["scope_note"] = f"affected units not resolved: {_errors(exc)}"
            else:
                found["scope"] = affected_scope(registry, scope, matrix)
            found["complaints"] = linked_complaints(registry, found["identity"])
        return with_url(found)

    @router.get("/v1/cases/{case_id}/audit")
    def audit(case_id: str, role: Role) -> dict[str, Any]:
        """Every event of the case, oldest first: who did what, when, and why."""
        if not policy.reads_audit(role):
            raise HTTPException(status_code=403, detail=f"role {role} may not read the audit trail")
        events = cases.events(_checked(case_id))
        if not events:
            raise HTTPException(status_code=404, detail=f"no case {case_id}")
        return {"case_id": case_id, "events": [audit_row(e) for e in events]}

    @router.post("/v1/cases")
    def open_case(
        body: OpenBody,
        role: Role,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> JSONResponse:
        """Open the case of a signal by hand (a complaint, a lab finding), before or without an alert."""
        allow(role, "open")
        identity = SignalIdentity.from_list(body.identity)
        args = {"identity": identity.to_list()}
        return submit(case_id_for(identity), "open", body.actor, body.reason, args, idempotency_key)

    @router.post("/v1/cases/{case_id}/commands/{kind}")
    def command(
        case_id: str,
        kind: str,
        role: Role,
        body: CommandBody,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> JSONResponse:
        """Act on a case: 200 with the case when carried out, 202 while queued, 409 when refused."""
        _checked(case_id)
        if kind == "open":
            raise HTTPException(status_code=422, detail="open a case with POST /v1/cases")
        if kind in SYSTEM_ONLY:
            raise HTTPException(status_code=403, detail=f"{kind} is done by the system, not sent by people")
        if kind not in ARGS:
            raise HTTPException(
                status_code=422, detail=f"unknown command {kind!r}; commands are {', '.join(ARGS)}"
            )
        allow(role, kind)
        try:
            args = ARGS[kind].model_validate(body.args).model_dump(mode="json")
        except ValidationError as exc:
            raise HTTPException(status_code=422, detail=f"invalid args for {kind}: {_errors(exc)}") from None
        return submit(case_id, kind, body.actor, body.reason, args, idempotency_key)

    def allow(role: str, kind: str) -> None:
        if not policy.may_command(role, kind):
            raise HTTPException(status_code=403, detail=f"role {role} may not send {kind} commands")

    def submit(
        case_id: str, kind: str, actor: str, reason: str, args: dict[str, Any], key: str | None
    ) -> JSONResponse:
        command_id = _command_id(key)
        result = None
        if key is not None:
            # A retried request answers as the first time did (refused included), without resending.
            try:
                result = cases.result(command_id)
            except (ClickHouseUnavailable, ClickHouseError):
                # Unknown while the store is down or refusing: the bus goes on and queues it (the
                # worker carries out an id once), rather than refuse a command Kafka can take.
                result = None
            if result is not None and result.case_id != case_id:
                raise HTTPException(
                    status_code=422,
                    detail=f"Idempotency-Key {key} was already used for a command on case {result.case_id}",
                )
            if result is not None:
                # Answering another command with the first one's result would say "ok" for a
                # command that never ran; only a true retry (same kind and arguments) replays.
                first = _first_use(cases, result)
                if first is not None and not _same_command(first, kind, args):
                    raise HTTPException(
                        status_code=422,
                        detail=f"Idempotency-Key {key} was already used for a different command on case"
                        f" {case_id} ({_describe(first)}); use a new key for a new command",
                    )
        if result is None:
            # `at` is read here, at the edge: the core never reads the clock, so replays are exact.
            result = bus.submit(Command(command_id, case_id, kind, actor, clock(), reason, args))
        if result is None:
            body = {"command_id": command_id, "case_id": case_id, "status": "queued"}
            return JSONResponse(status_code=202, content=body)
        return answer(result)

    def answer(result: CommandResult) -> JSONResponse:
        if result.status == "unknown_case":
            raise HTTPException(status_code=404, detail=result.detail or f"no case {result.case_id}")
        if result.status == "invalid":
            raise HTTPException(status_code=422, detail=result.detail)
        if result.status != "ok":
            raise HTTPException(status_code=409, detail=result.detail or f"command {result.status}")
        found = read_case(cases, result.case_id, matrix)
        body = {
            "command_id": result.command_id,
            "status": result.status,
            "seqs": list(result.seqs),
            "case": None if found is None else with_url(found),
        }
        return JSONResponse(status_code=200, content=body)

    return router


def _first_use(cases: CaseStore, result: CommandResult) -> CaseEvent | None:
    """The first event the command of ``result`` recorded: what its id was first used for.

    None when it recorded none (refused, unknown case): the result row keeps neither kind nor
    arguments, so such a key is answered with its stored refusal, never with a success.
    """
    if not result.seqs:
        return None
    first = min(result.seqs)
    for event in cases.events(result.case_id):
        if event.seq == first and event.data.get("command_id") == result.command_id:
            return event
    return None


def _same_command(first: CaseEvent, kind: str, args: Mapping[str, Any]) -> bool:
    """Whether ``kind`` with ``args`` is the command that recorded ``first`` (a retry of it).

    The handlers record each argument in the event's data under its own name (a task's inside
    ``task``, a campaign's scope sorted), and the arguments here are checked and complete (defaults
    filled in), so comparing them name by name compares the whole command.
    """
    if first.data.get("command", kind) != kind:
        return False
    recorded = first.data.get("task") if kind == "add_task" else first.data
    if not isinstance(recorded, Mapping):
        return False
    for name, value in args.items():
        if name == "scope" and isinstance(value, list):
            value = sorted(value)
        if recorded.get(name) != value:
            return False
    return True


def _describe(first: CaseEvent) -> str:
    kind = str(first.data.get("command") or first.action)
    return f"{kind}, event {first.seq}"


def _checked(case_id: str) -> str:
    if not CASE_ID.match(case_id):
        raise HTTPException(status_code=422, detail="case_id must be 'case-' and 20 hex digits")
    return case_id


def _command_id(key: str | None) -> str:
    if key is None:
        return uuid.uuid4().hex
    if not _IDEMPOTENCY_KEY.match(key):
        raise HTTPException(status_code=422, detail="Idempotency-Key must be 1-128 visible ASCII characters")
    if key.startswith(_RESERVED_KEY_PREFIXES):
        reserved = " or ".join(repr(p) for p in _RESERVED_KEY_PREFIXES)
        raise HTTPException(status_code=422, detail=f"Idempotency-Key may not start with {reserved}")
    return key


def _errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}" if where else str(err["msg"]))
    return "; ".join(parts)
