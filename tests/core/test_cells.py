from __future__ import annotations

import pickle

import numpy as np
import pytest

from core.alerts import ALL_MODES
from core.cells import BucketOutcome, CellState, snapshot_bound_bytes
from core.config import DetectionConfig
from models import build_detector

DAY = 86_400
CFG = DetectionConfig(bucket_s=DAY, windows_s=(7 * DAY,), cooldown_buckets=3, max_catchup_buckets=50)


def feed(
    cell: CellState, daily_counts: list[int], mode: str = "brakes", start_day: int = 0, units: int = 10_000
):
    outcomes = []
    if cell.units_in_field == 0:
        outcomes.append(cell.apply_shipment(CFG, units, start_day * DAY))
    for i, n in enumerate(daily_counts):
        day = start_day + i
        for j in range(n):
            outcomes.append(cell.apply_incident(CFG, mode, day * DAY + 60 * (j + 1), f"e{day}-{j}", 0.0))
    # An event of the next day closes the last bucket.
    outcomes.append(cell.apply_shipment(CFG, 0, (start_day + len(daily_counts)) * DAY + 1))
    rates = [r for o in outcomes for r in o.rates]
    alerts = [a for o in outcomes for a in o.alerts]
    return rates, alerts


def test_buckets_close_with_counts_exposure_and_rolling_window():
    cell = CellState("M", "B")
    rates, _ = feed(cell, [1, 2, 3])
    fm = [r for r in rates if r.failure_mode == "brakes"]
    assert [r.count for r in fm] == [1, 2, 3]
    assert [r.window_count for r in fm] == [1, 3, 6]
    assert fm[0].exposure_unit_days == pytest.approx(10_000.0)
    assert [r.count for r in rates if r.failure_mode == ALL_MODES] == [1, 2, 3]
    assert fm[-1].window_rate_per_1000 == pytest.approx(6 / 10_000 * 1000)


def test_exposure_counts_units_from_their_shipment_time():
    cell = CellState("M", "B")
    cell.apply_shipment(CFG, 1000, 0)
    cell.apply_incident(CFG, "x", 100, "e1", 0.0)
    cell.apply_shipment(CFG, 1000, DAY / 2)  # half a day of 2000 units
    out = cell.apply_shipment(CFG, 0, DAY + 1)
    assert out.rates[0].exposure_unit_days == pytest.approx(1000 * 0.5 + 2000 * 0.5)


def test_late_event_counts_in_the_open_bucket():
    cell = CellState("M", "B")
    feed(cell, [1, 1])
    cell.apply_incident(CFG, "brakes", 0.5 * DAY, "late", 0.0)  # day 0 is closed already
    out = cell.apply_shipment(CFG, 0, 3 * DAY + 1)
    assert [r.count for r in out.rates if r.failure_mode == "brakes"] == [1]


def test_a_clock_far_ahead_is_bounded_work():
    cell = CellState("M", "B")
    feed(cell, [1])
    out = cell.apply_incident(CFG, "brakes", 10_000 * DAY, "far", 0.0)
    assert len({r.bucket_start for r in out.rates}) <= CFG.max_catchup_buckets


def test_offsets_make_replay_a_no_op():
    cell = CellState("M", "B")
    assert not cell.already_applied(0, 5)
    cell.mark_applied(0, 5)
    assert cell.already_applied(0, 5) and cell.already_applied(0, 3)
    assert not cell.already_applied(0, 6) and not cell.already_applied(1, 0)


def in_control(seed: int, days: int) -> list[int]:
    return [int(n) for n in np.random.default_rng(seed).poisson(2.0, days)]


def test_a_step_opens_one_alert_per_episode_and_names_its_detector():
    cell = CellState("M", "B")
    _, alerts = feed(cell, in_control(1, 40) + [12] * 6)
    fm_alerts = [a for a in alerts if a.failure_mode == "brakes"]
    assert len(fm_alerts) == 1
    alert = fm_alerts[0]
    assert alert.detector in alert.detectors_fired and alert.config_version == CFG.version
    # Issue 4: every alert records its detector's parameters, as the detector reports them.
    params = dict(CFG.detectors)[alert.detector]
    assert alert.detector_params and alert.detector_params == build_detector(alert.detector, params).params()
    assert alert.count > alert.expected and alert.units_in_field == 10_000
    # The aggregate is explained by the failure mode: no second alert for the same signal.
    assert not [a for a in alerts if a.failure_mode == ALL_MODES]


def test_episode_cools_down_and_a_new_episode_gets_a_new_id():
    cell = CellState("M", "B")
    _, first = feed(cell, in_control(2, 40) + [15] * 4)
    _, quiet = feed(cell, [0] * 60, start_day=44)
    _, second = feed(cell, [40] * 4, start_day=104)
    assert len(first) == 1 and not quiet and len(second) == 1
    assert first[0].alert_id != second[0].alert_id


def test_in_control_cell_stays_quiet():
    for seed in range(5):
        _, alerts = feed(CellState("M", "B"), in_control(seed, 200))
        assert alerts == []


def test_a_failure_mode_never_seen_before_can_alarm():
    cell = CellState("M", "B")
    feed(cell, in_control(3, 40))
    _, alerts = feed(cell, [6] * 5, mode="fire", start_day=40)
    assert [a.failure_mode for a in alerts] == ["fire"]


def test_same_events_give_same_alerts():
    a = feed(CellState("M", "B"), in_control(4, 40) + [12] * 5)[1]
    b = feed(CellState("M", "B"), in_control(4, 40) + [12] * 5)[1]
    assert a == b


def test_config_validation():
    with pytest.raises(ValueError):
        DetectionConfig(bucket_s=0)
    with pytest.raises(ValueError):
        DetectionConfig(bucket_s=DAY, windows_s=(60,))
    with pytest.raises(ValueError):
        DetectionConfig(detectors=())


def test_population_sets_units_in_field_and_repeating_it_changes_nothing():
    state = CellState("M", "B")
    state.apply_shipment(CFG, 100, 0.0)
    state.apply_incident(CFG, "overheat", 100, "e1", 0.0)
    state.apply_population(CFG, 400, DAY / 2)  # the registry says 400, whatever was added before
    assert state.units_in_field == 400
    state.apply_population(CFG, 400, DAY / 2)  # a replayed count is the same count
    assert state.units_in_field == 400
    out = state.apply_population(CFG, 400, DAY + 1)
    # Exposure: 100 units for the first half day, 400 for the second.
    assert out.rates[0].exposure_unit_days == pytest.approx(100 * 0.5 + 400 * 0.5)


# -- failure modes per cell: each sub-cell grows the cell's changelog snapshot, which must fit one Kafka
# record (audit: "a cell with many distinct failure modes can never be saved").
CAPPED = DetectionConfig(bucket_s=DAY, windows_s=(7 * DAY,), cooldown_buckets=3, max_failure_modes=3)


def _counts(out: BucketOutcome) -> dict[str, int]:
    return {r.failure_mode: r.count for r in out.rates}


def _incidents(cell: CellState, modes: list[str], first: int = 0) -> list[bool]:
    """Applies one incident per mode, a minute apart; says which went past the cap."""
    return [
        cell.apply_incident(CAPPED, m, 60.0 * (i + 1), f"e{i}", 0.0).mode_over_cap
        for i, m in enumerate(modes, start=first)
    ]


def test_past_the_cap_a_new_failure_mode_counts_in_the_all_modes_cell_only():
    cell = CellState("M", "B")
    cell.apply_shipment(CAPPED, 1000, 0)
    over = _incidents(cell, ["a", "b", "c", "d", "a", "e", "c"])
    assert over == [False, False, False, True, False, True, False]
    counts = _counts(cell.apply_shipment(CAPPED, 0, DAY + 1))  # closes the bucket
    assert counts == {"a": 2, "b": 1, "c": 2, ALL_MODES: 7}  # every valid event counts in the total
    assert sorted(cell.subcells) == sorted([ALL_MODES, "a", "b", "c"]) and cell.modes_over_cap == 2


def test_the_cap_decides_the_same_on_replay_from_a_restored_snapshot():
    modes = [f"m{i % 7}" for i in range(20)]
    straight = CellState("M", "B")
    straight.apply_shipment(CAPPED, 1000, 0)
    expected = _incidents(straight, modes), _counts(straight.apply_shipment(CAPPED, 0, DAY + 1))
    # The same events, applied to a cell restored mid-way (as from its changelog), decide alike.
    restored = CellState("M", "B")
    restored.apply_shipment(CAPPED, 1000, 0)
    over = _incidents(restored, modes[:5])
    restored = pickle.loads(pickle.dumps(restored, protocol=pickle.HIGHEST_PROTOCOL))
    over += _incidents(restored, modes[5:], first=5)
    assert (over, _counts(restored.apply_shipment(CAPPED, 0, DAY + 1))) == expected


def test_a_cell_with_thousands_of_failure_modes_still_fits_one_kafka_record():
    cfg = DetectionConfig()  # the default cap
    cell = CellState("KT", "B1")
    cell.apply_shipment(cfg, 1000, 0)
    for i in range(1, 2101):
        cell.apply_incident(cfg, f"mode-{i:05d}-" + "x" * 110, (i // 700) * DAY + i, f"e{i}", 0.0)
    snapshot = pickle.dumps(cell, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(snapshot) < 1_000_000 and len(cell.subcells) == cfg.max_failure_modes + 1
    everything = cell.subcells[ALL_MODES]
    assert sum(everything.history) + everything.open_count == 2100 and cell.modes_over_cap == 2100 - 200
    assert snapshot_bound_bytes(cfg) >= len(snapshot)


def test_the_snapshot_bound_covers_a_cell_full_to_the_cap():
    cfg = DetectionConfig(bucket_s=DAY, windows_s=(30 * DAY,), max_failure_modes=20)
    cell = CellState("K" * 128, "B" * 128)
    for day in range(90):
        cell.apply_shipment(cfg, 10, day * DAY)
        for m in range(20):
            cell.apply_incident(cfg, chr(0x1F600 + m) * 128, day * DAY + m + 1, f"{day}-{m}" * 20, 0.0)
    assert len(pickle.dumps(cell, protocol=pickle.HIGHEST_PROTOCOL)) <= snapshot_bound_bytes(cfg)


def test_the_cap_and_the_lead_must_be_sane():
    with pytest.raises(ValueError, match="max_failure_modes"):
        DetectionConfig(max_failure_modes=0)
    with pytest.raises(ValueError, match="max_event_lead_s"):
        DetectionConfig(max_event_lead_s=-1)
