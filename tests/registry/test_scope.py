"""Scope criteria: what a date and what a time mean (pure, no store)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from registry.scope import Scope


def epoch(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("shipped_to", "bound"),
    [
        ("2024-03-01", epoch(2024, 3, 2)),  # a date: the whole UTC day
        ("2024-03-01T00:00:00", epoch(2024, 3, 2)),  # a naive midnight: the same, as documented
        ("2024-03-01T00:00:00Z", epoch(2024, 3, 1)),  # a time with a zone: that instant
        ("2024-03-01T00:00:00+05:00", epoch(2024, 2, 29, 19)),  # midnight in +05:00, not a UTC day
        ("2024-03-01T10:30:00-02:00", epoch(2024, 3, 1, 12, 30)),
    ],
)
def test_a_date_means_the_whole_day_and_a_zoned_time_an_instant(shipped_to: str, bound: int) -> None:
    assert Scope(models=["M"], shipped_to=shipped_to).bounds("shipped_from", "shipped_to") == (None, bound)


def test_a_zoned_midnight_is_echoed_as_the_instant_it_is() -> None:
    scope = Scope(models=["M"], produced_from="2024-03-01T00:00:00+05:00")
    assert scope.criteria()["produced_from"] == "2024-03-01T00:00:00+05:00"


@pytest.mark.parametrize("value", ["2024-03-01T10:00:00", "2024-03-01T25:00:00Z", "soon"])
def test_naive_or_malformed_times_are_refused(value: str) -> None:
    with pytest.raises(ValidationError):
        Scope(models=["M"], produced_from=value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("produced_to", "1969-12-31"),  # ClickHouse's DateTime starts at 1970: 18.16 wrapped the rest
        ("produced_from", "1900-01-01"),
        ("produced_from", "0001-01-01"),
        ("shipped_to", "2106-01-01"),  # its day after is past what the server's DateTime holds
        ("shipped_to", "9999-12-31"),
        ("shipped_from", "1969-12-31T23:59:59Z"),
        ("shipped_from", "0001-01-01T00:00:00+01:00"),
        ("produced_from", "2106-01-01T00:00:01Z"),
        ("produced_to", "2107-01-01T00:00:00Z"),
    ],
)
def test_dates_outside_what_clickhouse_compares_alike_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match="dates in a scope must be from 1970-01-01 to 2105-12-31"):
        Scope(models=["M"], **{field: value})


def test_the_widest_dates_are_taken() -> None:
    scope = Scope(produced_from="1970-01-01", produced_to="2105-12-31")
    assert scope.bounds("produced_from", "produced_to") == (0, epoch(2106, 1, 1))
    instants = Scope(shipped_from="1970-01-01T00:00:00Z", shipped_to="2106-01-01T00:00:00Z")
    assert instants.bounds("shipped_from", "shipped_to") == (0, epoch(2106, 1, 1))


def test_a_scope_is_refused_when_its_names_outgrow_a_query() -> None:
    # 10,000 names of 128 characters (each list's own limits) came to 1.3 MB of query: a 500.
    with pytest.raises(ValidationError, match="scope too large: its names take 1,320,000 bytes"):
        Scope(models=[f"{i:05d}" + "x" * 123 for i in range(10_000)])
    # The limit is on all lists together, as the query spells them: quotes and backslashes escaped.
    assert Scope(models=["a'b"], batches=["\\", "é"]).list_bytes() == (3 + 1 + 4) + (1 + 1 + 4) + (2 + 4)
    half = [f"{i:05d}" + "x" * 118 for i in range(1000)]  # 127 bytes each: 127,000 per list
    assert Scope(models=half).list_bytes() == 127_000
    with pytest.raises(ValidationError, match="scope too large"):
        Scope(models=half, batches=half)
    quoted = ["'" * 60] * 2100  # 60 characters, 124 bytes in the query
    with pytest.raises(ValidationError, match="scope too large"):
        Scope(supplier_lots=quoted)
    assert Scope(supplier_lots=quoted[:2016]).list_bytes() == 249_984  # within the limit


def test_an_instant_with_a_fraction_of_a_second_rounds_up_at_both_ends() -> None:
    # Stored times are whole seconds. Cut down, "to 10:00:00.5" left out a unit made at 10:00:00,
    # and two instants within one second were refused as an inverted range.
    scope = Scope(models=["M"], produced_from="2024-03-01T09:59:59.5Z", produced_to="2024-03-01T10:00:00.5Z")
    assert scope.bounds("produced_from", "produced_to") == (epoch(2024, 3, 1, 10), epoch(2024, 3, 1, 10) + 1)
    narrow = Scope(models=["M"], shipped_from="2024-03-01T10:00:00.2Z", shipped_to="2024-03-01T10:00:00.7Z")
    lo, hi = narrow.bounds("shipped_from", "shipped_to")
    assert lo == hi  # no whole second inside: an empty range, not an error
    with pytest.raises(ValidationError, match="shipped_from is after shipped_to"):
        Scope(models=["M"], shipped_from="2024-03-01T10:00:00.7Z", shipped_to="2024-03-01T10:00:00.2Z")
