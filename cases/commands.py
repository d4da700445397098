"""People's actions on cases as commands: checked, turned into case events, idempotent by command id.

Why commands: the API, Slack buttons and the worker's overdue-task check all change cases, and a
retried HTTP call, a double-clicked button or a replay after a crash must not act twice. Each command
carries an id; its events record it, and running a command whose events exist returns those events.
Rules a transition table cannot express live here: only an assigned reviewer scores, in the role
they were assigned in and only the dimensions the risk matrix lets that role score; a task exists
before it is completed; a decision records the assessment it was taken against.

>>> from cases.identity import CaseBook
>>> from cases.risk import DEFAULT_MATRIX
>>> book = CaseBook()
>>> alert = {"alert_id": "a1", "model": "M", "batch": "B", "failure_mode": "fire"}
>>> cid = book.on_alert(alert, at=1.0).case_id
>>> _ = execute(book, DEFAULT_MATRIX, Command("c1", cid, "assess", "ana", 2.0, "triage"))
>>> args = {"dimension": "severity", "value": 4}
>>> _ = execute(book, DEFAULT_MATRIX, Command("c2", cid, "score", "ana", 3.0, "burns", args))
Traceback (most recent call last):
...
cases.commands.CommandRefused: ana is not assigned to case ... and cannot score it; assign them first
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cases.identity import CaseBook, SignalIdentity, case_id_for
from cases.lifecycle import Action, CaseEvent, Decision
from cases.risk import DIMENSIONS, RiskMatrix, Score
from cases.tasks import escalations
from cases.view import view_of

REVIEWER_ROLES: Final = ("quality", "engineering", "legal")


class CommandRefused(ValueError):
    """A command that is well formed but not allowed now (who, what or the case's state)."""


class InvalidCommand(CommandRefused):
    """A command whose arguments have the wrong shape: carrying it out could only fail halfway."""


class UnknownCase(LookupError):
    """A command on a case id that has no events."""


@dataclass(frozen=True, slots=True)
class Command:
    command_id: str
    case_id: str
    kind: str
    actor: str
    at: float
    reason: str
    args: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "case_id": self.case_id,
            "kind": self.kind,
            "actor": self.actor,
            "at": self.at,
            "reason": self.reason,
            "args": dict(self.args),
        }

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> Command:
        """The command of its JSON form; ValueError for an unknown kind or arguments of the wrong shape."""
        if not isinstance(row, Mapping):
            raise ValueError(f"not a case command: a command is an object, got {row!r:.100}")
        args = row.get("args") or {}
        if not isinstance(args, Mapping):  # dict() would read a list of pairs, or fail in its own words
            raise ValueError(f"not a case command: args must be an object, got {args!r:.100}")
        try:
            cmd = cls(
                str(row["command_id"]),
                str(row["case_id"]),
                str(row["kind"]),
                str(row["actor"]),
                float(row["at"]),
                str(row["reason"]),
                dict(args),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a case command: {exc}") from None
        if cmd.kind not in HANDLERS:
            raise ValueError(f"unknown command {cmd.kind!r}; commands are {', '.join(HANDLERS)}")
        check_args(cmd.kind, cmd.args)
        return cmd


def execute(book: CaseBook, matrix: RiskMatrix, cmd: Command) -> list[CaseEvent]:
    """Run ``cmd`` against ``book``; returns the new events (or the earlier ones, if it already ran).

    Raises CommandRefused (InvalidCommand for arguments of the wrong shape), UnknownCase, or the
    lifecycle's InvalidTransition; nothing is recorded then.
    """
    done = book.command_events(cmd.command_id)
    if done:
        first, kind = done[0], done[0].data.get("command", cmd.kind)
        # An id names one command: reused for another case or another action, it is a client bug
        # that must not be answered with the first command's events as if it had run.
        if (cmd.kind != "open" and first.case_id != cmd.case_id) or kind != cmd.kind:
            used = f"command id {cmd.command_id} was already used for {kind} on {first.case_id}"
            raise CommandRefused(used)
        return done
    handler = HANDLERS.get(cmd.kind)
    if handler is None:
        raise CommandRefused(f"unknown command {cmd.kind!r}; commands are {', '.join(HANDLERS)}")
    check_args(cmd.kind, cmd.args)
    if cmd.kind != "open" and book.case(cmd.case_id) is None:
        raise UnknownCase(f"no case {cmd.case_id}")
    return handler(book, matrix, cmd)


def _act(book: CaseBook, cmd: Command, action: Action, **data: Any) -> list[CaseEvent]:
    decision = data.pop("decision", None)
    event = book.act(
        cmd.case_id,
        action,
        actor=cmd.actor,
        at=cmd.at,
        reason=cmd.reason,
        decision=decision,
        data={"command_id": cmd.command_id, "command": cmd.kind, **data},
    )
    return [event]


def _arg(cmd: Command, name: str, kind: type = str) -> Any:
    value = cmd.args.get(name)
    if value is None or (kind is str and not str(value).strip()):
        raise CommandRefused(f"{cmd.kind} needs {name}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise CommandRefused(f"{cmd.kind}: {name} must be {kind.__name__}, got {value!r}") from None


def _open(book: CaseBook, _m: RiskMatrix, cmd: Command) -> list[CaseEvent]:
    try:
        identity = SignalIdentity.from_list(cmd.args.get("identity") or [])
    except (ValueError, IndexError):
        raise CommandRefused("open needs identity: ['cell', model, batch, mode] or ['lot', lot_id]") from None
    data = {"identity": identity.to_list(), "command_id": cmd.command_id, "command": cmd.kind}
    event = book.act(
        case_id_for(identity), Action.OPEN, actor=cmd.actor, at=cmd.at, reason=cmd.reason, data=data
    )
    return [event]


def _assign(book: CaseBook, _m: RiskMatrix, cmd: Command) -> list[CaseEvent]:
    role = _arg(cmd, "role")
    if role not in REVIEWER_ROLES:
        raise CommandRefused(f"reviewer role must be one of {', '.join(REVIEWER_ROLES)}, got {role!r}")
    return _act(book, cmd, Action.ASSIGN, person=_arg(cmd, "person"), role=role, owner=False)


def _take(book: CaseBook, _m: RiskMatrix, cmd: Command) -> list[CaseEvent]:
    """The actor takes the case: they own it (and review it, as quality unless they say otherwise)."""
    role = str(cmd.args.get("role") or "quality")
    if role not in REVIEWER_ROLES:
        raise CommandRefused(f"reviewer role must be one of {', '.join(REVIEWER_ROLES)}, got {role!r}")
    return _act(book, cmd, Action.ASSIGN, person=cmd.actor, role=role, owner=True)


def _score(book: CaseBook, matrix: RiskMatrix, cmd: Command) -> list[CaseEvent]:
    view = view_of(book.case(cmd.case_id), book.identity_of(cmd.case_id), matrix)  # type: ignore[arg-type]
    role = view.assignees.get(cmd.actor)
    if role is None:
        raise CommandRefused(
            f"{cmd.actor} is not assigned to case {cmd.case_id} and cannot score it; assign them first"
        )
    dimension = _arg(cmd, "dimension")
    if dimension not in DIMENSIONS:
        raise CommandRefused(f"dimension must be one of {', '.join(DIMENSIONS)}, got {dimension!r}")
    value = _arg(cmd, "value", int)
    try:
        matrix.check(Score(dimension, role, cmd.actor, value))
    except ValueError as exc:
        raise CommandRefused(str(exc)) from None
    return _act(book, cmd, Action.SCORE, dimension=dimension, value=value, role=role)


def _decide(book: CaseBook, matrix: RiskMatrix, cmd: Command) -> list[CaseEvent]:
    try:
        decision = Decision(_arg(cmd, "decision"))
    except ValueError:
        raise CommandRefused(f"decision must be one of {', '.join(Decision)}") from None
    view = view_of(book.case(cmd.case_id), book.identity_of(cmd.case_id), matrix)  # type: ignore[arg-type]
    a = view.assessment
    # The decision is the people's; the record keeps what the matrix recommended when they took it.
    recommended = None if a.recommendation is None else str(a.recommendation)
    against = {
        "combined": a.combined,
        "recommendation": recommended,
        "missing": list(a.missing),
        "override": a.override,
    }
    return _act(book, cmd, Action.DECIDE, decision=decision, assessment=against)


REMEDIES = ("repair", "replace", "refund", "inspect")
"""What a campaign offers each affected unit's owner (shown by the unit lookup)."""


def _campaign(book: CaseBook, _m: RiskMatrix, cmd: Command) -> list[CaseEvent]:
    try:
        scope = [SignalIdentity.from_list(i) for i in cmd.args.get("scope") or ()]
    except (ValueError, IndexError, TypeError):
        raise CommandRefused("scope must be a list of identities like ['cell', model, batch, mode]") from None
    remedy = cmd.args.get("remedy", "repair")
    if remedy not in REMEDIES:
        raise CommandRefused(f"remedy must be one of {', '.join(REMEDIES)}, not {remedy!r}")
    data = {
        "scope": sorted(i.to_list() for i in scope),
        "remedy": remedy,
        "command_id": cmd.command_id,
        "command": cmd.kind,
    }
    event = book.act(
        cmd.case_id, Action.LAUNCH_CAMPAIGN, actor=cmd.actor, at=cmd.at, reason=cmd.reason, data=data
    )
    return [event]


def _silence(book: CaseBook, _m: RiskMatrix, cmd: Command) -> list[CaseEvent]:
    until = _arg(cmd, "until", float)
    if not math.isfinite(until):
        raise CommandRefused("a silence needs a finite expiry (until)")
    event = book.silence(
        book.identity_of(cmd.case_id),
        until=until,
        actor=cmd.actor,
        at=cmd.at,
        reason=cmd.reason,
        command_id=cmd.command_id,
        command=cmd.kind,
    )
    return [event]


def task_id_for(command_id: str) -> str:
    return "task-" + hashlib.blake2b(command_id.encode(), digest_size=6).hexdigest()


def _add_task(book: CaseBook, _m: RiskMatrix, cmd: Command) -> list[CaseEvent]:
    due = _arg(cmd, "due", float)
    if not math.isfinite(due):
        raise CommandRefused("a task needs a finite due time")
    task = {
        "task_id": task_id_for(cmd.command_id),
        "title": _arg(cmd, "title"),
        "owner": _arg(cmd, "owner"),
        "role": _arg(cmd, "role"),
        "due": due,
    }
    return _act(book, cmd, Action.ADD_TASK, task=task)


def _complete_task(book: CaseBook, matrix: RiskMatrix, cmd: Command) -> list[CaseEvent]:
    task_id = _arg(cmd, "task_id")
    view = view_of(book.case(cmd.case_id), book.identity_of(cmd.case_id), matrix)  # type: ignore[arg-type]
    task = view.tasks.get(task_id)
    if task is None:
        raise CommandRefused(f"case {cmd.case_id} has no task {task_id}")
    if task.done:
        raise CommandRefused(f"task {task_id} is already done")
    return _act(book, cmd, Action.COMPLETE_TASK, task_id=task_id)


def _escalate(book: CaseBook, matrix: RiskMatrix, cmd: Command) -> list[CaseEvent]:
    task_id = _arg(cmd, "task_id")
    view = view_of(book.case(cmd.case_id), book.identity_of(cmd.case_id), matrix)  # type: ignore[arg-type]
    task = view.tasks.get(task_id)
    if task is None or task.done or task_id in view.escalated:
        raise CommandRefused(f"task {task_id} of case {cmd.case_id} is not open and unescalated")
    return _act(
        book, cmd, Action.ESCALATE, task_id=task_id, to=_arg(cmd, "to"), overdue_s=cmd.args.get("overdue_s")
    )


def _evidence(book: CaseBook, _m: RiskMatrix, cmd: Command) -> list[CaseEvent]:
    complaints = [str(c) for c in cmd.args.get("complaints") or ()]
    return _act(book, cmd, Action.EVIDENCE, note=_arg(cmd, "note"), complaints=complaints)


def _plain(action: Action) -> Callable[[CaseBook, RiskMatrix, Command], list[CaseEvent]]:
    return lambda book, _m, cmd: _act(book, cmd, action)


HANDLERS: Final[Mapping[str, Callable[[CaseBook, RiskMatrix, Command], list[CaseEvent]]]] = {
    "open": _open,
    "assess": _plain(Action.ASSESS),
    "assign": _assign,
    "take": _take,
    "acknowledge": _plain(Action.ACKNOWLEDGE),
    "score": _score,
    "decide": _decide,
    "launch_campaign": _campaign,
    "close": _plain(Action.CLOSE),
    "reassess": _plain(Action.REASSESS),
    "reopen": _plain(Action.REOPEN),
    "silence": _silence,
    "add_task": _add_task,
    "complete_task": _complete_task,
    "evidence": _evidence,
    "escalate": _escalate,
}
"""Command kind -> handler. The API's role checks name these kinds."""


# The shape of each argument a handler reads, by command kind. A handler refuses a missing argument
# by name, but one of the wrong type (complaints of 5, a scope of [{}]) made it fail with a bare
# TypeError or KeyError that nobody expected: checked here, it is refused before anything is done.
# A null counts as absent; arguments no handler reads are ignored.
def _text(value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r:.100}")


def _whole(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a whole number, got {value!r:.100}")


def _number(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {value!r:.100}")


def _texts(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of strings, got {value!r:.100}")


def _identity(value: Any) -> None:
    SignalIdentity.from_list(value).checked()


def _identities(value: Any) -> None:
    if not isinstance(value, list):
        raise ValueError(f"must be a list of signal identities, got {value!r:.100}")
    for item in value:
        _identity(item)


ARG_SHAPES: Final[Mapping[str, Mapping[str, Callable[[Any], None]]]] = {
    "open": {"identity": _identity},
    "assign": {"person": _text, "role": _text},
    "take": {"role": _text},
    "score": {"dimension": _text, "value": _whole},
    "decide": {"decision": _text},
    "launch_campaign": {"scope": _identities, "remedy": _text},
    "silence": {"until": _number},
    "add_task": {"title": _text, "owner": _text, "role": _text, "due": _number},
    "complete_task": {"task_id": _text},
    "escalate": {"task_id": _text, "to": _text, "overdue_s": _number},
    "evidence": {"note": _text, "complaints": _texts},
}
"""Command kind -> argument name -> its check (raises ValueError saying what is wrong)."""


def check_args(kind: str, args: Mapping[str, Any]) -> None:
    """Raise InvalidCommand if an argument of a ``kind`` command has the wrong shape."""
    for name, check in ARG_SHAPES.get(kind, {}).items():
        value = args.get(name)
        if value is None:
            continue
        try:
            check(value)
        except ValueError as exc:
            raise InvalidCommand(f"{kind}: {name}: {exc}") from None


def overdue_commands(
    book: CaseBook, matrix: RiskMatrix, now: float, escalate_after_s: float, actor: str = "recallwatch"
) -> list[Command]:
    """An ``escalate`` command per task overdue by more than ``escalate_after_s`` and not yet escalated.

    The command id is fixed per task, so the check may run on every worker, every minute, and after
    a restart: each task is escalated once.
    """
    out: list[Command] = []
    for case in book.cases():
        if not case.history:
            continue
        view = view_of(case, book.identity_of(case.case_id), matrix)
        found = escalations(
            view.tasks.values(), now, escalate_after_s, already_escalated=view.escalated,
            default_target="quality_manager",
        )  # fmt: skip
        for esc in found:
            reason = f"task {esc.task_id} of {esc.owner} is {esc.overdue_s / 3600:.1f} h overdue"
            args = {"task_id": esc.task_id, "to": esc.to, "overdue_s": esc.overdue_s}
            out.append(Command(f"escalate-{esc.task_id}", case.case_id, "escalate", actor, now, reason, args))
    return out
