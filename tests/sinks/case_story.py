"""One recall case driven through the real case core, for the tests of its Slack thread.

The rendering tests (test_slack_messages.py) and the delivery tests (test_slack_threads.py) read
the same case: its (case dict, event dict) pairs are exactly what the worker hands the notifier.
Built once here, not in either test module, so the two cannot drift apart.
"""

from __future__ import annotations

import itertools
from typing import Any

from cases.commands import Command, execute
from cases.identity import CaseBook
from cases.lifecycle import Action, CaseEvent
from cases.risk import DEFAULT_MATRIX
from cases.view import view_of, view_to_dict

T0 = 1704164645.0  # 2024-01-02T03:04:05Z
CELL = ("M-100", "B-7", "brakes")

Step = tuple[dict[str, Any], dict[str, Any]]  # (case as of the event, event)


def alert(alert_id: str, count: int = 12, **overrides: Any) -> dict[str, Any]:
    model, batch, mode = CELL
    fields = {"alert_id": alert_id, "model": model, "batch": batch, "failure_mode": mode}
    measured = {"count": count, "expected": 3.0, "units_in_field": 12_000, "rate_per_1000": count / 12.0,
                "expected_rate_per_1000": 0.25}  # fmt: skip
    return fields | measured | {"detector": "cusum", "config_version": "v3"} | overrides


class Story:
    """Drives one case through the real core, keeping (case dict, event dict) after every event."""

    def __init__(self) -> None:
        self.book = CaseBook()
        self.steps: list[Step] = []
        self._ids = itertools.count(1)
        self._clock = itertools.count(0)

    def at(self) -> float:
        return T0 + 60 * next(self._clock)

    def case(self, case_id: str) -> dict[str, Any]:
        case = self.book.case(case_id)
        assert case is not None
        return view_to_dict(view_of(case, self.book.identity_of(case_id), DEFAULT_MATRIX))

    def record(self, events: list[CaseEvent]) -> Step:
        for event in events:
            # The case as the worker sees it right after this event: replay the log up to it.
            case = CaseBook(self.book.case(event.case_id).history[: event.seq])  # type: ignore[union-attr]
            view = view_of(case.case(event.case_id), case.identity_of(event.case_id), DEFAULT_MATRIX)  # type: ignore[arg-type]
            self.steps.append((view_to_dict(view), event.to_dict()))
        return self.steps[-1]

    def alert(self, fields: dict[str, Any]) -> Step:
        outcome = self.book.on_alert(fields, at=self.at())
        assert outcome.event is not None
        return self.record([outcome.event])

    def escalate(self, task_id: str, to: str) -> Step:
        # Straight through the book: how the worker turns overdue tasks into events is not our concern.
        case_id = self.steps[-1][0]["case_id"]
        data = {"task_id": task_id, "to": to, "overdue_s": 7200.0}
        reason = f"task {task_id} is 2.0 h overdue"
        return self.record(
            [
                self.book.act(
                    case_id, Action.ESCALATE, actor="recallwatch", at=self.at(), reason=reason, data=data
                )
            ]
        )

    def cmd(self, kind: str, actor: str, reason: str = "because", **args: Any) -> Step:
        case_id = self.steps[-1][0]["case_id"]
        command = Command(f"c{next(self._ids)}", case_id, kind, actor, self.at(), reason, args)
        return self.record(execute(self.book, DEFAULT_MATRIX, command))


def full_story() -> dict[str, Step]:
    """One case through every action, keyed by a label for the reply table in test_slack_messages.py."""
    s = Story()
    steps = {"open": s.alert(alert("a1")), "evidence-alert": s.alert(alert("a2", count=14))}
    steps["evidence-note"] = s.cmd(
        "evidence", "ana", note="returned unit\nsmelled burnt", complaints=["x", "y"]
    )
    steps["assess"] = s.cmd("assess", "ana", "triage")
    steps["take"] = s.cmd("take", "ana")
    steps["assign"] = s.cmd("assign", "ana", person="bo", role="engineering")
    s.cmd("assign", "ana", person="cy", role="legal")
    steps["acknowledge"] = s.cmd("acknowledge", "bo")
    for actor, dimension, value in [("ana", "severity", 3), ("ana", "scope", 2), ("ana", "brand", 1)]:
        s.cmd("score", actor, dimension=dimension, value=value)
    steps["score"] = s.cmd("score", "cy", dimension="legal", value=2)
    steps["add_task"] = s.cmd(
        "add_task", "ana", title="lab test", owner="bo", role="engineering", due=T0 + 3600
    )
    task_id = steps["add_task"][1]["data"]["task"]["task_id"]
    steps["escalate"] = s.escalate(task_id, to="engineering_manager")
    steps["complete_task"] = s.cmd(
        "complete_task", "bo", task_id=steps["add_task"][1]["data"]["task"]["task_id"]
    )
    steps["decide"] = s.cmd("decide", "ana", "3x baseline, no injuries", decision="monitor")
    steps["reassess"] = s.cmd("reassess", "ana", "new complaints")
    steps["decide-unscored"] = s.cmd("decide", "ana", "false alarm", decision="dismiss")
    steps["close"] = s.cmd("close", "ana", "done")
    steps["reopen"] = s.alert(alert("a3"))
    s.cmd("assess", "ana")
    s.cmd("score", "ana", dimension="severity", value=5)
    steps["decide-override"] = s.cmd("decide", "ana", "fire risk", decision="recall")
    steps["launch_campaign"] = s.cmd(
        "launch_campaign", "ana", "go", scope=[["cell", "M-100", "B-8", "brakes"]]
    )
    steps["mute"] = s.alert(alert("a4"))
    steps["silence"] = s.cmd("silence", "ana", "known issue", until=T0 + 30 * 86400)
    steps["lift-silence"] = s.cmd("silence", "ana", "over", until=T0)
    return steps


STORY = full_story()
