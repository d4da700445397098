"""The case desk on both ClickHouse back ends: the log survives a restart, replays change nothing."""

from __future__ import annotations

import itertools

import pytest

from cases.commands import HANDLERS, Command
from cases.lifecycle import State
from cases.risk import DEFAULT_MATRIX
from recallwatch.case_desk import CaseDesk, UnusableInput
from sinks.case_store import CaseStore, ConcernIndex, ThreadPosition
from sinks.clickhouse import ClickHouseError, ClickHouseStore

pytestmark = pytest.mark.integration
ALERT = {"alert_id": "a1", "model": "KT-100", "batch": "B05", "failure_mode": "heating_element",
         "count": 12, "expected": 2.5, "detector": "cusum"}  # fmt: skip


def desk_on(store: ClickHouseStore) -> CaseDesk:
    ticks = itertools.count(1_000)
    return CaseDesk(CaseStore(store), DEFAULT_MATRIX, clock=lambda: float(next(ticks)))


def test_a_restarted_desk_sees_the_same_cases_and_replays_are_no_ops(store: ClickHouseStore) -> None:
    desk = desk_on(store)
    (opened,) = desk.on_alert(ALERT, at=100.0)
    cid = opened.case_id
    result, _ = desk.run(Command("c1", cid, "assess", "ana", 200.0, "triage"))
    assert result.status == "ok" and result.seqs == (2,)
    desk.run(Command("c2", cid, "take", "ana", 210.0, "mine"))

    restarted = desk_on(store)  # a worker killed and started again, its input replayed
    assert restarted.on_alert(ALERT, at=999.0) == [opened]  # the stored event, to pass on again
    again, events = restarted.run(Command("c1", cid, "assess", "ana", 200.0, "triage"))
    assert again.status == "ok" and [e.seq for e in events] == [2]
    desk.store.append(desk.store.events(cid))  # the same rows written twice collapse onto one
    view = restarted.view(cid)
    assert view is not None and view.state is State.ASSESSING and view.owner == "ana" and view.events == 3
    assert [e.seq for e in CaseStore(store).events(cid)] == [1, 2, 3]


def test_refused_commands_are_recorded_with_the_reason(store: ClickHouseStore) -> None:
    desk = desk_on(store)
    (opened,) = desk.on_alert(ALERT, at=100.0)
    result, events = desk.run(Command("c1", opened.case_id, "close", "ana", 200.0, "done?"))
    assert (
        events == [] and result.status == "refused" and "cannot close a case in state open" in result.detail
    )
    assert desk.store.result("c1") == result
    missing, _ = desk.run(Command("c2", "case-nope", "assess", "ana", 200.0, "x"))
    assert missing.status == "unknown_case"


def test_a_desk_folds_in_what_another_writer_stored(store: ClickHouseStore) -> None:
    first, second = desk_on(store), desk_on(store)
    (opened,) = first.on_alert(ALERT, at=100.0)
    second.refresh()
    first.run(Command("c1", opened.case_id, "silence", "ana", 150.0, "known", {"until": 10_000.0}))
    # A rebalance hands the case to the second worker: the silence must still hold there.
    (muted,) = second.on_alert({**ALERT, "alert_id": "a2"}, at=300.0)
    assert str(muted.action) == "mute" and muted.seq == 3


def test_listing_by_state_and_thread_positions(store: ClickHouseStore) -> None:
    desk = desk_on(store)
    a = desk.on_alert(ALERT, at=100.0)[0].case_id
    b = desk.on_alert({**ALERT, "alert_id": "b1", "batch": "B06"}, at=200.0)[0].case_id
    desk.run(Command("c1", b, "assess", "ana", 300.0, "triage"))
    cases = CaseStore(store)
    assert cases.case_ids() == [b, a]
    assert cases.case_ids(state="assessing") == [b] and cases.case_ids(state="open") == [a]
    assert cases.thread(a) is None
    cases.save_thread(ThreadPosition(a, "C1", "111.1", 1))
    cases.save_thread(ThreadPosition(a, "C1", "111.1", 3))
    cases.save_thread(ThreadPosition(a, "C1", "111.1", 2))  # a late, stale write loses
    assert cases.thread(a) == ThreadPosition(a, "C1", "111.1", 3)


def test_the_latest_thread_channel_is_the_last_saved_real_one(store: ClickHouseStore) -> None:
    cases = CaseStore(store)
    assert cases.latest_thread_channel() is None
    cases.save_thread(ThreadPosition("case-a", "COLD", "1.1", 4), updated_at=100.0)
    cases.save_thread(ThreadPosition("case-b", "CNEW", "2.1", 1), updated_at=200.0)
    # Neither a refused root (no ts) nor a console line nor a "#name" tells a channel id.
    cases.save_thread(ThreadPosition("case-c", "none", "", 1), updated_at=300.0)
    cases.save_thread(ThreadPosition("case-d", "console", "case-d", 1), updated_at=400.0)
    cases.save_thread(ThreadPosition("case-e", "#quality", "3.1", 1), updated_at=500.0)
    assert cases.latest_thread_channel() == "CNEW"
    cases.save_thread(ThreadPosition("case-a", "COLD", "1.1", 5), updated_at=600.0)
    assert cases.latest_thread_channel() == "COLD"


def test_the_case_index_answers_from_memory_and_refreshes_when_stale(store: ClickHouseStore) -> None:
    desk = desk_on(store)
    now = [0.0]
    index = ConcernIndex(CaseStore(store), max_age_s=2.0, clock=lambda: now[0])
    assert index.concerning("KT-100", "B05") == []
    (opened,) = desk.on_alert(ALERT, at=100.0)
    lot = desk.on_alert({"alert_id": "l1", "supplier_lot": "HT-7"}, at=110.0)[0].case_id
    assert index.concerning("KT-100", "B05", ["HT-7"]) == []  # still the index built at t=0
    now[0] = 2.5
    found = index.concerning("KT-100", "B05", ["HT-7", "other"])
    assert [c["case_id"] for c in found] == sorted([opened.case_id, lot])
    assert {c["state"] for c in found} == {"open"} and index.concerning("KT-100", "B06") == []


@pytest.mark.parametrize("write", ["alert", "command"])
def test_a_failed_write_leaves_nothing_half_recorded(store: ClickHouseStore, write: str) -> None:
    """ClickHouse serves reads but refuses writes (here: the log is briefly behind a read-only Merge
    table) and the worker retries: the retry stores the same event, and a desk started afresh on
    the log carries on from it."""
    desk = desk_on(store)
    desk.refresh()
    if write == "command":
        (opened,) = desk.on_alert(ALERT, at=100.0)
    store.query("RENAME TABLE case_events TO case_events_away")
    store.query(
        "CREATE TABLE case_events AS case_events_away ENGINE = Merge(currentDatabase(), '^case_events_away$')"
    )
    try:
        with pytest.raises(ClickHouseError, match="not supported"):
            if write == "alert":
                desk.on_alert(ALERT, at=100.0)
            else:
                desk.run(Command("c1", opened.case_id, "assess", "ana", 200.0, "triage"))
    finally:
        store.query("DROP TABLE case_events")
        store.query("RENAME TABLE case_events_away TO case_events")

    if write == "alert":
        (opened,) = desk.on_alert(ALERT, at=100.0)  # the retry
        assert opened.seq == 1
    else:
        result, events = desk.run(Command("c1", opened.case_id, "assess", "ana", 200.0, "triage"))
        assert result.status == "ok" and [e.seq for e in events] == [2]
    desk.run(Command("c2", opened.case_id, "take", "ana", 210.0, "mine"))
    stored = CaseStore(store).events(opened.case_id)
    assert [e.seq for e in stored] == ([1, 2, 3] if write == "command" else [1, 2])
    view = desk_on(store).view(opened.case_id)  # a restarted worker reads only what was stored
    assert view is not None and view.owner == "ana"


def test_an_alert_the_case_core_cannot_take_is_unusable_input_and_the_desk_carries_on(
    store: ClickHouseStore,
) -> None:
    """An empty model made SignalIdentity raise a plain ValueError, which the agent retried forever."""
    desk = desk_on(store)
    (opened,) = desk.on_alert(ALERT, at=100.0)
    with pytest.raises(UnusableInput, match=r"cannot take this alert.*not a signal identity"):
        desk.on_alert({**ALERT, "alert_id": "a2", "model": ""}, at=110.0)
    (more,) = desk.on_alert({**ALERT, "alert_id": "a3"}, at=120.0)
    assert more.seq == 2 and [e.seq for e in CaseStore(store).events(opened.case_id)] == [1, 2]


def test_commands_with_arguments_of_the_wrong_shape_are_recorded_invalid_and_change_nothing(
    store: ClickHouseStore,
) -> None:
    """They raised TypeError (complaints of 5) and KeyError (a scope of [{}]) out of ``run``."""
    desk = desk_on(store)
    (opened,) = desk.on_alert(ALERT, at=100.0)
    cid = opened.case_id
    bad = [("c1", "evidence", {"note": "n", "complaints": 5}), ("c2", "launch_campaign", {"scope": [{}]})]
    for command_id, kind, args in bad:
        result, events = desk.run(Command(command_id, cid, kind, "ana", 200.0, "r", args))
        assert events == [] and result.status == "invalid" and f"{kind}: " in result.detail
        assert desk.store.result(command_id) == result
    assert [e.seq for e in CaseStore(store).events(cid)] == [1]


def test_a_command_that_breaks_the_case_core_is_answered_invalid_not_raised(
    store: ClickHouseStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the core raises on a command (here a stand-in for a bug it trips) is the command's
    fault: recorded with the reason, and the desk goes on with the log as stored."""
    desk = desk_on(store)
    (opened,) = desk.on_alert(ALERT, at=100.0)

    def broken(*_args: object) -> list:
        raise KeyError("scope")

    monkeypatch.setitem(HANDLERS, "assess", broken)
    result, events = desk.run(Command("c1", opened.case_id, "assess", "ana", 200.0, "triage"))
    assert events == [] and result.status == "invalid" and "KeyError" in result.detail
    monkeypatch.undo()
    result, events = desk.run(Command("c2", opened.case_id, "assess", "ana", 210.0, "triage"))
    assert result.status == "ok" and [e.seq for e in events] == [2]
