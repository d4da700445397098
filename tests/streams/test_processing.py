"""Batches in, durable outputs out: rejects, replay after a crash, no double counting."""

from __future__ import annotations

import copy
import pickle

import orjson

from core.cells import CellState
from core.config import DetectionConfig
from streams.processing import RawRecord, process_batch
from streams.simulator import SimulationConfig, Simulator

DAY = 86_400
CFG = DetectionConfig()


def records_for(days: int, seed: int = 1, defect: bool = True) -> list[RawRecord]:
    cfg = SimulationConfig(
        seed=seed, days=days, defect=SimulationConfig.default_defect(20) if defect else None
    )
    out = []
    for _, events in Simulator(cfg).run():
        for e in events:
            value = orjson.dumps(e.model_dump(mode="json"))
            out.append(RawRecord(0, len(out), 0.0, value, e.cell_key.encode()))
    return out


def run_batches(records, cells, size=500):
    results = []
    for i in range(0, len(records), size):
        results.append(process_batch(records[i : i + size], cells, CFG, "rw.events", now=0.0))
    return results


def window_total(cells: dict[str, CellState]) -> int:
    return sum(
        sub.open_count + sum(sub.history) for c in cells.values() for k, sub in c.subcells.items() if k == "*"
    )


def test_malformed_records_become_rejects_and_never_raise():
    bad = [
        b"",
        b"{",
        b"[]",
        b"null",
        b'{"event_id": "x"}',
        b"\xff\xfe",
        orjson.dumps({"kind": "complaint"}) * 3,
    ]
    records = [RawRecord(2, i, 0.0, v) for i, v in enumerate(bad)] + [RawRecord(2, 99, 0.0, None)]
    result = process_batch(records, {}, CFG, "rw.events", now=1_700_000_000.0)
    assert len(result.dead_letters) == len(records) == len(result.reject_rows)
    assert all(row["reason"] for row in result.reject_rows)
    assert result.reject_rows[0]["reject_id"] == "rw.events:2:0"
    assert {r["offset"] for r in result.reject_rows} == {*range(len(bad)), 99}
    assert result.applied == 0 and not result.event_rows


def test_replaying_applied_records_counts_nothing_twice():
    records = records_for(40)
    cells: dict[str, CellState] = {}
    run_batches(records, cells)
    before = pickle.dumps(cells)
    again = run_batches(records, cells)
    assert sum(r.applied for r in again) == 0
    assert sum(r.replayed for r in again) == len(records)
    assert not any(r.alerts or r.rate_rows for r in again)
    assert pickle.dumps(cells) == before
    # Rows still go out on replay: the sink deduplicates them by key.
    assert sum(len(r.event_rows) for r in again) == len(records)


def test_crash_before_state_persisted_replays_to_identical_outputs():
    records = records_for(60)
    cells: dict[str, CellState] = {}
    first = run_batches(records[:5000], cells)
    persisted = copy.deepcopy(cells)  # what the changelog held when the worker died
    lost = run_batches(records[5000:], cells)
    replay = run_batches(records[5000:], copy.deepcopy(persisted))
    assert [a.alert_id for r in lost for a in r.alerts] == [a.alert_id for r in replay for a in r.alerts]
    assert [r.rate_rows for r in lost] == [r.rate_rows for r in replay]
    assert first  # the split really happened mid-stream


def test_the_injected_defect_alerts_and_nothing_else_does():
    results = run_batches(records_for(60), {})
    alerts = [a for r in results for a in r.alerts]
    assert [(a.model, a.batch, a.failure_mode) for a in alerts] == [
        ("KT-200", "KT-200-B04", "heating_element")
    ]
    clean = run_batches(records_for(120, seed=3, defect=False), {})
    assert not [a for r in clean for a in r.alerts]


def test_alerts_and_case_commands_decode_and_garbage_is_a_rejection_not_a_crash():
    from cases.commands import Command
    from recallwatch.case_bus import command_message
    from streams.case_agents import decode_case_input
    from streams.records import Rejection

    results = run_batches(records_for(60), {})
    alert = next(a for r in results for a in r.alerts)
    assert decode_case_input(orjson.dumps(alert.to_dict())) == alert
    cmd = Command("c1", "case-1", "acknowledge", "ana", 1.0, "seen")
    assert decode_case_input(command_message(cmd)) == cmd
    bad_commands = [b'{"type": "case_command", "command": {"kind": "explode"}}', b'{"type": "case_command"}']
    for bad in (b"", b"{", b"[]", b'{"alert_id": "x"}', None, *bad_commands):
        assert isinstance(decode_case_input(bad), Rejection)


def test_an_event_keyed_other_than_its_cell_is_dead_lettered() -> None:
    """A cell's events must share a partition; a producer that keys them otherwise (or not at all)
    would split the cell's state in two, so such events are refused with the reason."""
    good = records_for(3)[0]
    value = good.value
    records = [
        RawRecord(0, 0, 0.0, value, None),
        RawRecord(0, 1, 0.0, value, b"some-serial"),
        RawRecord(0, 2, 0.0, value, good.key),
    ]
    result = process_batch(records, {}, DetectionConfig(), "rw.events", now=1_700_000_000.0)
    assert [r.offset for r, _ in result.dead_letters] == [0, 1]
    assert all("message key must be the event's" in why for _, why in result.dead_letters)
    assert len(result.event_rows) == 1 and [r["offset"] for r in result.reject_rows] == [0, 1]
