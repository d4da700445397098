from __future__ import annotations

import pytest

from cases.tasks import Task, escalations, overdue

HOUR = 3_600.0

TASKS = [
    Task(
        "t-lab", "lab test of returned heaters", owner="bo", role="engineering", due=10 * HOUR, case_id="c1"
    ),
    Task("t-legal", "regulator notification draft", owner="cy", role="legal", due=5 * HOUR, case_id="c1"),
    Task("t-qa", "pull batch records", owner="ana", role="quality", due=20 * HOUR, case_id="c2"),
    Task("t-done", "call supplier", owner="ana", role="quality", due=1 * HOUR, done=True),
]


def test_overdue() -> None:
    assert overdue(TASKS, now=0.0) == []
    assert overdue(TASKS, now=5 * HOUR) == []  # due exactly now: not overdue yet
    assert [t.task_id for t in overdue(TASKS, now=12 * HOUR)] == ["t-legal", "t-lab"]  # most overdue first
    assert [t.task_id for t in overdue(TASKS, now=100 * HOUR)] == ["t-legal", "t-lab", "t-qa"]
    assert overdue([TASKS[1].completed()], now=100 * HOUR) == []


def test_escalation_waits_for_the_grace_period_and_goes_to_the_roles_target() -> None:
    assert escalations(TASKS, now=7 * HOUR, escalate_after_s=2 * HOUR) == []  # legal is 2 h late, not more
    found = escalations(TASKS, now=13 * HOUR, escalate_after_s=2 * HOUR)
    assert [(e.task_id, e.to, e.owner, e.case_id, e.overdue_s) for e in found] == [
        ("t-legal", "general_counsel", "cy", "c1", 8 * HOUR),
        ("t-lab", "engineering_manager", "bo", "c1", 3 * HOUR),
    ]


def test_each_task_is_escalated_once() -> None:
    escalated: set[str] = set()
    sent = []
    for hour in range(0, 48):
        batch = escalations(TASKS, now=hour * HOUR, escalate_after_s=HOUR, already_escalated=escalated)
        escalated |= {e.task_id for e in batch}
        sent += [(hour, e.task_id, e.to) for e in batch]
    assert sent == [
        (7, "t-legal", "general_counsel"),
        (12, "t-lab", "engineering_manager"),
        (22, "t-qa", "quality_manager"),
    ]
    twice = escalations([TASKS[0], TASKS[0]], now=100 * HOUR, escalate_after_s=0)
    assert [e.task_id for e in twice] == ["t-lab"]  # duplicates in one call: still once
    assert escalations([TASKS[1].completed()], now=100 * HOUR, escalate_after_s=0) == []


def test_targets_are_configurable_and_missing_ones_are_errors() -> None:
    targets = {"quality": "head_of_quality"}
    late = 100 * HOUR
    found = escalations(TASKS[2:], now=late, escalate_after_s=0, targets=targets)
    assert [(e.task_id, e.to) for e in found] == [("t-qa", "head_of_quality")]
    with pytest.raises(ValueError, match="no escalation target for role 'legal'"):
        escalations(TASKS, now=late, escalate_after_s=0, targets=targets)
    found = escalations(TASKS, now=late, escalate_after_s=0, targets=targets, default_target="case_lead")
    assert {e.task_id: e.to for e in found} == {
        "t-legal": "case_lead",
        "t-lab": "case_lead",
        "t-qa": "head_of_quality",
    }


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="escalate_after_s"):
        escalations(TASKS, now=0.0, escalate_after_s=-1)
    with pytest.raises(ValueError, match="owner"):
        Task("t", "x", owner="", role="quality", due=1.0)
    with pytest.raises(ValueError, match="due"):
        Task("t", "x", owner="ana", role="quality", due=float("nan"))
