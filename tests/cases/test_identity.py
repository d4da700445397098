from __future__ import annotations

from typing import Any

import pytest

from cases.identity import CaseBook, Outcome, SignalIdentity, Silence, case_id_for
from cases.lifecycle import Action, CaseEvent, Decision, State

CELL = SignalIdentity.cell("KT-100", "B05", "heating_element")
OTHER = SignalIdentity.cell("KT-100", "B06", "heating_element")
LOT = SignalIdentity.lot("heater-L02")


def alert(alert_id: str, identity: SignalIdentity = CELL, **extra: Any) -> dict[str, Any]:
    if identity.kind == "lot":
        return {"alert_id": alert_id, "supplier_lot": identity.parts[0], **extra}
    model, batch, mode = identity.parts
    return {"alert_id": alert_id, "model": model, "batch": batch, "failure_mode": mode, "score": 4.2, **extra}


def events_of(book: CaseBook) -> list[CaseEvent]:
    return [e for c in book.cases() for e in c.history]


def decide_and_close(book: CaseBook, case_id: str, decision: Decision, at: float) -> None:
    book.act(case_id, Action.ASSESS, actor="ana", at=at, reason="triage")
    book.act(case_id, Action.DECIDE, actor="ana", at=at + 1, reason="reviewed", decision=decision)
    if decision is Decision.RECALL:
        book.launch_campaign(case_id, [], actor="ana", at=at + 2, reason="recall")
    book.act(case_id, Action.CLOSE, actor="ana", at=at + 3, reason="done")


def test_identities_and_case_ids() -> None:
    assert SignalIdentity.from_alert(alert("a")) == CELL
    assert SignalIdentity.from_alert(alert("a", LOT)) == LOT
    assert SignalIdentity.from_list(CELL.to_list()) == CELL and str(LOT) == "lot/heater-L02"
    ids = {case_id_for(i) for i in (CELL, OTHER, LOT, SignalIdentity.cell("KT-100", "B05", "*"))}
    assert len(ids) == 4
    assert case_id_for(CELL) == case_id_for(SignalIdentity.cell("KT-100", "B05", "heating_element"))
    with pytest.raises(ValueError, match="no 'batch'"):
        SignalIdentity.from_alert({"model": "M", "failure_mode": "f"})
    with pytest.raises(ValueError, match="not a signal identity"):
        SignalIdentity("lot", ("a", "b"))
    with pytest.raises(ValueError, match="not a signal identity"):
        SignalIdentity.cell("M", "", "f")


def test_second_alert_is_evidence_on_the_same_case_and_redelivery_is_a_duplicate() -> None:
    book = CaseBook()
    first = book.on_alert(alert("a1"), at=100.0)
    second = book.on_alert(alert("a2"), at=200.0)
    assert (first.outcome, second.outcome) == (Outcome.OPENED, Outcome.EVIDENCE)
    assert first.case_id == second.case_id == case_id_for(CELL)
    assert len(book.cases()) == 1
    case = book.case_for(CELL)
    assert case is not None and (case.state, case.seq) == (State.OPEN, 2)
    assert second.event is not None and second.event.data["alert"]["alert_id"] == "a2"
    assert second.event.actor == "recallwatch" and "a2" in second.event.reason
    again = book.on_alert(alert("a1"), at=300.0)
    assert (again.outcome, again.event) == (Outcome.DUPLICATE, None)
    assert book.on_alert(alert("b1", OTHER), at=300.0).outcome is Outcome.OPENED
    assert len(book.cases()) == 2


def test_evidence_while_assessing_and_decided() -> None:
    book = CaseBook()
    cid = book.on_alert(alert("a1"), at=1.0).case_id
    book.act(cid, Action.ASSESS, actor="ana", at=2.0, reason="triage")
    assert book.on_alert(alert("a2"), at=3.0).outcome is Outcome.EVIDENCE
    book.act(cid, Action.DECIDE, actor="ana", at=4.0, reason="watch it", decision=Decision.MONITOR)
    assert book.on_alert(alert("a3"), at=5.0).outcome is Outcome.EVIDENCE
    case = book.case(cid)
    assert case is not None and (case.state, case.decision) == (State.DECIDED, Decision.MONITOR)


@pytest.mark.parametrize("decision", [Decision.DISMISS, Decision.MONITOR])
def test_reopen_after_dismissal_or_monitor_keeps_history(decision: Decision) -> None:
    book = CaseBook()
    cid = book.on_alert(alert("a1"), at=1.0).case_id
    decide_and_close(book, cid, decision, at=10.0)
    outcome = book.on_alert(alert("a2"), at=100.0)
    assert (outcome.outcome, outcome.case_id) == (Outcome.REOPENED, cid)
    case = book.case(cid)
    assert case is not None and (case.state, case.decision, case.seq) == (State.OPEN, None, 5)
    assert [e.action for e in case.history] == [
        Action.OPEN,
        Action.ASSESS,
        Action.DECIDE,
        Action.CLOSE,
        Action.REOPEN,
    ]
    assert str(decision) in case.history[-1].reason
    assert book.on_alert(alert("a3"), at=101.0).outcome is Outcome.EVIDENCE


def test_alert_after_a_closed_recall_is_evidence_on_the_closed_case() -> None:
    book = CaseBook()
    cid = book.on_alert(alert("a1"), at=1.0).case_id
    decide_and_close(book, cid, Decision.RECALL, at=10.0)
    outcome = book.on_alert(alert("a2"), at=100.0)
    case = book.case(cid)
    assert outcome.outcome is Outcome.EVIDENCE and case is not None and case.state is State.CLOSED


def test_running_campaign_mutes_the_identities_it_covers() -> None:
    book = CaseBook()
    cid = book.on_alert(alert("l1", LOT), at=1.0).case_id
    book.act(cid, Action.ASSESS, actor="ana", at=2.0, reason="triage")
    book.act(cid, Action.DECIDE, actor="ana", at=3.0, reason="bad lot", decision=Decision.RECALL)
    book.launch_campaign(cid, [CELL], actor="ana", at=4.0, reason="recall units with lot L02")
    assert book.campaign_scope(cid) == {LOT, CELL}

    muted = book.on_alert(alert("a1"), at=5.0)
    assert (muted.outcome, muted.case_id) == (Outcome.MUTED, case_id_for(CELL))
    assert muted.event is not None and muted.event.action is Action.MUTE
    assert muted.event.data["muted_by"] == "campaign" and muted.event.data["campaign"] == cid
    assert cid in muted.event.reason
    cell_case = book.case_for(CELL)
    assert cell_case is not None and cell_case.state is State.NEW  # recorded, not opened
    own = book.on_alert(alert("l2", LOT), at=6.0)
    assert (own.outcome, own.case_id) == (Outcome.MUTED, cid)
    assert book.on_alert(alert("b1", OTHER), at=7.0).outcome is Outcome.OPENED  # not in scope

    book.act(cid, Action.CLOSE, actor="ana", at=8.0, reason="campaign complete")
    reopened = book.on_alert(alert("a2"), at=9.0)
    assert reopened.outcome is Outcome.OPENED
    cell_case = book.case_for(CELL)
    assert cell_case is not None and [e.action for e in cell_case.history] == [Action.MUTE, Action.OPEN]


def test_silence_mutes_until_it_expires() -> None:
    book = CaseBook(silences=[Silence(CELL, until=1_000.0, reason="known supplier issue", actor="ana")])
    muted = book.on_alert(alert("a1"), at=500.0)
    assert muted.outcome is Outcome.MUTED and muted.event is not None
    assert muted.event.data["muted_by"] == "silence" and "known supplier issue" in muted.event.reason
    assert "ana" in muted.event.reason
    assert book.on_alert(alert("b1", OTHER), at=500.0).outcome is Outcome.OPENED
    assert book.on_alert(alert("a2"), at=1_000.0).outcome is Outcome.OPENED  # expired: until is exclusive
    book.silences.append(Silence(CELL, until=3_000.0, reason="under investigation", actor="bo"))
    assert book.on_alert(alert("a3"), at=2_000.0).outcome is Outcome.MUTED
    case = book.case_for(CELL)
    assert case is not None and [e.action for e in case.history] == [Action.MUTE, Action.OPEN, Action.MUTE]


def test_silence_needs_who_why_and_a_finite_expiry() -> None:
    with pytest.raises(ValueError, match="who"):
        Silence(CELL, until=1.0, reason=" ", actor="ana")
    with pytest.raises(ValueError, match="expiry"):
        Silence(CELL, until=float("inf"), reason="forever", actor="ana")


def test_book_rebuilt_from_events_behaves_the_same() -> None:
    book = CaseBook()
    cid = book.on_alert(alert("l1", LOT), at=1.0).case_id
    book.act(cid, Action.ASSESS, actor="ana", at=2.0, reason="triage")
    book.act(cid, Action.DECIDE, actor="ana", at=3.0, reason="bad lot", decision=Decision.RECALL)
    book.launch_campaign(cid, [CELL], actor="ana", at=4.0, reason="recall")
    dismissed = book.on_alert(alert("b1", OTHER), at=5.0).case_id
    decide_and_close(book, dismissed, Decision.DISMISS, at=6.0)
    log = events_of(book)

    rebuilt = CaseBook(reversed(log + log))
    assert {c.case_id: c for c in rebuilt.cases()} == {c.case_id: c for c in book.cases()}
    assert rebuilt.identity_of(cid) == LOT and rebuilt.campaign_scope(cid) == {LOT, CELL}
    assert rebuilt.on_alert(alert("b1", OTHER), at=20.0).outcome is Outcome.DUPLICATE
    assert rebuilt.on_alert(alert("b2", OTHER), at=20.0).outcome is Outcome.REOPENED
    assert rebuilt.on_alert(alert("a1"), at=20.0).outcome is Outcome.MUTED
    assert rebuilt.apply(log[0]) == rebuilt.case(log[0].case_id)  # already applied: no-op


def test_first_event_must_carry_a_matching_identity() -> None:
    book = CaseBook()
    with pytest.raises(ValueError, match="must carry its identity"):
        book.act("case-x", Action.OPEN, actor="ana", at=1.0, reason="by hand")
    with pytest.raises(ValueError, match="must carry its identity"):
        book.act(
            case_id_for(CELL), Action.OPEN, actor="ana", at=1.0, reason="x", data={"identity": LOT.to_list()}
        )
    assert book.cases() == []
    event = book.open_case(LOT, actor="ana", at=1.0, reason="complaint from a retailer")
    assert event.case_id == case_id_for(LOT) and book.identity_of(event.case_id) == LOT
    assert book.on_alert(alert("l1", LOT), at=2.0).outcome is Outcome.EVIDENCE


@pytest.mark.parametrize("items", [{}, 5, "cell", [], [{}], ["cell", "M", 7, "fire"], None])
def test_an_identity_of_the_wrong_shape_is_a_value_error(items: Any) -> None:
    # A scope of [{}] reached from_list and raised KeyError, which nothing expected.
    with pytest.raises(ValueError, match="signal identity"):
        SignalIdentity.from_list(items)


@pytest.mark.parametrize(
    ("identity", "problem"),
    [
        (SignalIdentity.cell("M" * 129, "B", "fire"), "model must be 1-128"),
        (SignalIdentity.cell("M", "B|2", "fire"), "batch must be 1-128 printable characters without '|'"),
        (SignalIdentity.cell("M\n", "B", "fire"), "model must be"),
        (SignalIdentity.cell("M", "B", "f" * 129), "failure_mode must be 1-128 characters"),
        (SignalIdentity.lot("L\x00"), "lot must be 1-128 printable characters"),
    ],
)
def test_identities_with_names_the_system_refuses_fail_the_check(
    identity: SignalIdentity, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        identity.checked()


def test_names_the_system_takes_pass_the_check_and_stored_ones_still_load() -> None:
    for ok in (SignalIdentity.cell("M" * 128, "B 05/x", "*"), SignalIdentity.cell("M", "B", "a|b"), LOT):
        assert ok.checked() is ok
    # A case stored before the check keeps loading: the check is at the door, not on construction.
    long = SignalIdentity.cell("M" * 200, "B", "fire")
    book = CaseBook([CaseBook().open_case(long, actor="ana", at=1.0, reason="old")])
    assert book.identity_of(case_id_for(long)) == long
