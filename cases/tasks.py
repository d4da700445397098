"""Case tasks (owner, due time, done flag), overdue detection and one-time escalation.

Why: a recall case stalls when a task (a lab test, a legal review, a supplier query) quietly passes
its due time. Escalation to the owner's manager must happen reliably but only once per task, even
when the check runs every minute and is replayed after a restart, so ``escalations`` takes the set
of task ids already escalated and returns only the new ones. Time is always an argument.

>>> t = Task("t1", "lab test of returned heaters", owner="bo", role="engineering", due=1_000.0)
>>> [x.task_id for x in overdue([t], now=1_001.0)], overdue([t], now=999.0)
(['t1'], [])
>>> [(e.task_id, e.to) for e in escalations([t], now=5_000.0, escalate_after_s=3_600)]
[('t1', 'engineering_manager')]
>>> escalations([t], now=5_000.0, escalate_after_s=3_600, already_escalated={"t1"})
[]
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Final

DEFAULT_TARGETS: Final[Mapping[str, str]] = MappingProxyType(
    {"quality": "quality_manager", "engineering": "engineering_manager", "legal": "general_counsel"}
)
"""Who an overdue task goes to, by the owner's role."""


@dataclass(frozen=True, slots=True)
class Task:
    """A piece of work on a case; ``owner`` is a person, ``role`` picks the escalation target."""

    task_id: str
    title: str
    owner: str
    role: str
    due: float  # epoch seconds
    done: bool = False
    case_id: str = ""

    def __post_init__(self) -> None:
        if not (self.task_id and self.owner and self.role):
            raise ValueError("a task needs a task_id, an owner and the owner's role")
        if not math.isfinite(self.due):
            raise ValueError(f"a task needs a finite due time, got {self.due!r}")

    def completed(self) -> Task:
        return replace(self, done=True)

    def is_overdue(self, now: float) -> bool:
        """Not done and past its due time (a task due exactly now is not overdue yet)."""
        return not self.done and now > self.due


@dataclass(frozen=True, slots=True)
class Escalation:
    """Tell ``to`` that ``owner``'s task is ``overdue_s`` seconds late."""

    task_id: str
    case_id: str
    owner: str
    role: str
    to: str
    overdue_s: float


def overdue(tasks: Iterable[Task], now: float) -> list[Task]:
    """The open tasks past their due time, most overdue first."""
    return sorted((t for t in tasks if t.is_overdue(now)), key=lambda t: (t.due, t.task_id))


def escalations(
    tasks: Iterable[Task],
    now: float,
    escalate_after_s: float,
    *,
    targets: Mapping[str, str] = DEFAULT_TARGETS,
    already_escalated: Collection[str] = frozenset(),
    default_target: str | None = None,
) -> list[Escalation]:
    """Tasks overdue by more than ``escalate_after_s`` and not escalated before, with their target.

    Record the returned task ids and pass them back in ``already_escalated``: each task is escalated
    once. A role with no target goes to ``default_target``; without one that is an error, because a
    silently dropped escalation is worse than a failing check.
    """
    if not math.isfinite(escalate_after_s) or escalate_after_s < 0:
        raise ValueError(f"escalate_after_s must be >= 0, got {escalate_after_s!r}")
    out: list[Escalation] = []
    seen = set(already_escalated)
    for task in overdue(tasks, now):
        late = now - task.due
        if task.task_id in seen or late <= escalate_after_s:
            continue
        to = targets.get(task.role, default_target)
        if not to:
            raise ValueError(f"no escalation target for role {task.role!r} (task {task.task_id})")
        seen.add(task.task_id)
        out.append(Escalation(task.task_id, task.case_id, task.owner, task.role, to, late))
    return out
