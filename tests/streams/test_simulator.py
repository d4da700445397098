from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streams.simulator import Defect, SimulationConfig, Simulator, supplier_lot


def all_events(config: SimulationConfig):
    return [e for _, day in Simulator(config).run() for e in day]


def test_seeded_runs_are_identical_and_seeds_differ():
    a = all_events(SimulationConfig(seed=4, days=15))
    assert a == all_events(SimulationConfig(seed=4, days=15))
    assert a != all_events(SimulationConfig(seed=5, days=15))


def test_events_are_in_event_time_order_each_day_and_keyed_by_cell():
    for _, day in Simulator(SimulationConfig(days=10)).run():
        assert [e.occurred_at for e in day] == sorted(e.occurred_at for e in day)
        assert all(e.cell_key == f"{e.model}|{e.batch}" for e in day)


def test_young_units_fail_more_often():
    sim = Simulator(SimulationConfig())
    assert sim.hazard(0) > sim.hazard(30) > sim.hazard(365) >= 1.0


def test_shipments_bring_new_batches_into_the_field():
    events = all_events(SimulationConfig(days=45, batch_every_days=30))
    shipped = {e.batch for e in events if e.kind == "shipment"}
    assert "KT-100-B06" in shipped  # produced on day 30, after the six initial batches


def test_a_supplier_lot_spans_batches_and_models():
    assert supplier_lot("KT-100-B04", "heater") == supplier_lot("TO-400-B05", "heater") == "heater-L02"
    assert supplier_lot("KT-100-B06", "heater") != "heater-L02"
    defect = SimulationConfig.default_defect(10, "lot")
    affected = {
        (m, b)
        for m in ("KT-100", "TO-400")
        for b in (f"{m}-B04", f"{m}-B05", f"{m}-B06")
        if defect.affects_cell(m, b)
    }
    assert affected == {
        ("KT-100", "KT-100-B04"),
        ("KT-100", "KT-100-B05"),
        ("TO-400", "TO-400-B04"),
        ("TO-400", "TO-400-B05"),
    }


def test_a_defect_raises_only_its_failure_mode_in_its_cells_after_onset():
    defect = Defect("KT-200", ("KT-200-B04",), "heating_element", onset_day=10, multiplier=8.0)

    def count(events, day_from):
        return sum(
            1
            for e in events
            if e.batch == "KT-200-B04"
            and e.failure_mode == "heating_element"
            and e.occurred_at.day > day_from
        )

    clean = all_events(SimulationConfig(seed=2, days=25))
    dirty = all_events(SimulationConfig(seed=2, days=25, defect=defect))
    assert count(dirty, 11) > 3 * max(1, count(clean, 11))


def test_unknown_defect_kind_is_refused():
    with pytest.raises(ValueError, match="batch"):
        SimulationConfig.default_defect(10, "planet")


def test_a_run_that_would_outrun_the_clock_starts_early_enough_to_end_by_now():
    # The worker dead-letters events dated after their record was sent; a paced 3,650-day run
    # from 2025 would have been rejected from its 700th day on.
    now = datetime(2026, 11, 25, 13, 0, tzinfo=UTC).timestamp()
    long = SimulationConfig(days=800).ending_by(now)
    assert long.start == datetime(2024, 9, 15, tzinfo=UTC)
    assert long.days == 800
    assert (long.start + timedelta(days=long.days)).timestamp() < now  # every event is before its day's end
    short = SimulationConfig(days=120)
    assert short.ending_by(now) is short  # a run over in the past keeps the dates tests expect
