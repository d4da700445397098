"""The HTTP API: routes validate, ask the store, return. Bad input is a 4xx with a message."""

from __future__ import annotations

import math
import re
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.requests import Request

from api.auth import role_dependency
from api.case_routes import case_router
from api.registry_routes import registry_router
from api.slack_routes import slack_router
from cases.risk import DEFAULT_MATRIX, RiskMatrix
from core.access import AccessPolicy
from recallwatch.case_bus import CommandBus, CommandNotSent, DirectCommandBus
from recallwatch.case_desk import CaseDesk
from sinks.case_store import CaseStore, ConcernIndex
from sinks.clickhouse import ClickHouseError, ClickHouseStore, ClickHouseUnavailable
from sinks.registry_store import RegistryStore
from sinks.schema import row_counts

NAME = Annotated[str, Query(min_length=1, max_length=128)]
# ClickHouse's refusals of a query for its size (chdb 26.9 and 18.16 word them alike): the caller's.
_TOO_BIG = re.compile(r"max query size exceeded|AST is too (big|deep)", re.I)


def create_api(
    store: ClickHouseStore,
    public_url: str = "http://127.0.0.1:8000",
    policy: AccessPolicy | None = None,
    *,
    case_bus: CommandBus | None = None,
    risk_matrix: RiskMatrix = DEFAULT_MATRIX,
    slack_signing_secret: str | None = None,
) -> FastAPI:
    """The API over ``store``.

    Case commands go through ``case_bus``. Deployments pass a ``KafkaCommandBus``, so the worker that
    owns a case stays the one writer of its log. Without one the API runs a case desk in-process
    (``DirectCommandBus``): for single-process use and tests only, since a desk here and a worker
    elsewhere would both hand out seq numbers for the same case. ``slack_signing_secret`` verifies
    Slack button clicks; without it they are refused.
    """
    policy = policy or AccessPolicy()
    cases = CaseStore(store)
    if case_bus is None:
        case_bus = DirectCommandBus(CaseDesk(cases, risk_matrix, time.time))
    caller_role = role_dependency(policy)
    api = FastAPI(
        title="RecallWatch",
        version="0.1.0",
        description="Early warning and recall management: rates, alerts, traceability and scopes.",
    )
    # Every /v1 route needs a role: a key's, or the anonymous role when the policy allows it.
    secured = [Depends(caller_role)]

    @api.exception_handler(ClickHouseUnavailable)
    async def _store_down(request: Request, exc: ClickHouseUnavailable) -> JSONResponse:
        # An outage of the store is not the caller's fault; say so plainly and ask to retry.
        return JSONResponse(status_code=503, content={"detail": f"ClickHouse unavailable: {exc}"})

    @api.exception_handler(CommandNotSent)
    async def _not_sent(request: Request, exc: CommandNotSent) -> JSONResponse:
        # The broker did not confirm the command: it may be queued or not. Resending it under the
        # same id is safe, so say so; a new id could have it carried out twice.
        detail = f"{exc}: it may not be queued; send it again with the same Idempotency-Key"
        return JSONResponse(status_code=503, content={"detail": detail})

    @api.exception_handler(ClickHouseError)
    async def _store_refused(request: Request, exc: ClickHouseError) -> JSONResponse:
        # Routes validate what they send, so a refused query is not expected; but a 500 tells the
        # caller nothing. A query too big for ClickHouse is made of what the caller sent: a 413 that
        # says to send less. Anything else (a memory or time limit, a store in trouble) is the
        # store's failure, answered like an outage: a 503. The message is cut short, because
        # ClickHouse quotes the query, which may be a quarter of a megabyte of the caller's names.
        message = str(exc)
        if _TOO_BIG.search(message):
            return JSONResponse(
                status_code=413,
                content={"detail": "request too large: the query it needs exceeds ClickHouse's size limits"},
            )
        # 18.16 spreads its message over lines and appends a stack trace: one line, no trace.
        summary = " ".join(message.split("Stack trace:")[0].split()) or type(exc).__name__
        return JSONResponse(
            status_code=503,
            content={"detail": f"ClickHouse could not answer: {_shorten(summary, 300)}"},
        )

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI parses a body before it resolves dependencies, so a caller without a key would
        # learn the body's schema from the 422: the key is checked first (Slack signs instead).
        if request.url.path.startswith("/v1/") and not request.url.path.startswith("/v1/slack/"):
            try:
                caller_role(request)
            except HTTPException as refused:
                return JSONResponse(
                    status_code=refused.status_code,
                    content={"detail": refused.detail},
                    headers=refused.headers,
                )
        # FastAPI's own handler echoes the offending input, and Python's JSON parser reads NaN and
        # Infinity, which Starlette's JSONResponse refuses to write: a body holding them was a 500.
        # A lone surrogate ("\ud800", valid JSON, refused by pydantic) is echoed too, and UTF-8 has no
        # encoding for it: escaped, or the 422 was a 500.
        detail = [_echoable(error) for error in jsonable_encoder(exc.errors())]  # every error, each cut short
        return JSONResponse(status_code=422, content={"detail": detail})

    @api.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "clickhouse": store.backend, "time": time.time()}

    @api.get("/v1/stats", dependencies=secured)
    def stats() -> dict[str, Any]:
        return {"clickhouse_rows": row_counts(store)}

    @api.get("/v1/rates", dependencies=secured)
    def rates(
        model: NAME,
        batch: NAME,
        failure_mode: Annotated[str, Query(max_length=128)] = "*",
        window_s: Annotated[int | None, Query(gt=0)] = None,
        limit: Annotated[int, Query(gt=0, le=10_000)] = 1000,
    ) -> dict[str, Any]:
        """Rolling rates of one (model, batch), optionally one failure mode (``*`` = all modes)."""
        sql = (
            "SELECT bucket_start, bucket_s, window_s, count, window_count, units_in_field,"
            " exposure_unit_days, expected, rate_per_1000, window_rate_per_1000"
            " FROM rates FINAL WHERE model = {model} AND batch = {batch} AND failure_mode = {fm}"
        )
        params: dict[str, Any] = {"model": model, "batch": batch, "fm": failure_mode, "limit": limit}
        if window_s is not None:
            sql += " AND window_s = {window_s}"
            params["window_s"] = window_s
        sql += " ORDER BY window_s, bucket_start LIMIT {limit}"
        points = store.query(sql, params)
        return {"model": model, "batch": batch, "failure_mode": failure_mode, "points": points}

    @api.get("/v1/alerts", dependencies=secured)
    def alerts(
        model: Annotated[str | None, Query(max_length=128)] = None,
        batch: Annotated[str | None, Query(max_length=128)] = None,
        limit: Annotated[int, Query(gt=0, le=1000)] = 100,
    ) -> dict[str, Any]:
        sql = "SELECT * FROM alerts FINAL WHERE 1"
        params: dict[str, Any] = {"limit": limit}
        if model:
            sql += " AND model = {model}"
            params["model"] = model
        if batch:
            sql += " AND batch = {batch}"
            params["batch"] = batch
        sql += " ORDER BY opened_at DESC, alert_id LIMIT {limit}"
        rows = store.query(sql, params)
        return {"alerts": [_with_link(r, public_url) for r in rows]}

    @api.get("/v1/alerts/{alert_id}", dependencies=secured)
    def alert(alert_id: str) -> dict[str, Any]:
        if not alert_id.isalnum() or len(alert_id) > 64:
            raise HTTPException(status_code=422, detail="alert_id must be alphanumeric")
        rows = store.query("SELECT * FROM alerts FINAL WHERE alert_id = {id}", {"id": alert_id})
        if not rows:
            raise HTTPException(status_code=404, detail=f"no alert {alert_id}")
        deliveries = store.query(
            "SELECT channel, status, detail, delivered_at FROM alert_deliveries FINAL WHERE alert_id = {id}",
            {"id": alert_id},
        )
        return {**_with_link(rows[0], public_url), "deliveries": deliveries}

    api.include_router(registry_router(RegistryStore(store), policy, caller_role, ConcernIndex(cases)))
    api.include_router(
        case_router(
            cases, case_bus, policy, caller_role, risk_matrix, public_url, registry=RegistryStore(store)
        )
    )
    # No API key on Slack's requests: the router checks Slack's signature instead.
    api.include_router(slack_router(case_bus, slack_signing_secret, policy))
    return api


# How much of a caller's input a 422 echoes: enough to spot the bad value, not the whole body again
# (a scope refused for its size echoed its 1.3 MB of names).
_ECHO_ITEMS, _ECHO_CHARS = 20, 500


def _echoable(value: Any) -> Any:
    """``value`` as a 422 may echo it: writable as JSON and short.

    NaN and Infinity become strings (JSON has no literal for them); strings UTF-8 cannot encode
    (lone surrogates) are backslash-escaped, keys too; long strings and lists are cut.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return _shorten(value.encode("utf-8", "backslashreplace").decode("utf-8"), _ECHO_CHARS)
    if isinstance(value, dict):
        return {_echoable(k): _echoable(v) for k, v in list(value.items())[:_ECHO_ITEMS]}
    if isinstance(value, list):
        return [_echoable(v) for v in value[:_ECHO_ITEMS]]
    return value


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _with_link(row: dict[str, Any], public_url: str) -> dict[str, Any]:
    return {**row, "url": f"{public_url}/v1/alerts/{row['alert_id']}"}
