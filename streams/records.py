"""Event records on the wire, and their validation.

Incidents (complaint, repair, return) and shipments travel as JSON on one topic keyed by
``model|batch``, so every event of a cell reaches the same partition and the same worker.
Decoding never raises: a bad payload becomes a :class:`Rejection` with a reason, which the
worker sends to the dead-letter topic and the rejects table. So does an event dated after the
Kafka record that carried it was sent (see :func:`lead_problem`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.alerts import ALL_MODES
from core.config import DEFAULT_MAX_EVENT_LEAD_S
from registry.units import CONTROL_CHARS

INCIDENT_KINDS = ("complaint", "repair", "return")
MIN_TIME = datetime(1990, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2100, 1, 1, tzinfo=UTC)
NAME = rf"^[^|{CONTROL_CHARS}]{{1,128}}$"
_NO_CONTROL = re.compile(f"[^{CONTROL_CHARS}]*")


class Severity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    crash: bool = False
    fire: bool = False
    injury: bool = False


class Event(BaseModel):
    """One complaint, repair, return, shipment, or registry population count."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str = Field(min_length=1, max_length=200)
    # population: the registry's absolute count of the cell's units in the field (sets, not adds).
    kind: Literal["complaint", "repair", "return", "shipment", "population"]
    occurred_at: datetime
    model: str = Field(pattern=NAME)
    batch: str = Field(pattern=NAME)
    serial: str = Field(default="", max_length=128)  # "": about no one unit
    failure_mode: str = Field(default="", max_length=128)
    component: str = Field(default="", max_length=128)
    severity: Severity = Severity()
    region: str = Field(default="", max_length=64)
    units: int = Field(default=0, ge=0, le=10_000_000)

    @field_validator("units", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any) -> Any:
        # Lax int would read true as 1: a shipment of ``true`` units is a producer bug, not one unit.
        if isinstance(value, bool):
            raise ValueError("units must be a number, not true/false")
        return value

    @field_validator("serial")
    @classmethod
    def _printable(cls, value: str) -> str:
        if _NO_CONTROL.fullmatch(value) is None:
            raise ValueError("serial contains control characters")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _aware_and_plausible(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("occurred_at needs a timezone (e.g. a trailing Z)")
        if not MIN_TIME <= value < MAX_TIME:
            raise ValueError("occurred_at is outside 1990..2100")
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> Event:
        if self.kind == "shipment":
            if self.units <= 0:
                raise ValueError("a shipment needs units > 0")
        elif self.kind == "population":
            pass  # any units >= 0: a cell may have none in the field yet
        elif not self.failure_mode:
            raise ValueError(f"a {self.kind} needs a failure_mode")
        elif self.failure_mode == ALL_MODES:
            # The cell's all-modes sub-cell already counts every incident: named so, it would count twice.
            raise ValueError(f"failure_mode {ALL_MODES!r} is reserved for all failure modes together")
        return self

    @property
    def cell_key(self) -> str:
        return cell_key(self.model, self.batch)

    @property
    def occurred_ts(self) -> float:
        return self.occurred_at.timestamp()


def cell_key(model: str, batch: str) -> str:
    """The topic key of a (model, batch): ``|`` cannot appear in either name."""
    return f"{model}|{batch}"


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    payload: bytes


def _parse(payload: bytes | None) -> Any:
    """The JSON value of a message, or the Rejection that says why there is none."""
    if not payload:
        return Rejection("empty message", b"")
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return Rejection(f"not JSON: {exc}", payload)


def decode_event(
    payload: bytes | None, sent_at: float | None = None, max_lead_s: float = DEFAULT_MAX_EVENT_LEAD_S
) -> Event | Rejection:
    """Parse and validate one message value; never raises on bad data.

    ``sent_at`` is the Kafka record's timestamp (epoch seconds): given, an event dated more than
    ``max_lead_s`` after it is rejected (:func:`lead_problem`).
    """
    data = _parse(payload)
    if isinstance(data, Rejection):
        return data
    event = _validate(data, payload or b"")
    if isinstance(event, Rejection):
        return event
    problem = lead_problem(event.occurred_ts, sent_at, max_lead_s)
    return event if problem is None else Rejection(problem, payload or b"")


def lead_problem(occurred_ts: float, sent_at: float | None, max_lead_s: float) -> str | None:
    """Why an event dated ``occurred_ts`` cannot have been sent at ``sent_at``, or None.

    The cell's clock is its events' time and never runs back: one event from a clock set years
    ahead would hold the cell's open bucket there, count every real event after it as late, and no
    bucket of the cell would close or alert again. An event happens before it is reported, so one
    dated well after its Kafka record's timestamp (the producer's clock when it sent it, kept by
    the broker as CreateTime) has a wrong date. The record, not the worker's clock, is the measure:
    a replay or a backtest of old events passes, and a replayed record gets the same verdict.
    A record without a timestamp (Kafka's -1; ours are None or 0) is not checked.
    """
    if sent_at is None or sent_at <= 0 or occurred_ts - sent_at <= max_lead_s:
        return None
    return (
        f"occurred_at: {_iso(occurred_ts)} is later than the message's timestamp {_iso(sent_at)} by more"
        f" than {max_lead_s:g} s (detection.max_event_lead_s): an event cannot be sent before it"
        " happens, so its date is wrong, and it would stop its cell's buckets from closing"
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _validate(data: Any, payload: bytes) -> Event | Rejection:
    if not isinstance(data, dict):
        return Rejection("not a JSON object", payload)
    try:
        return Event.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'event'}: {err['msg']}" for err in exc.errors()
        )
        return Rejection(problems, payload)


class EventFields(NamedTuple):
    """A valid event as the worker reads it: the :class:`Event`'s values, flat, time as epoch seconds.

    Building a pydantic model costs more than everything else the worker does with most events, so
    :func:`decode_fields` checks the plain, canonical form of an event itself and leaves everything
    else to :class:`Event`. Either way the values and the verdict are the model's.
    """

    event_id: str
    kind: str
    occurred_ts: float
    model: str
    batch: str
    serial: str
    failure_mode: str
    component: str
    crash: bool
    fire: bool
    injury: bool
    region: str
    units: int

    @property
    def cell_key(self) -> str:
        return cell_key(self.model, self.batch)

    @classmethod
    def of(cls, event: Event) -> EventFields:
        s = event.severity
        return cls(
            event.event_id, event.kind, event.occurred_ts, event.model, event.batch, event.serial,
            event.failure_mode, event.component, s.crash, s.fire, s.injury, event.region, event.units,
        )  # fmt: skip


def decode_fields(
    payload: bytes | None, sent_at: float | None = None, max_lead_s: float = DEFAULT_MAX_EVENT_LEAD_S
) -> EventFields | Rejection:
    """:func:`decode_event`, giving the event's :class:`EventFields`: same verdicts, same reasons."""
    data = _parse(payload)
    if isinstance(data, Rejection):
        return data
    fields = _canonical_fields(data) if type(data) is dict else None
    if fields is None:
        checked = _validate(data, payload or b"")
        if isinstance(checked, Rejection):
            return checked
        fields = EventFields.of(checked)
    problem = lead_problem(fields.occurred_ts, sent_at, max_lead_s)
    return fields if problem is None else Rejection(problem, payload or b"")


_FIELD_NAMES = frozenset(Event.model_fields)
_SEVERITY_NAMES = frozenset(Severity.model_fields)
_KINDS = frozenset(("complaint", "repair", "return", "shipment", "population"))
# ``[0-9]``, not ``\d``, which also matches other scripts' digits; only UTC, the form producers
# write: any other offset goes the model's way.
_UTC_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|\+00:00)")
_NAME = re.compile(NAME[1:-1])  # fullmatch: the model's regex engine reads ``$`` as the very end
_ABSENT: Any = object()
_known_names: set[str] = set()  # model and batch names seen valid: a few hundred, met over and over


def _is_name(value: str) -> bool:
    if value in _known_names:
        return True
    if _NAME.fullmatch(value) is None:
        return False
    if len(_known_names) >= 100_000:  # bounded, whatever producers send
        _known_names.clear()
    _known_names.add(value)
    return True


def _canonical_fields(d: dict[str, Any]) -> EventFields | None:
    """The fields of an event written in plain canonical form that the model would accept; None
    for anything else (a problem, or merely a form only the model knows how to read)."""
    if not d.keys() <= _FIELD_NAMES:
        return None
    event_id, kind, occurred = d.get("event_id"), d.get("kind"), d.get("occurred_at")
    model, batch = d.get("model"), d.get("batch")
    serial, failure_mode = d.get("serial", ""), d.get("failure_mode", "")
    component, region, units = d.get("component", ""), d.get("region", ""), d.get("units", 0)
    if not (
        type(event_id) is str
        and 0 < len(event_id) <= 200
        and type(kind) is str
        and kind in _KINDS
        and type(model) is str
        and _is_name(model)
        and type(batch) is str
        and _is_name(batch)
        and type(serial) is str
        and len(serial) <= 128
        and _NO_CONTROL.fullmatch(serial) is not None
        and type(failure_mode) is str
        and len(failure_mode) <= 128
        and type(component) is str
        and len(component) <= 128
        and type(region) is str
        and len(region) <= 64
        and type(units) is int
        and 0 <= units <= 10_000_000
        and type(occurred) is str
        and _UTC_TIME.fullmatch(occurred)
    ):
        return None
    if kind == "shipment":
        if units <= 0:
            return None
    elif kind != "population" and (not failure_mode or failure_mode == ALL_MODES):
        return None
    severity = d.get("severity", _ABSENT)
    if severity is _ABSENT:
        crash = fire = injury = False
    else:
        if type(severity) is not dict or not severity.keys() <= _SEVERITY_NAMES:
            return None
        get = severity.get
        crash, fire, injury = get("crash", False), get("fire", False), get("injury", False)
        if not (type(crash) is bool and type(fire) is bool and type(injury) is bool):
            return None
    try:
        at = datetime.fromisoformat(occurred)
    except ValueError:  # no such date or time: the model says why
        return None
    if not MIN_TIME <= at < MAX_TIME:
        return None
    ts = at.timestamp()
    return EventFields(
        event_id, kind, ts, model, batch, serial, failure_mode, component, crash, fire, injury, region, units
    )


def encode_event(event: Event) -> bytes:
    return orjson.dumps(event.model_dump(mode="json", exclude_defaults=False))


def population_event(model: str, batch: str, latest_shipped_at: int, units: int, now: float) -> Event:
    """A (model, batch)'s units in the field, from the registry, as its rate denominator.

    Dated at the cell's latest shipment, but never after ``now``: a shipment recorded ahead (a
    planned one, or a typo of 2099) would date the count ahead of its record, and the worker
    dead-letters such events, so every later count of the cell would be refused and its
    denominator frozen. The units shipped ahead count from now on, a slight overcount for a few
    days at most, against a cell that would otherwise stop following its fleet.
    """
    at = min(int(latest_shipped_at), int(now))
    return Event(
        event_id=f"population:{model}|{batch}:{at}:{units}",
        kind="population",
        occurred_at=datetime.fromtimestamp(at, UTC),
        model=model,
        batch=batch,
        units=units,
    )
