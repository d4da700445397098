"""The registry agent's decisions that need no broker: which cells a batch must recount, and what
happens to a count no population event can carry."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

from streams.records import Event
from streams.registry_events import cell_population_event, movable_serials, shipped_cells

MARCH_5 = int(datetime(2024, 3, 5, tzinfo=UTC).timestamp())


def test_a_population_too_large_for_an_event_is_refused_with_a_reason_not_raised() -> None:
    # population_event raised ValidationError above 10 M units, and the agent retried it forever.
    refused = cell_population_event("M", "B1", MARCH_5, 10_000_001, MARCH_5 + 60)
    assert isinstance(refused, str)
    assert "M|B1" in refused and "10000001 units" in refused and "10000000" in refused
    fits = cell_population_event("M", "B1", MARCH_5, 10_000_000, MARCH_5 + 60)
    assert isinstance(fits, Event) and fits.units == 10_000_000


def test_only_runs_naming_model_or_batch_can_move_a_unit() -> None:
    production = pa.table({"serial": ["X-2", "X-1", "X-2"], "model": ["M", "", "M"], "line": ["a", "b", "c"]})
    assert movable_serials(production) == ["X-1", "X-2"]
    assert movable_serials(pa.table({"serial": ["X-1"], "batch": ["B2"]})) == ["X-1"]
    assert movable_serials(pa.table({"serial": ["X-1"], "store": ["S"], "shipped_at": [1]})) == []


def test_the_cells_a_move_may_leave_are_those_of_shipped_units_with_their_latest_shipment() -> None:
    before = {
        "X-1": {"model": "M", "batch": "B1", "shipped_at": MARCH_5},
        "X-2": {"model": "M", "batch": "B1", "shipped_at": datetime(2024, 3, 6)},  # naive = UTC
        "X-3": {"model": "M", "batch": "B2", "shipped_at": 0},  # not shipped: counts nowhere
    }
    assert shipped_cells(before) == {("M", "B1"): MARCH_5 + 86_400}
