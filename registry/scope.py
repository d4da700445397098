"""A recall scope: which units a defect (or a campaign) covers, as a query over the registry.

Every criterion narrows the scope (criteria are ANDed; values inside one list are ORed). A scope with
no criterion at all is refused: "every unit ever made" is never what a quality engineer means, and a
typo in a field name must not silently widen a recall, so unknown fields are refused too.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Names = Annotated[list[Name], Field(min_length=1, max_length=10_000)]
# The lists' names together, as the query spells them (see `list_bytes`). Every list goes into the
# query text, and ClickHouse refuses a query past max_query_size (256 KiB = 262,144 bytes, the default
# on chdb and on the 18.16 server, which takes no per-query override): 10,000 names of 128 characters
# made "Max query size exceeded", a 500. 250,000 leaves the rest of the query (2 KB at most) room.
MAX_LIST_BYTES = 250_000
# Scope times are compared as ClickHouse DateTimes, which hold 1970-01-01..2106-02-07 only, and the
# back ends disagree outside it: 18.16 wraps (1960 became 2096, so "produced before 1960" matched
# every unit) where chdb saturates. Refused rather than clamped: a clamped 1900 would also admit the
# units stored without a production time (0), where 1990 would not. The registry stores 1990..2100
# (registry/tabular.py), so nothing a real scope means is lost.
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(2105, 12, 31)
MIN_BOUND = 0
MAX_BOUND = int(datetime.combine(LAST_DAY + timedelta(days=1), time(), tzinfo=UTC).timestamp())
DATE_RANGE_MESSAGE = f"dates in a scope must be from {FIRST_DAY} to {LAST_DAY} (UTC)"
LIST_FIELDS = ("models", "batches", "lines", "plants", "supplier_lots", "regions", "channels", "stores")
RANGE_FIELDS = (("produced_from", "produced_to"), ("shipped_from", "shipped_to"))


class Scope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: Names | None = None
    batches: Names | None = None
    lines: Names | None = None
    plants: Names | None = None
    supplier_lots: Names | None = None
    regions: Names | None = None
    channels: Names | None = None
    stores: Names | None = None
    # A date means the whole day (UTC): produced_to=2024-03-31 includes units made that evening.
    produced_from: date | datetime | None = None
    produced_to: date | datetime | None = None
    shipped_from: date | datetime | None = None
    shipped_to: date | datetime | None = None

    @field_validator("produced_from", "produced_to", "shipped_from", "shipped_to", mode="before")
    @classmethod
    def _zoned_time_is_an_instant(cls, value: Any) -> Any:
        # Left to pydantic, any midnight reads as a plain date, zone and all:
        # "2024-03-01T00:00:00+05:00" became the whole UTC day of March 1, five hours off and a day
        # wide. A time with a zone is an instant; only a naive midnight means the whole day.
        if isinstance(value, str) and len(value) > 10:
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                return value  # pydantic's message says what is wrong with it
            if parsed.tzinfo is not None:
                return parsed
        return value

    @model_validator(mode="before")
    @classmethod
    def _single_model(cls, data: Any) -> Any:
        # `"model": "X"` is how people say it; it means the same as `"models": ["X"]`.
        if isinstance(data, dict) and "model" in data:
            data = dict(data)
            model = data.pop("model")
            if not isinstance(model, str):
                raise ValueError("model must be a string (use models for a list)")
            models = data.get("models") or []
            if not isinstance(models, list):  # `[*models]` would split a string and fail on a number
                raise ValueError("models must be a list of names")
            data["models"] = [*models, model]
        return data

    @model_validator(mode="after")
    def _not_empty_and_ordered(self) -> Scope:
        if not any(getattr(self, f) is not None for f in (*LIST_FIELDS, *sum(RANGE_FIELDS, ()))):
            raise ValueError(
                "empty scope: give at least one of " + ", ".join((*LIST_FIELDS, *sum(RANGE_FIELDS, ())))
            )
        size = self.list_bytes()
        if size > MAX_LIST_BYTES:
            raise ValueError(
                f"scope too large: its names take {size:,} bytes, at most {MAX_LIST_BYTES:,} (UTF-8 "
                "bytes of every name in every list, plus 4 per name; a quote or backslash counts twice)"
            )
        for low, high in RANGE_FIELDS:
            # Compared as given: two instants within one second are a range, however narrow.
            lo, hi = _instant(getattr(self, low), end=False), _instant(getattr(self, high), end=True)
            if lo is not None and hi is not None and lo >= hi:
                raise ValueError(f"{low} is after {high}")
        return self

    def bounds(self, low: str, high: str) -> tuple[int | None, int | None]:
        """Half-open [from, to) epoch-second bounds of a range criterion (None = open end).

        Stored times are whole seconds, so an instant with a fraction rounds up at both ends:
        ``to`` 10:00:00.5 keeps a unit made at 10:00:00, and ``from`` 10:00:00.5 leaves it out.
        """
        lo, hi = _instant(getattr(self, low), end=False), _instant(getattr(self, high), end=True)
        return (None if lo is None else math.ceil(lo)), (None if hi is None else math.ceil(hi))

    def list_bytes(self) -> int:
        """The bytes the lists take in a query: each name quoted, escaped and comma-separated."""
        return sum(
            len(name.encode("utf-8", "surrogatepass")) + name.count("'") + name.count("\\") + 4
            for field in LIST_FIELDS
            for name in getattr(self, field) or ()
        )

    def criteria(self) -> dict[str, Any]:
        """The criteria that were given, for echoing back and for audit."""
        return self.model_dump(mode="json", exclude_none=True)


def _instant(value: datetime | date | None, *, end: bool) -> float | None:
    """The epoch time a bound names: a zoned instant as given, a date its day's start (or end)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("datetimes in a scope need a timezone (or give a plain date)")
        try:
            epoch = value.timestamp()
        except (OverflowError, ValueError):  # year 1 at a positive offset is before year 1 in UTC
            raise ValueError(DATE_RANGE_MESSAGE) from None
        if not MIN_BOUND <= epoch <= MAX_BOUND:
            raise ValueError(DATE_RANGE_MESSAGE)
        return epoch
    # Checked before the day after is computed: 9999-12-31 has none (an OverflowError, a 500).
    if not FIRST_DAY <= value <= LAST_DAY:
        raise ValueError(DATE_RANGE_MESSAGE)
    day = datetime.combine(value, time(), tzinfo=UTC)
    if end:
        day += timedelta(days=1)
    return int(day.timestamp())
