"""Commands on cases: who may score, decisions record the assessment, tasks, silences, idempotence."""

from __future__ import annotations

import re

import pytest

from cases.commands import (
    Command,
    CommandRefused,
    InvalidCommand,
    UnknownCase,
    execute,
    overdue_commands,
)
from cases.identity import CaseBook, Outcome
from cases.lifecycle import Action, InvalidTransition, State
from cases.risk import DEFAULT_MATRIX
from cases.view import view_of, view_to_dict

ALERT = {"alert_id": "a1", "model": "KT-100", "batch": "B05", "failure_mode": "heating_element",
         "count": 12, "expected": 2.5, "detector": "cusum", "config_version": "v1"}  # fmt: skip
HOUR = 3600.0


class Desk:
    """A book and a command counter, so each test reads as a script of people's actions."""

    def __init__(self) -> None:
        self.book = CaseBook()
        self.case_id = self.book.on_alert(ALERT, at=0.0).case_id
        self.n = 0

    def do(self, kind: str, actor: str = "ana", at: float = 10.0, **args: object) -> list:
        self.n += 1
        cmd = Command(f"cmd-{self.n}", self.case_id, kind, actor, at, f"{kind} by {actor}", args)
        return execute(self.book, DEFAULT_MATRIX, cmd)

    def view(self):
        return view_of(self.book.case(self.case_id), self.book.identity_of(self.case_id), DEFAULT_MATRIX)


def assessed(desk: Desk) -> Desk:
    desk.do("assess")
    desk.do("assign", person="ana", role="quality")
    desk.do("assign", person="bo", role="engineering")
    desk.do("assign", person="cy", role="legal")
    return desk


def test_only_assigned_reviewers_score_and_only_their_dimensions() -> None:
    desk = assessed(Desk())
    with pytest.raises(CommandRefused, match="not assigned"):
        desk.do("score", actor="zed", dimension="severity", value=3)
    with pytest.raises(CommandRefused, match="may not score legal"):
        desk.do("score", actor="ana", dimension="legal", value=3)
    with pytest.raises(CommandRefused, match="dimension must be one of"):
        desk.do("score", actor="ana", dimension="color", value=3)
    with pytest.raises(CommandRefused):
        desk.do("score", actor="ana", dimension="severity", value=9)
    assert desk.view().scores == ()  # nothing recorded by refused commands


def test_scores_combine_into_a_recommendation_that_the_decision_records() -> None:
    desk = assessed(Desk())
    for actor, dim, value in [
        ("ana", "severity", 4),
        ("bo", "scope", 4),
        ("cy", "legal", 4),
        ("ana", "brand", 3),
    ]:
        desk.do("score", actor=actor, dimension=dim, value=value)
    view = desk.view()
    assert view.assessment.missing == () and view.assessment.combined == pytest.approx(3.85)
    assert str(view.assessment.recommendation) == "recall"
    (event,) = desk.do("decide", decision="monitor")  # people may decide against the matrix
    assert event.data["assessment"]["recommendation"] == "recall"
    assert desk.view().decision is not None and str(desk.view().decision) == "monitor"


def test_scoring_outside_an_assessment_is_an_invalid_transition() -> None:
    desk = Desk()
    desk.do("assign", person="ana", role="quality")
    with pytest.raises(InvalidTransition, match="cannot score a case in state open"):
        desk.do("score", dimension="severity", value=3)


def test_a_command_runs_once_however_often_it_is_delivered() -> None:
    desk = Desk()
    cmd = Command("same-id", desk.case_id, "acknowledge", "ana", 5.0, "seen")
    first = execute(desk.book, DEFAULT_MATRIX, cmd)
    again = execute(desk.book, DEFAULT_MATRIX, cmd)
    assert first == again and desk.book.case(desk.case_id).seq == 2
    # ... and after a restart that rebuilds the book from the stored log.
    rebuilt = CaseBook(desk.book.case(desk.case_id).history)
    assert execute(rebuilt, DEFAULT_MATRIX, cmd) == first and rebuilt.case(desk.case_id).seq == 2


def test_take_makes_the_actor_owner_and_reviewer() -> None:
    desk = Desk()
    desk.do("take", actor="bo", role="engineering")
    view = desk.view()
    assert view.owner == "bo" and view.assignees == {"bo": "engineering"}
    with pytest.raises(CommandRefused, match="reviewer role"):
        desk.do("assign", person="x", role="marketing")


def test_tasks_complete_once_and_escalate_once() -> None:
    desk = Desk()
    (added,) = desk.do("add_task", title="lab test", owner="bo", role="engineering", due=HOUR)
    task_id = added.data["task"]["task_id"]
    assert overdue_commands(desk.book, DEFAULT_MATRIX, now=2 * HOUR, escalate_after_s=2 * HOUR) == []
    (cmd,) = overdue_commands(desk.book, DEFAULT_MATRIX, now=4 * HOUR, escalate_after_s=2 * HOUR)
    assert cmd.command_id == f"escalate-{task_id}" and cmd.args["to"] == "engineering_manager"
    execute(desk.book, DEFAULT_MATRIX, cmd)
    execute(desk.book, DEFAULT_MATRIX, cmd)  # a second worker sending the same escalation
    assert overdue_commands(desk.book, DEFAULT_MATRIX, now=9 * HOUR, escalate_after_s=2 * HOUR) == []
    assert desk.view().escalated == {task_id}
    desk.do("complete_task", task_id=task_id)
    with pytest.raises(CommandRefused, match="already done"):
        desk.do("complete_task", task_id=task_id)
    with pytest.raises(CommandRefused, match="no task"):
        desk.do("complete_task", task_id="task-nope")


def test_a_silence_from_the_log_mutes_until_it_expires() -> None:
    desk = Desk()
    desk.do("silence", until=1000.0)
    assert desk.book.on_alert({**ALERT, "alert_id": "a2"}, at=500.0).outcome is Outcome.MUTED
    rebuilt = CaseBook(desk.book.case(desk.case_id).history)  # silences survive a restart
    assert rebuilt.on_alert({**ALERT, "alert_id": "a3"}, at=600.0).outcome is Outcome.MUTED
    assert rebuilt.on_alert({**ALERT, "alert_id": "a4"}, at=1500.0).outcome is Outcome.EVIDENCE
    desk.do("silence", at=700.0, until=700.0)  # lifts it early
    assert desk.book.on_alert({**ALERT, "alert_id": "a5"}, at=800.0).outcome is Outcome.EVIDENCE
    assert desk.view().muted == 1


def test_a_campaign_mutes_its_scope_and_the_view_shows_it() -> None:
    desk = assessed(Desk())
    desk.do("decide", decision="recall")
    scope = [["cell", "KT-100", "B06", "heating_element"]]
    desk.do("launch_campaign", scope=scope)
    other = {**ALERT, "alert_id": "b1", "batch": "B06"}
    assert desk.book.on_alert(other, at=50.0).outcome is Outcome.MUTED
    data = view_to_dict(desk.view())
    assert data["state"] == "campaign" and data["campaign_scope"] == scope
    assert "close" in data["allowed_actions"]


def test_unknown_case_and_unknown_command() -> None:
    desk = Desk()
    with pytest.raises(UnknownCase):
        execute(desk.book, DEFAULT_MATRIX, Command("c", "case-nope", "assess", "ana", 1.0, "x"))
    with pytest.raises(CommandRefused, match="unknown command"):
        desk.do("explode")
    with pytest.raises(ValueError, match="unknown command"):
        Command.from_dict({"command_id": "c", "case_id": "x", "kind": "explode", "actor": "a", "at": 1,
                           "reason": "r"})  # fmt: skip


def test_manual_open_and_evidence_with_linked_complaints() -> None:
    book = CaseBook()
    cmd = Command("o1", "", "open", "ana", 1.0, "dealer report", {"identity": ["lot", "heater-L02"]})
    (event,) = execute(book, DEFAULT_MATRIX, cmd)
    assert event.action is Action.OPEN and book.case(event.case_id).state is State.OPEN
    ev = Command(
        "e1", event.case_id, "evidence", "ana", 2.0, "photos", {"note": "melted", "complaints": ["c9"]}
    )
    execute(book, DEFAULT_MATRIX, ev)
    view = view_of(book.case(event.case_id), book.identity_of(event.case_id), DEFAULT_MATRIX)
    assert (
        view.evidence[-1]["complaints"] == ["c9"] and view_to_dict(view)["title"] == "supplier lot heater-L02"
    )
    with pytest.raises(CommandRefused, match="identity"):
        execute(book, DEFAULT_MATRIX, Command("o2", "", "open", "ana", 1.0, "x", {"identity": ["cell", "M"]}))


def test_a_command_id_reused_for_another_case_or_action_is_refused() -> None:
    desk = Desk()
    other = desk.book.on_alert({**ALERT, "alert_id": "b1", "batch": "B06"}, at=1.0).case_id
    execute(desk.book, DEFAULT_MATRIX, Command("k1", desk.case_id, "acknowledge", "ana", 5.0, "seen"))
    with pytest.raises(CommandRefused, match="already used for acknowledge"):
        execute(desk.book, DEFAULT_MATRIX, Command("k1", other, "acknowledge", "ana", 6.0, "seen"))
    with pytest.raises(CommandRefused, match="already used"):
        execute(desk.book, DEFAULT_MATRIX, Command("k1", desk.case_id, "assess", "ana", 6.0, "go"))


BAD_ARGS = [
    ("evidence", {"note": "n", "complaints": 5}, "evidence: complaints: must be a list of strings"),
    ("evidence", {"note": ["n"]}, "evidence: note: must be a string"),
    ("launch_campaign", {"scope": [{}]}, "launch_campaign: scope: a signal identity is a list"),
    ("launch_campaign", {"scope": "cell"}, "launch_campaign: scope: must be a list of signal identities"),
    ("open", {"identity": ["cell", "M" * 200, "B", "fire"]}, "open: identity: model must be 1-128"),
    ("open", {"identity": ["cell", "M", "B|1", "fire"]}, "open: identity: batch must be"),
    ("score", {"dimension": "severity", "value": True}, "score: value: must be a whole number"),
    ("silence", {"until": "soon"}, "silence: until: must be a number"),
    ("add_task", {"title": "t", "owner": "o", "role": "r", "due": [1]}, "add_task: due: must be a number"),
]


@pytest.mark.parametrize(("kind", "args", "problem"), BAD_ARGS)
def test_arguments_of_the_wrong_shape_are_refused_as_invalid_before_anything_is_done(
    kind: str, args: dict, problem: str
) -> None:
    # complaints of 5 raised TypeError and a scope of [{}] KeyError inside the handler; a 200-character
    # model opened a case. Now each is an InvalidCommand (a CommandRefused) saying what is wrong.
    desk = Desk()
    before = desk.book.case(desk.case_id)
    with pytest.raises(InvalidCommand, match=re.escape(problem)):
        desk.do(kind, **args)
    assert desk.book.case(desk.case_id) == before and len(desk.book.cases()) == 1
    row = {"command_id": "c", "case_id": desk.case_id, "kind": kind, "actor": "a", "at": 1, "reason": "r"}
    with pytest.raises(ValueError, match=re.escape(problem)):
        Command.from_dict({**row, "args": args})


def test_commands_of_the_right_shape_still_read_and_args_must_be_an_object() -> None:
    row = {"command_id": "c", "case_id": "case-1", "kind": "evidence", "actor": "a", "at": 1, "reason": "r"}
    args = {"note": "melted", "complaints": ["c9"], "surprise": {"ignored": True}}
    assert Command.from_dict({**row, "args": args}).args == args
    assert Command.from_dict({**row, "args": {"note": "n", "complaints": None}}).kind == "evidence"
    for bad in ([["note", "n"]], "note", 5):
        with pytest.raises(ValueError, match="args must be an object"):
            Command.from_dict({**row, "args": bad})
    with pytest.raises(ValueError, match="a command is an object"):
        Command.from_dict(True)  # type: ignore[arg-type]
