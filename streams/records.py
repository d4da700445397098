"""Event records on the wire, and their validation.

Incidents (complaint, repair, return) and shipments travel as JSON on one topic keyed by
``model|batch``, so every event of a cell reaches the same partition and the same worker.
Decoding never raises: a bad payload becomes a :class:`Rejection` with a reason, which the
worker sends to the dead-letter topic and the rejects table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

INCIDENT_KINDS = ("complaint", "repair", "return")
MIN_TIME = datetime(1990, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2100, 1, 1, tzinfo=UTC)
NAME = r"^[^|\x00-\x1f]{1,128}$"


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
    serial: str = Field(default="", max_length=128)
    failure_mode: str = Field(default="", max_length=128)
    component: str = Field(default="", max_length=128)
    severity: Severity = Severity()
    region: str = Field(default="", max_length=64)
    units: int = Field(default=0, ge=0, le=10_000_000)

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


def decode_event(payload: bytes | None) -> Event | Rejection:
    """Parse and validate one message value; never raises on bad data."""
    if not payload:
        return Rejection("empty message", b"")
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return Rejection(f"not JSON: {exc}", payload)
    if not isinstance(data, dict):
        return Rejection("not a JSON object", payload)
    try:
        return Event.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'event'}: {err['msg']}" for err in exc.errors()
        )
        return Rejection(problems, payload)


def encode_event(event: Event) -> bytes:
    return orjson.dumps(event.model_dump(mode="json", exclude_defaults=False))
