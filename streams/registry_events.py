"""Registry events on Kafka: production, shipment, sale and ownership change of one unit.

They travel as JSON on their own topic keyed by serial, so a unit's events stay in order. Each
kind may set only the fields its source system owns; they are checked by the same column rules
as file imports (:func:`registry.tabular.validate_batch`), so a value accepted from a file is
accepted from Kafka and vice versa.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from registry.tabular import ValidatedBatch, validate_batch
from registry.units import CUSTOMER_FIELDS, PRODUCTION_FIELDS, SHIPMENT_FIELDS, format_lots
from streams.processing import RawRecord
from streams.records import Event, population_event

Cell = tuple[str, str]

# What each kind may set, and which time field its occurred_at fills.
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "production": tuple(f for f in PRODUCTION_FIELDS if f != "produced_at"),
    "shipment": tuple(f for f in SHIPMENT_FIELDS if f != "shipped_at"),
    "sale": ("store", "region", "city", *CUSTOMER_FIELDS),
    "ownership": CUSTOMER_FIELDS,
}
KIND_TIME = {"production": "produced_at", "shipment": "shipped_at", "sale": "sold_at", "ownership": None}


class RegistryEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str = Field(min_length=1, max_length=200)
    kind: Literal["production", "shipment", "sale", "ownership"]
    serial: str = Field(min_length=1, max_length=128)
    occurred_at: datetime
    model: str | None = None
    batch: str | None = None
    line: str | None = None
    plant: str | None = None
    supplier_lots: dict[str, str] | None = None
    channel: str | None = None
    distributor: str | None = None
    retailer: str | None = None
    store: str | None = None
    region: str | None = None
    city: str | None = None
    customer_id: str | None = None
    customer_phone: str | None = None
    customer_email: str | None = None
    member_id: str | None = None
    contact_consent: bool | None = None

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("occurred_at needs a timezone (e.g. a trailing Z)")
        try:
            value.astimezone(UTC)  # given() writes it in UTC: near year 1 or 9999 that overflows
        except OverflowError:
            raise ValueError("occurred_at is out of range in UTC") from None
        return value

    def given(self) -> dict[str, str]:
        """The fields this event sets, as import-file text."""
        out: dict[str, str] = {}
        for name in self.model_fields_set - {"event_id", "kind", "serial", "occurred_at"}:
            value = getattr(self, name)
            if value is None:
                continue
            if name not in KIND_FIELDS[self.kind]:
                raise ValueError(f"a {self.kind} event cannot set {name}")
            if name == "supplier_lots":
                # The file form is ``component=lot;...``: a ';' anywhere or a '=' in a component
                # would read back as other lots than the ones sent, so it is refused, not mangled.
                for component, lot in value.items():
                    if "=" in component or ";" in component or ";" in lot:
                        raise ValueError(f"supplier_lots entry {component!r}: {lot!r} contains '=' or ';'")
                out[name] = format_lots(value)
            elif name == "contact_consent":
                out[name] = "true" if value else "false"
            else:
                out[name] = value
        time_field = KIND_TIME[self.kind]
        if time_field:
            out[time_field] = self.occurred_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")
        return out


@dataclass
class RegistryBatch:
    """Runs of events that set the same fields (merged one after the other, in offset order), the
    offsets of shipments, and the events refused with their reasons."""

    runs: list[ValidatedBatch] = field(default_factory=list)
    rejects: list[tuple[RawRecord, str]] = field(default_factory=list)
    shipment_offsets: set[int] = field(default_factory=set)


def decode_registry_event(payload: bytes | None) -> RegistryEvent | str:
    """The event, or the reason it is refused; never raises."""
    if not payload:
        return "empty message"
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    if not isinstance(data, dict):
        return "not a JSON object"
    try:
        event = RegistryEvent.model_validate(data)
        event.given()
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in exc.errors())
    except ValueError as exc:
        return str(exc)
    return event


def registry_batch(records: list[RawRecord]) -> RegistryBatch:
    """Decode and check a batch of one partition's records; each record's offset is its "line"."""
    out = RegistryBatch()
    by_offset = {r.offset: r for r in records}
    run: list[tuple[int, dict[str, str]]] = []

    def close_run() -> None:
        if not run:
            return
        columns = ["serial", *sorted(run[0][1].keys() - {"serial"})]
        table = pa.table({c: [row[c] for _, row in run] for c in columns})
        checked = validate_batch(table, 0, lines=[offset for offset, _ in run])
        out.runs.append(checked)
        out.rejects.extend((by_offset[line], reason) for line, reason in checked.rejects)
        run.clear()

    for record in records:
        event = decode_registry_event(record.value)
        if isinstance(event, str):
            out.rejects.append((record, event))
            continue
        row = {"serial": event.serial, **event.given()}
        if run and run[0][1].keys() != row.keys():
            close_run()
        run.append((record.offset, row))
        if event.kind == "shipment":
            out.shipment_offsets.add(record.offset)
    close_run()
    return out


def movable_serials(rows: pa.Table) -> list[str]:
    """The serials of a run that names a model or a batch: merging it may move a unit to another
    (model, batch), so a shipped one leaves its old cell's count and joins the new one's."""
    if "model" not in rows.schema.names and "batch" not in rows.schema.names:
        return []
    return sorted(set(rows.column("serial").to_pylist()))


def shipped_cells(units: Mapping[str, Mapping[str, Any]]) -> dict[Cell, int]:
    """The cells of the shipped units among ``units`` (as read from the registry), each with the
    latest shipment among them."""
    out: dict[Cell, int] = {}
    for unit in units.values():
        shipped_at = _seconds(unit["shipped_at"])
        if shipped_at > 0:
            cell = (unit["model"], unit["batch"])
            out[cell] = max(out.get(cell, 0), shipped_at)
    return out


def cell_population_event(model: str, batch: str, at: int, units: int, now: float) -> Event | str:
    """A cell's population event, or why it cannot be sent (never raises).

    An event carries at most 10,000,000 units. A larger cell is not clamped: a clamped denominator
    would understate the fleet and inflate its rates into false alarms, silently. Its count is
    refused instead, with the reason, and the cell keeps its last count until an operator looks.
    """
    try:
        return population_event(model, batch, at, units, now)
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]) for e in exc.errors())
        return f"population of {model}|{batch} ({units} units) cannot be sent: {problems}"


def _seconds(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp()) if value.tzinfo else int(value.replace(tzinfo=UTC).timestamp())
    return int(value or 0)
