"""Traceability routes: backward trace (one serial) and forward trace (a scope to every unit).

No `from __future__ import annotations` here: FastAPI must resolve the closure-local `Role` alias.
"""

import csv
import io
import itertools
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse

from core.access import AccessPolicy
from registry.scope import Scope
from registry.units import CONTACT_FIELDS, CONTROL_CHARS, TIME_FIELDS, format_lots
from sinks.case_store import ConcernIndex
from sinks.registry_store import STORED_FIELDS, RegistryStore

_SERIAL = re.compile(rf"^[^{CONTROL_CHARS}]{{1,128}}$")


def registry_router(
    registry: RegistryStore, policy: AccessPolicy, caller_role: Any, cases: ConcernIndex | None = None
) -> APIRouter:
    router = APIRouter()
    Role = Annotated[str, Depends(caller_role)]

    async def caller_role_inline(request: Request) -> str:
        return str(caller_role(request))  # a few dict look-ups: no reason to hop to a thread

    InlineRole = Annotated[str, Depends(caller_role_inline)]

    # A plain `def`, so the lookup's two queries run on the thread pool: the store releases the GIL
    # while it queries, and chdb runs the queries of different threads side by side, so concurrent
    # callers (a consumer page during a recall) use both cores. As `async def` on the event loop,
    # 8 concurrent clients got 170 lookups/s, one core's worth; as `def`, 285/s. The hand-off costs
    # a sequential caller ~0.2 ms. The role dependency stays inline: it is a few dict look-ups.
    @router.get("/v1/units/{serial:path}")
    def unit(serial: str, role: InlineRole, request: Request) -> Response:
        """A unit's record, its complaint/repair/return history and what concerns it now."""
        # Starlette's route pattern ends in `$`, which matches before a final newline, so
        # `/v1/units/X%0A` arrives as serial `X`: the path itself must end in the serial.
        path_ends_in_serial = request.scope["path"].endswith("/" + serial)
        if not (path_ends_in_serial and _SERIAL.fullmatch(serial)):  # match() lets a newline through
            raise HTTPException(status_code=422, detail="serial must be 1-128 printable characters")
        row = registry.unit(serial)
        if row is None:
            raise HTTPException(status_code=404, detail=f"no unit with serial {serial!r} in the registry")
        contacts = policy.sees_contacts(role)
        history = registry.history(row["model"], row["batch"], serial)
        alerts = [] if cases is None else cases.alerts(row["model"], row["batch"])
        concerning = [] if cases is None else cases.concerning(row["model"], row["batch"], row["lot_ids"])
        body = {
            "unit": present_unit(row, contacts=contacts),
            "contacts_redacted": not contacts,
            "history": history,
            "affected": {
                "status": affected_status(alerts, concerning),
                "alerts": alerts,
                "cases": concerning,
                "campaigns": [c["case_id"] for c in concerning if c["state"] == "campaign"],
                "remedy": next((c["remedy"] for c in concerning if c["state"] == "campaign"), None),
            },
        }
        # Plain dicts of str/int/float/bool: orjson directly, skipping FastAPI's encoder (~0.3 ms).
        return Response(orjson.dumps(body), media_type="application/json")

    @router.post("/v1/scopes/resolve")
    def resolve(
        scope: Scope, role: Role, max_ranges: Annotated[int, Query(ge=1, le=100_000)] = 1000
    ) -> dict[str, Any]:
        """Units in scope: count, compressed serial ranges, breakdowns and reachable customers."""
        return {"scope": scope.criteria(), **registry.resolve(scope, max_ranges=max_ranges)}

    @router.post("/v1/scopes/units.csv")
    def units_csv(scope: Scope, role: Role) -> StreamingResponse:
        """Every unit in scope as CSV, streamed page by page (any scope size, flat memory)."""
        contacts = policy.sees_contacts(role)
        lines = _csv_lines(registry, scope, contacts)
        # The first page is read before the response starts: once the 200 is sent, a query the
        # store refuses can only cut the CSV short, so a scope ClickHouse cannot run must fail here,
        # where the app's handlers still answer with a status and a message.
        first = next(lines)
        return StreamingResponse(
            itertools.chain([first], lines),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="scope-units.csv"'},
        )

    return router


def present_unit(row: dict[str, Any], *, contacts: bool) -> dict[str, Any]:
    """A stored row as the API shows it: lots as a mapping, times ISO (None = not yet)."""
    out: dict[str, Any] = {"serial": row["serial"]}
    for name in STORED_FIELDS:
        if name in ("lot_components", "lot_ids") or (name in CONTACT_FIELDS and not contacts):
            continue
        value = row[name]
        if name in TIME_FIELDS:
            value = _iso(value)
        elif name == "contact_consent":
            value = bool(value)
        out[name] = value
    out["supplier_lots"] = dict(zip(row["lot_components"], row["lot_ids"], strict=True))
    if "updated_at" in row:
        out["updated_at"] = _iso(row["updated_at"])
    return out


def _iso(epoch: int) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z") if epoch else None


def _csv_lines(registry: RegistryStore, scope: Scope, contacts: bool) -> Iterator[str]:
    columns: list[str] | None = None
    for page in registry.iter_units(scope, contacts=contacts):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        rows = []
        for row in page:
            shown = present_unit(row, contacts=contacts)
            shown["supplier_lots"] = format_lots(shown["supplier_lots"])
            rows.append(shown)
        if columns is None:
            columns = list(rows[0])
            writer.writerow(columns)
        writer.writerows([[("" if r[c] is None else r[c]) for c in columns] for r in rows])
        yield buf.getvalue()
    if columns is None:
        yield "serial\n"  # an empty scope is an empty list, not an error


def affected_status(alerts: list[Any], cases: list[dict[str, Any]]) -> str:
    """What a unit's owner is told: a running campaign outranks an investigation, which outranks nothing.

    >>> affected_status([], [{"state": "closed", "decision": "dismiss"}])
    'not affected'
    >>> recall, probe = {"state": "campaign", "decision": "recall"}, {"state": "open", "decision": None}
    >>> affected_status([], [recall, probe])
    'under recall'
    """
    if any(c["state"] == "campaign" for c in cases):
        return "under recall"
    live = [c for c in cases if c["state"] != "closed" and c["decision"] != "dismiss"]
    if live or (alerts and not cases):
        return "under investigation"
    return "not affected"
