from __future__ import annotations

import json
import math
import random

import pytest

from cases.lifecycle import (
    CONTEXTS,
    TRANSITIONS,
    Action,
    Case,
    CaseEvent,
    ConflictingEvent,
    Decision,
    IncompleteEvent,
    InvalidTransition,
    State,
    format_table,
)

A, D, S = Action, Decision, State
X = InvalidTransition

# Every action as tried in the table; decide is tried with each decision.
COLUMNS: list[tuple[Action, Decision | None]] = [
    (A.OPEN, None),
    (A.ASSESS, None),
    (A.DECIDE, D.RECALL),
    (A.DECIDE, D.MONITOR),
    (A.DECIDE, D.DISMISS),
    (A.LAUNCH_CAMPAIGN, None),
    (A.CLOSE, None),
    (A.REASSESS, None),
    (A.REOPEN, None),
    (A.EVIDENCE, None),
    (A.MUTE, None),
    (A.ASSIGN, None),
    (A.ACKNOWLEDGE, None),
    (A.SCORE, None),
    (A.ADD_TASK, None),
    (A.COMPLETE_TASK, None),
    (A.ESCALATE, None),
    (A.SILENCE, None),
]

# The state machine, written out by hand (not derived from TRANSITIONS): one row per reachable
# (state, decision in force), one column per COLUMNS entry; X = InvalidTransition.
NEW, OPN, ASG, DEC, CMP, CLS = S.NEW, S.OPEN, S.ASSESSING, S.DECIDED, S.CAMPAIGN, S.CLOSED
REC, MON, DIS = D.RECALL, D.MONITOR, D.DISMISS
# fmt: off
TABLE: dict[tuple[State, Decision | None], tuple[State | type[InvalidTransition], ...]] = {
    #              open assess  dec:R dec:M dec:D launch close reassess reopen evidence mute  assign ack  score task done  escal silence
    (NEW, None): (OPN,  X,     X,    X,    X,    X,     X,    X,       X,     X,       NEW,  X,     X,   X,    X,   X,    X,    NEW),
    (OPN, None): (X,    ASG,   X,    X,    X,    X,     X,    X,       X,     OPN,     OPN,  OPN,   OPN, X,    OPN, OPN,  OPN,  OPN),
    (ASG, None): (X,    X,     DEC,  DEC,  DEC,  X,     X,    X,       X,     ASG,     ASG,  ASG,   ASG, ASG,  ASG, ASG,  ASG,  ASG),
    (DEC, REC):  (X,    X,     X,    X,    X,    CMP,   X,    X,       X,     DEC,     DEC,  DEC,   DEC, X,    DEC, DEC,  DEC,  DEC),
    (DEC, MON):  (X,    X,     X,    X,    X,    X,     CLS,  ASG,     X,     DEC,     DEC,  DEC,   DEC, X,    DEC, DEC,  DEC,  DEC),
    (DEC, DIS):  (X,    X,     X,    X,    X,    X,     CLS,  X,       X,     DEC,     DEC,  DEC,   DEC, X,    DEC, DEC,  DEC,  DEC),
    (CMP, REC):  (X,    X,     X,    X,    X,    X,     CLS,  X,       X,     CMP,     CMP,  CMP,   CMP, X,    CMP, CMP,  CMP,  CMP),
    (CLS, REC):  (X,    X,     X,    X,    X,    X,     X,    X,       X,     CLS,     CLS,  X,     X,   X,    X,   CLS,  CLS,  CLS),
    (CLS, MON):  (X,    X,     X,    X,    X,    X,     X,    X,       OPN,   CLS,     CLS,  X,     X,   X,    X,   CLS,  CLS,  CLS),
    (CLS, DIS):  (X,    X,     X,    X,    X,    X,     X,    X,       OPN,   CLS,     CLS,  X,     X,   X,    X,   CLS,  CLS,  CLS),
}
# fmt: on

# How to reach each row from a new case.
TO_DECIDE: list[tuple[Action, Decision | None]] = [(A.OPEN, None), (A.ASSESS, None)]
PATHS: dict[tuple[State, Decision | None], list[tuple[Action, Decision | None]]] = {
    (NEW, None): [],
    (OPN, None): [(A.OPEN, None)],
    (ASG, None): TO_DECIDE,
    **{(DEC, d): [*TO_DECIDE, (A.DECIDE, d)] for d in D},
    (CMP, REC): [*TO_DECIDE, (A.DECIDE, REC), (A.LAUNCH_CAMPAIGN, None)],
    (CLS, REC): [*TO_DECIDE, (A.DECIDE, REC), (A.LAUNCH_CAMPAIGN, None), (A.CLOSE, None)],
    **{(CLS, d): [*TO_DECIDE, (A.DECIDE, d), (A.CLOSE, None)] for d in (MON, DIS)},
}


def build(steps: list[tuple[Action, Decision | None]], case_id: str = "c1") -> Case:
    case = Case(case_id)
    for i, (action, decision) in enumerate(steps):
        case, _ = case.act(action, actor="ana", at=100.0 * i, reason=f"step {i}", decision=decision)
    return case


CELLS = [
    pytest.param(ctx, col, expected, id=f"{ctx[0]}({ctx[1]})-{col[0]}{':' + col[1] if col[1] else ''}")
    for ctx, row in TABLE.items()
    for col, expected in zip(COLUMNS, row, strict=True)
]


def test_table_covers_every_reachable_state_and_action() -> None:
    assert set(TABLE) == set(CONTEXTS) == set(PATHS)
    assert {a for a, _ in COLUMNS} == set(Action)
    assert len(CELLS) == len(CONTEXTS) * len(COLUMNS)
    allowed_in_table = sum(1 for row in TABLE.values() for cell in row if cell is not X)
    assert allowed_in_table == len(TRANSITIONS) + 2  # decide appears once per decision in the test table


@pytest.mark.parametrize("ctx", list(PATHS))
def test_paths_reach_their_row(ctx: tuple[State, Decision | None]) -> None:
    case = build(PATHS[ctx])
    assert (case.state, case.decision) == ctx


@pytest.mark.parametrize(("ctx", "col", "expected"), CELLS)
def test_transition_table(
    ctx: tuple[State, Decision | None],
    col: tuple[Action, Decision | None],
    expected: State | type[InvalidTransition],
) -> None:
    case = build(PATHS[ctx])
    action, decision = col
    if expected is X:
        with pytest.raises(InvalidTransition) as info:
            case.act(action, actor="bo", at=1e6, reason="try", decision=decision)
        assert info.value.state is ctx[0] and info.value.action is action
        assert set(info.value.allowed) == {a for s, d, a in TRANSITIONS if (s, d) == ctx}
        assert str(ctx[0]) in str(info.value) and str(action) in str(info.value)
        return
    after, event = case.act(action, actor="bo", at=1e6, reason="try", decision=decision)
    assert after.state is expected
    assert (event.from_state, event.to_state, event.seq) == (ctx[0], expected, case.seq + 1)
    assert after.history[:-1] == case.history
    if action is A.DECIDE:
        assert after.decision is decision and event.decision is decision
    elif expected in (S.OPEN, S.ASSESSING):
        assert after.decision is None
    else:
        assert after.decision is case.decision


def test_invalid_transition_message_names_state_action_and_allowed() -> None:
    case = build(PATHS[(S.CLOSED, D.RECALL)])
    with pytest.raises(
        InvalidTransition,
        match=r"cannot reopen a case in state closed \(decision recall\); "
        r"allowed actions: evidence, mute",
    ):
        case.act(A.REOPEN, actor="ana", at=1.0, reason="again")


def test_dismiss_has_no_shortcut_and_decide_needs_exactly_one_decision() -> None:
    opened = build(PATHS[(S.OPEN, None)])
    with pytest.raises(
        InvalidTransition, match="cannot decide a case in state open; allowed actions: assess"
    ):
        opened.act(A.DECIDE, actor="ana", at=1.0, reason="noise", decision=D.DISMISS)
    assessing = build(PATHS[(S.ASSESSING, None)])
    with pytest.raises(InvalidTransition, match="decide needs a decision: recall, monitor, dismiss"):
        assessing.act(A.DECIDE, actor="ana", at=1.0, reason="?")
    with pytest.raises(InvalidTransition, match="only decide carries a decision"):
        assessing.act(A.EVIDENCE, actor="ana", at=1.0, reason="x", decision=D.RECALL)
    with pytest.raises(InvalidTransition, match="only decide carries a decision"):
        assessing.act(A.EVIDENCE, actor="ana", at=1.0, reason="x", data={"decision": "recall"})


def test_reopen_after_dismissal_keeps_history_and_clears_the_decision() -> None:
    closed = build(PATHS[(S.CLOSED, D.DISMISS)])
    reopened, _ = closed.act(A.REOPEN, actor="recallwatch", at=9e5, reason="signal is back")
    assert (reopened.state, reopened.decision, reopened.seq) == (S.OPEN, None, 5)
    assert [e.action for e in reopened.history] == [A.OPEN, A.ASSESS, A.DECIDE, A.CLOSE, A.REOPEN]
    assert reopened.history[2].decision is D.DISMISS
    again = build(PATHS[(S.DECIDED, D.MONITOR)]).act(A.REASSESS, actor="ana", at=1e6, reason="more data")[0]
    assert (again.state, again.decision) == (S.ASSESSING, None)


def full_log() -> list[CaseEvent]:
    case = build(PATHS[(S.CLOSED, D.MONITOR)])
    case, _ = case.act(
        A.REOPEN, actor="recallwatch", at=1e6, reason="back", data={"alert": {"alert_id": "a9"}}
    )
    case, _ = case.act(A.EVIDENCE, actor="recallwatch", at=2e6, reason="more")
    return list(case.history)


def test_replay_is_order_independent_and_idempotent() -> None:
    log = full_log()
    expected = Case.replay(log)
    assert (expected.state, expected.seq) == (S.OPEN, 6)
    shuffled = log * 3
    random.Random(7).shuffle(shuffled)
    assert Case.replay(shuffled) == expected
    assert expected.apply(log[2]) is expected  # an already-applied event is a no-op
    assert Case.replay([], case_id="c1") == Case("c1")
    with pytest.raises(ValueError, match="needs a case_id"):
        Case.replay([])


def test_events_that_do_not_fit_the_log_are_refused() -> None:
    log = full_log()
    case = Case.replay(log[:3])
    forged = CaseEvent("c1", 2, 5.0, "mallory", A.ASSESS, S.OPEN, S.ASSESSING, "rewrite history")
    with pytest.raises(ConflictingEvent, match="already has a different event #2"):
        case.apply(forged)
    with pytest.raises(ConflictingEvent, match="gap"):
        case.apply(log[4])
    with pytest.raises(ConflictingEvent, match="applied to case c2"):
        Case("c2").apply(log[0])
    lie = CaseEvent("c1", 4, 5.0, "ana", A.CLOSE, S.DECIDED, S.OPEN, "claims the wrong target")
    with pytest.raises(ConflictingEvent, match="claims decided -> open"):
        case.apply(lie)
    with pytest.raises(InvalidTransition):
        case.apply(CaseEvent("c1", 4, 5.0, "ana", A.LAUNCH_CAMPAIGN, S.DECIDED, S.CAMPAIGN, "not recall"))


@pytest.mark.parametrize(
    ("actor", "at", "reason", "match"),
    [
        ("", 1.0, "why", "who"),
        ("   ", 1.0, "why", "who"),
        ("ana", 1.0, "", "why"),
        ("ana", 1.0, " \n", "why"),
        ("ana", math.nan, "why", "when"),
        ("ana", math.inf, "why", "when"),
        ("ana", None, "why", "when"),
        ("ana", True, "why", "when"),
    ],
)
def test_who_when_and_why_are_required(actor: str, at: float, reason: str, match: str) -> None:
    with pytest.raises(IncompleteEvent, match=match):
        Case("c1").act(A.OPEN, actor=actor, at=at, reason=reason)


def test_event_shape_and_storage_round_trip() -> None:
    with pytest.raises(IncompleteEvent, match="seq"):
        CaseEvent("c1", 0, 1.0, "ana", A.OPEN, S.NEW, S.OPEN, "x")
    with pytest.raises(IncompleteEvent, match="case_id"):
        CaseEvent("", 1, 1.0, "ana", A.OPEN, S.NEW, S.OPEN, "x")
    for event in full_log():
        row = json.loads(json.dumps(event.to_dict()))
        assert CaseEvent.from_dict(row) == event
    event = full_log()[4]
    with pytest.raises(TypeError):
        event.data["alert"] = {}  # type: ignore[index]
    assert row["action"] == "evidence" and row["from_state"] == row["to_state"] == "open"


def test_format_table_lists_every_transition() -> None:
    text = format_table()
    assert len(text.splitlines()) == len(TRANSITIONS)
    assert "closed(dismiss)    --reopen-----------> open" in text
