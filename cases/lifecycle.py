"""The recall case state machine: an append-only log of audited events, folded into a state.

Why: a recall decision is regulated and argued over, so every step must say who took it, when and
why, and the current state must be reproducible from the log alone. The state is therefore never
stored: it is the fold of the case's events (``Case.replay``), which lets storage be append-only.
Each event carries a per-case sequence number, so replaying a log, or delivering an event twice, is
harmless: an event already applied is a no-op, a different event under a used number is an error.

The whole machine is one table, ``TRANSITIONS``: (state, decision in force, action) -> new state.
``evidence`` and ``mute`` rows are annotations (the state does not change). ``new`` is the state of
a case id with no ``open`` event yet: only muted alerts can have been recorded for it.

>>> case = Case("case-1")
>>> case, ev = case.act(Action.OPEN, actor="recallwatch", at=0.0, reason="alert a1")
>>> case, _ = case.act(Action.ASSESS, actor="ana", at=60.0, reason="triage")
>>> case, _ = case.act(Action.DECIDE, actor="ana", at=90.0, reason="3x baseline", decision=Decision.MONITOR)
>>> str(case.state), str(case.decision), case.seq
('decided', 'monitor', 3)
>>> Case.replay(case.history) == case == Case.replay([*case.history, ev])
True
>>> case.act(Action.LAUNCH_CAMPAIGN, actor="ana", at=99.0, reason="go")
Traceback (most recent call last):
...
cases.lifecycle.InvalidTransition: cannot launch_campaign a case in state decided (decision monitor); \
allowed actions: close, reassess, evidence, mute, silence, assign, acknowledge, add_task, \
complete_task, escalate
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final


class State(StrEnum):
    NEW = "new"
    OPEN = "open"
    ASSESSING = "assessing"
    DECIDED = "decided"
    CAMPAIGN = "campaign"
    CLOSED = "closed"


class Decision(StrEnum):
    RECALL = "recall"
    MONITOR = "monitor"
    DISMISS = "dismiss"


class Action(StrEnum):
    OPEN = "open"
    ASSESS = "assess"
    DECIDE = "decide"
    LAUNCH_CAMPAIGN = "launch_campaign"
    CLOSE = "close"
    REASSESS = "reassess"
    REOPEN = "reopen"
    EVIDENCE = "evidence"
    MUTE = "mute"
    ASSIGN = "assign"
    ACKNOWLEDGE = "acknowledge"
    SCORE = "score"
    ADD_TASK = "add_task"
    COMPLETE_TASK = "complete_task"
    ESCALATE = "escalate"
    SILENCE = "silence"


S, D, A = State, Decision, Action
_LIVE_NOTES = (A.ASSIGN, A.ACKNOWLEDGE, A.ADD_TASK)

CONTEXTS: Final[tuple[tuple[State, Decision | None], ...]] = (
    (S.NEW, None),
    (S.OPEN, None),
    (S.ASSESSING, None),
    *((S.DECIDED, d) for d in D),
    (S.CAMPAIGN, D.RECALL),
    *((S.CLOSED, d) for d in D),
)
"""Every reachable (state, decision in force) pair; the decision is None outside decided/campaign/closed."""

TRANSITIONS: Final[Mapping[tuple[State, Decision | None, Action], State]] = MappingProxyType(
    {
        (S.NEW, None, A.OPEN): S.OPEN,
        (S.OPEN, None, A.ASSESS): S.ASSESSING,
        (S.ASSESSING, None, A.DECIDE): S.DECIDED,  # the event names the decision: recall|monitor|dismiss
        (S.DECIDED, D.RECALL, A.LAUNCH_CAMPAIGN): S.CAMPAIGN,
        (S.CAMPAIGN, D.RECALL, A.CLOSE): S.CLOSED,
        (S.DECIDED, D.MONITOR, A.CLOSE): S.CLOSED,
        (S.DECIDED, D.DISMISS, A.CLOSE): S.CLOSED,
        (S.DECIDED, D.MONITOR, A.REASSESS): S.ASSESSING,
        (S.CLOSED, D.MONITOR, A.REOPEN): S.OPEN,
        (S.CLOSED, D.DISMISS, A.REOPEN): S.OPEN,
        # Annotations: the state stays. Evidence needs a case; a muted alert or a silence may precede
        # one. People are assigned and acknowledge while the case is live; scores belong to an
        # assessment; tasks are added while live and may still be completed or escalate after close.
        **{(s, d, A.EVIDENCE): s for s, d in CONTEXTS if s is not S.NEW},
        **{(s, d, A.MUTE): s for s, d in CONTEXTS},
        **{(s, d, A.SILENCE): s for s, d in CONTEXTS},
        **{(s, d, a): s for s, d in CONTEXTS if s not in (S.NEW, S.CLOSED) for a in _LIVE_NOTES},
        (S.ASSESSING, None, A.SCORE): S.ASSESSING,
        **{(s, d, a): s for s, d in CONTEXTS if s is not S.NEW for a in (A.COMPLETE_TASK, A.ESCALATE)},
    }
)
"""The complete state machine: (state, decision in force, action) -> new state. Anything else is invalid."""


def format_table() -> str:
    """The transition table as text, one row per allowed transition (for docs and review)."""
    rows = []
    for (state, decision, action), target in TRANSITIONS.items():
        where = f"{state}({decision})" if decision else str(state)
        rows.append(f"{where:<18} --{action:-<17}> {target}")
    return "\n".join(rows)


class InvalidTransition(ValueError):
    """An action the case's current state does not allow (or a decision missing / out of place)."""

    def __init__(
        self,
        state: State,
        decision: Decision | None,
        action: Action,
        allowed: Iterable[Action],
        detail: str = "",
    ):
        self.state, self.decision, self.action, self.allowed = state, decision, action, tuple(allowed)
        where = f"{state} (decision {decision})" if decision else str(state)
        why = detail or "allowed actions: " + (", ".join(self.allowed) or "none")
        super().__init__(f"cannot {action} a case in state {where}; {why}")


class IncompleteEvent(ValueError):
    """An event without who (actor), when (finite ``at``) or why (non-empty reason), or a bad id/seq."""


class ConflictingEvent(ValueError):
    """An event that does not fit the log: another case, a used seq with other content, or a gap."""


@dataclass(frozen=True, slots=True)
class CaseEvent:
    """One audited step of one case. ``data`` is frozen; ``decision`` lives in ``data`` on decide."""

    case_id: str
    seq: int
    at: float
    actor: str
    action: Action
    from_state: State
    to_state: State
    reason: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.case_id, str) or not self.case_id:
            raise IncompleteEvent("an event needs a case_id")
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 1:
            raise IncompleteEvent(f"seq must be an integer >= 1, got {self.seq!r}")
        if isinstance(self.at, bool) or not isinstance(self.at, int | float) or not math.isfinite(self.at):
            raise IncompleteEvent(f"an event needs when: a finite epoch time, got {self.at!r}")
        for name, what in (("actor", "who (actor)"), ("reason", "why (a non-empty reason)")):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise IncompleteEvent(f"an event needs {what}")
        object.__setattr__(self, "action", Action(self.action))
        object.__setattr__(self, "from_state", State(self.from_state))
        object.__setattr__(self, "to_state", State(self.to_state))
        object.__setattr__(self, "data", MappingProxyType(dict(self.data)))

    @property
    def decision(self) -> Decision | None:
        raw = self.data.get("decision")
        return None if raw is None else Decision(raw)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready row for append-only storage; ``CaseEvent.from_dict`` reads it back."""
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row.update(action=str(self.action), from_state=str(self.from_state), to_state=str(self.to_state))
        return row | {"data": dict(self.data)}

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> CaseEvent:
        names = [f.name for f in fields(cls) if f.name != "data"]
        return cls(**{n: row[n] for n in names}, data=dict(row.get("data") or {}))


@dataclass(frozen=True, slots=True)
class Case:
    """A case as of its last event. Never mutated: ``apply`` and ``act`` return a new Case."""

    case_id: str
    state: State = State.NEW
    decision: Decision | None = None
    history: tuple[CaseEvent, ...] = ()

    @property
    def seq(self) -> int:
        """The seq of the last applied event (0 for a case with no events)."""
        return len(self.history)

    @classmethod
    def replay(cls, events: Iterable[CaseEvent], case_id: str | None = None) -> Case:
        """Fold a log (any order, duplicates allowed) into the case it describes."""
        ordered = sorted(events, key=lambda e: e.seq)
        if case_id is None:
            if not ordered:
                raise ValueError("replay of an empty log needs a case_id")
            case_id = ordered[0].case_id
        case = cls(case_id)
        for event in ordered:
            case = case.apply(event)
        return case

    def allowed_actions(self) -> tuple[Action, ...]:
        return tuple(a for s, d, a in TRANSITIONS if s is self.state and d is self.decision)

    def _target(self, action: Action, decision: Decision | None) -> State:
        target = TRANSITIONS.get((self.state, self.decision, action))
        detail = ""
        if target is not None and action is Action.DECIDE and decision is None:
            detail = "decide needs a decision: " + ", ".join(Decision)
        elif target is not None and action is not Action.DECIDE and decision is not None:
            detail = f"only decide carries a decision, {action} does not"
        if target is None or detail:
            raise InvalidTransition(self.state, self.decision, action, self.allowed_actions(), detail)
        return target

    def next_event(
        self,
        action: Action,
        *,
        actor: str,
        at: float,
        reason: str,
        decision: Decision | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> CaseEvent:
        """The event that would take ``action`` now; raises InvalidTransition if the state forbids it."""
        payload = dict(data or {})
        if decision is not None:
            payload["decision"] = str(Decision(decision))
        raw = payload.get("decision")
        target = self._target(Action(action), None if raw is None else Decision(raw))
        return CaseEvent(self.case_id, self.seq + 1, at, actor, action, self.state, target, reason, payload)

    def apply(self, event: CaseEvent) -> Case:
        """This case after ``event``; the same case if ``event`` was already applied (idempotent)."""
        if event.case_id != self.case_id:
            raise ConflictingEvent(f"event of case {event.case_id} applied to case {self.case_id}")
        if event.seq <= self.seq:
            if self.history[event.seq - 1] == event:
                return self
            raise ConflictingEvent(f"case {self.case_id} already has a different event #{event.seq}")
        if event.seq != self.seq + 1:
            raise ConflictingEvent(f"case {self.case_id} is at #{self.seq}; event #{event.seq} leaves a gap")
        target = self._target(event.action, event.decision)
        if event.from_state is not self.state or event.to_state is not target:
            raise ConflictingEvent(
                f"event #{event.seq} claims {event.from_state} -> {event.to_state}, "
                f"but {event.action} takes case {self.case_id} from {self.state} to {target}"
            )
        if event.action is Action.DECIDE:
            decision = event.decision
        elif target in (State.NEW, State.OPEN, State.ASSESSING):
            decision = None
        else:
            decision = self.decision
        return Case(self.case_id, target, decision, (*self.history, event))

    def act(
        self,
        action: Action,
        *,
        actor: str,
        at: float,
        reason: str,
        decision: Decision | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> tuple[Case, CaseEvent]:
        """Take ``action``: the new case and the event to append to storage."""
        event = self.next_event(action, actor=actor, at=at, reason=reason, decision=decision, data=data)
        return self.apply(event), event
