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
