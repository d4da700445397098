"""One case per signal: signal identities, deterministic case ids, and what an incoming alert does.

Why: detectors re-alert on the same signal (a new episode, another window, a replay after a crash).
Reviewers must see one case that accumulates evidence, not a new case per alert, and a signal that
was dismissed and comes back must re-open the case it was dismissed in, history included. So a case
id is a hash of the signal identity (no registry lookup, no counter), and ``CaseBook.on_alert``
decides, from the case events alone, whether an alert opens, adds evidence to, re-opens, or is muted
(by a running recall campaign that covers it, or by a silence a person set with an expiry).

Every muted alert is still recorded (a ``mute`` event on the signal's own case log, which may not
have been opened yet), so the audit trail shows what was suppressed and why.

>>> book = CaseBook()
>>> alert = {"alert_id": "a1", "model": "KT-100", "batch": "B05", "failure_mode": "heating_element"}
>>> [str(book.on_alert(a, at=t).outcome) for a, t in [(alert, 100.0), ({**alert, "alert_id": "a2"}, 200.0)]]
['opened', 'evidence']
>>> book.on_alert(alert, at=300.0).event is None  # the same alert delivered again
True
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from cases.lifecycle import TRANSITIONS, Action, Case, CaseEvent, Decision, State
from registry.units import CONTROL_CHARS, MAX_TEXT

KINDS: Final = {"cell": 3, "lot": 1}  # kind -> number of parts: (model, batch, failure_mode) | (lot_id,)

# The names the rest of the system takes (events in streams/records.py, scopes in registry/scope.py):
# a model or batch keys cells and topics as ``model|batch``, so neither holds a "|", and no name holds
# a control character. A failure mode is checked as events check it, by length only: an alert can
# only carry a failure mode some accepted event had, and such an alert must still get its case.
_KEY_NAME = re.compile(rf"[^|{CONTROL_CHARS}]{{1,{MAX_TEXT}}}")
_TEXT_NAME = re.compile(rf"[^{CONTROL_CHARS}]{{1,{MAX_TEXT}}}")
_MODE_NAME = re.compile(rf".{{1,{MAX_TEXT}}}", re.DOTALL)
_RULES: Final = {
    _KEY_NAME: f"1-{MAX_TEXT} printable characters without '|'",
    _TEXT_NAME: f"1-{MAX_TEXT} printable characters",
    _MODE_NAME: f"1-{MAX_TEXT} characters",
}
_PART_RULES: Final = {
    "cell": (("model", _KEY_NAME), ("batch", _KEY_NAME), ("failure_mode", _MODE_NAME)),
    "lot": (("lot", _TEXT_NAME),),
}


@dataclass(frozen=True, slots=True, order=True)
class SignalIdentity:
    """What a signal is about: a cell ``("cell", model, batch, failure_mode)`` or ``("lot", lot_id)``."""

    kind: str
    parts: tuple[str, ...]

    def __post_init__(self) -> None:
        if KINDS.get(self.kind) != len(self.parts) or not all(isinstance(p, str) and p for p in self.parts):
            raise ValueError(f"not a signal identity: {self.kind!r:.140} {self.parts!r:.400}")

    def checked(self) -> SignalIdentity:
        """This identity if its names are ones the rest of the system takes; else ValueError, saying which.

        Checked where an identity comes in (an alert or a command off Kafka), not on construction:
        cases stored before the check must still load. A longer name would open a case whose later
        reads (its scope, the API's filters) refuse it.

        >>> SignalIdentity.cell("M", "B|2", "fire").checked()
        Traceback (most recent call last):
        ...
        ValueError: batch must be 1-128 printable characters without '|', got 'B|2'
        """
        check_names(self.kind, self.parts)
        return self

    @classmethod
    def cell(cls, model: str, batch: str, failure_mode: str) -> SignalIdentity:
        return cls("cell", (model, batch, failure_mode))

    @classmethod
    def lot(cls, lot_id: str) -> SignalIdentity:
        return cls("lot", (lot_id,))

    @classmethod
    def from_alert(cls, fields: Mapping[str, Any]) -> SignalIdentity:
        """A supplier lot if the alert names one (``supplier_lot``), else its (model, batch, failure_mode)."""
        if fields.get("supplier_lot"):
            return cls.lot(str(fields["supplier_lot"]))
        try:
            return cls.cell(str(fields["model"]), str(fields["batch"]), str(fields["failure_mode"]))
        except KeyError as e:
            raise ValueError(
                f"an alert needs supplier_lot or model, batch and failure_mode; no {e}"
            ) from None

    def to_list(self) -> list[str]:
        """JSON form, as stored in event data: ``["cell", model, batch, mode]`` or ``["lot", lot_id]``."""
        return [self.kind, *self.parts]

    @classmethod
    def from_list(cls, items: object) -> SignalIdentity:
        """The identity of its JSON form; ValueError for anything else (an object, a number, a string)."""
        if not isinstance(items, list | tuple) or not items or not all(isinstance(p, str) for p in items):
            raise ValueError(
                f"a signal identity is a list of strings like ['cell', model, batch, failure_mode] or"
                f" ['lot', lot_id], got {items!r:.140}"
            )
        return cls(items[0], tuple(items[1:]))

    def __str__(self) -> str:
        return "/".join(self.to_list())


def check_names(kind: str, parts: Sequence[str]) -> None:
    """Raise ValueError, naming the part, unless ``parts`` are names the system takes for ``kind``.

    >>> check_names("cell", ("M", "", "fire"))
    Traceback (most recent call last):
    ...
    ValueError: batch must be 1-128 printable characters without '|', got ''
    """
    rules = _PART_RULES.get(kind)
    if rules is None or len(rules) != len(parts):
        raise ValueError(f"not a signal identity: {kind!r:.140} {parts!r:.400}")
    for (what, rule), value in zip(rules, parts, strict=True):
        if not isinstance(value, str) or rule.fullmatch(value) is None:
            raise ValueError(f"{what} must be {_RULES[rule]}, got {value!r:.140}")


def case_id_for(identity: SignalIdentity) -> str:
    """The id of the one case of ``identity``: a hash, the same in every process and every replay.

    >>> case_id_for(SignalIdentity.lot("heater-L02")) == case_id_for(SignalIdentity.lot("heater-L02"))
    True
    >>> case_id_for(SignalIdentity.cell("M", "B", "brakes"))[:5], len(case_id_for(SignalIdentity.lot("L")))
    ('case-', 25)
    """
    raw = "\x1f".join(identity.to_list()).encode()
    return "case-" + hashlib.blake2b(raw, digest_size=10).hexdigest()


@dataclass(frozen=True, slots=True)
class Silence:
    """A person's decision to mute alerts of one identity until ``until`` (epoch s), with a reason."""

    identity: SignalIdentity
    until: float
    reason: str
    actor: str

    def __post_init__(self) -> None:
        if not math.isfinite(self.until):
            raise ValueError("a silence needs a finite expiry (until)")
        if not self.reason.strip() or not self.actor.strip():
            raise ValueError("a silence needs who (actor) and why (reason)")

    def mutes(self, identity: SignalIdentity, at: float) -> bool:
        return identity == self.identity and at < self.until


class Outcome(StrEnum):
    OPENED = "opened"
    EVIDENCE = "evidence"
    REOPENED = "reopened"
    MUTED = "muted"
    DUPLICATE = "duplicate"  # this alert id is already on the case: nothing recorded


@dataclass(frozen=True, slots=True)
class AlertOutcome:
    """What ``on_alert`` did: the case concerned and the event to append (None for a duplicate)."""

    outcome: Outcome
    case_id: str
    identity: SignalIdentity
    event: CaseEvent | None


class CaseBook:
    """In-memory registry of cases by identity, rebuilt from (and extended by) case events.

    The book holds no state that is not in the events, except silences, which the caller keeps
    and passes in. Apply every event it returns (``on_alert``, ``act``...) to storage as well.
    """

    def __init__(
        self, events: Iterable[CaseEvent] = (), silences: Iterable[Silence] = (), actor: str = "recallwatch"
    ):
        self.actor = actor  # who system events (alert handling) are attributed to
        self.silences: list[Silence] = list(silences)
        self._cases: dict[str, Case] = {}
        self._identities: dict[str, SignalIdentity] = {}
        self._scopes: dict[str, frozenset[SignalIdentity]] = {}
        self._alert_ids: dict[str, set[str]] = {}
        self._commands: dict[str, tuple[str, int]] = {}  # command_id -> (case_id, seq of its first event)
        for event in sorted(events, key=lambda e: (e.case_id, e.seq)):
            self.apply(event)

    def cases(self) -> list[Case]:
        return list(self._cases.values())

    def case(self, case_id: str) -> Case | None:
        return self._cases.get(case_id)

    def case_for(self, identity: SignalIdentity) -> Case | None:
        return self._cases.get(case_id_for(identity))

    def identity_of(self, case_id: str) -> SignalIdentity:
        return self._identities[case_id]

    def campaign_scope(self, case_id: str) -> frozenset[SignalIdentity]:
        """The identities a case's campaign covers (its own identity included); empty if none launched."""
        return self._scopes.get(case_id, frozenset())

    def apply(self, event: CaseEvent) -> Case:
        """Add one event (from storage, or from a person's action); already-applied events are no-ops."""
        case = self._cases.get(event.case_id)
        if case is None:
            raw = event.data.get("identity")
            identity = SignalIdentity.from_list(raw) if isinstance(raw, Sequence) and raw else None
            if identity is None or case_id_for(identity) != event.case_id:
                raise ValueError(f"the first event of case {event.case_id} must carry its identity")
            updated = Case(event.case_id).apply(event)
            self._identities[event.case_id] = identity
        else:
            updated = case.apply(event)
        self._cases[event.case_id] = updated
        if event.action is Action.LAUNCH_CAMPAIGN:
            scope = {SignalIdentity.from_list(i) for i in event.data.get("scope", ())}
            self._scopes[event.case_id] = frozenset({self._identities[event.case_id], *scope})
        alert = event.data.get("alert")
        if isinstance(alert, Mapping) and alert.get("alert_id"):
            self._alert_ids.setdefault(event.case_id, set()).add(str(alert["alert_id"]))
        command_id = event.data.get("command_id")
        if command_id:
            self._commands.setdefault(str(command_id), (event.case_id, event.seq))
        if event.action is Action.SILENCE and updated is not case:
            self._silence_from(event)
        return updated

    def command_events(self, command_id: str) -> list[CaseEvent]:
        """The events a command already produced (empty if it never ran): commands are idempotent."""
        found = self._commands.get(command_id)
        if found is None:
            return []
        history = self._cases[found[0]].history
        return [e for e in history[found[1] - 1 :] if e.data.get("command_id") == command_id]

    def _silence_from(self, event: CaseEvent) -> None:
        """A silence event replaces any earlier silence of the same identity (``until`` <= at ends it)."""
        identity = self._identities[event.case_id]
        self.silences = [s for s in self.silences if s.identity != identity]
        until = float(event.data["until"])
        if until > event.at:
            self.silences.append(Silence(identity, until, event.reason, event.actor))

    def silence(
        self, identity: SignalIdentity, *, until: float, actor: str, at: float, reason: str, **data: Any
    ) -> CaseEvent:
        """Mute alerts of ``identity`` until ``until`` (an ``until`` not after ``at`` lifts the silence)."""
        Silence(identity, until, reason, actor)  # validates before anything is recorded
        payload = {"identity": identity.to_list(), "until": until, **data}
        return self.act(
            case_id_for(identity), Action.SILENCE, actor=actor, at=at, reason=reason, data=payload
        )

    def act(self, case_id: str, action: Action, **kwargs: Any) -> CaseEvent:
        """A person's action on a case (see ``Case.next_event`` for the keywords); returns the event."""
        case = self._cases.get(case_id) or Case(case_id)
        event = case.next_event(action, **kwargs)
        self.apply(event)
        return event

    def open_case(self, identity: SignalIdentity, *, actor: str, at: float, reason: str) -> CaseEvent:
        """Open the case of ``identity`` by hand (e.g. from a complaint, before any alert)."""
        data = {"identity": identity.to_list()}
        return self.act(case_id_for(identity), Action.OPEN, actor=actor, at=at, reason=reason, data=data)

    def launch_campaign(
        self, case_id: str, scope: Iterable[SignalIdentity], *, actor: str, at: float, reason: str
    ) -> CaseEvent:
        """Launch the campaign of a decided(recall) case; alerts of ``scope`` are muted while it runs."""
        data = {"scope": sorted(i.to_list() for i in scope)}
        return self.act(case_id, Action.LAUNCH_CAMPAIGN, actor=actor, at=at, reason=reason, data=data)

    def _mute_reason(self, identity: SignalIdentity, at: float) -> tuple[str, dict[str, Any]] | None:
        for cid in sorted(self._scopes):
            if self._cases[cid].state is State.CAMPAIGN and identity in self._scopes[cid]:
                return f"covered by the recall campaign of case {cid}", {
                    "muted_by": "campaign",
                    "campaign": cid,
                }
        for s in self.silences:
            if s.mutes(identity, at):
                why = f"silenced by {s.actor} until {s.until:.0f}: {s.reason}"
                return why, {
                    "muted_by": "silence",
                    "silence": {"actor": s.actor, "until": s.until, "reason": s.reason},
                }
        return None

    def holds_alert(self, alert_fields: Mapping[str, Any]) -> bool:
        """Whether an event on the alert's case already records it (by alert id)."""
        cid = case_id_for(SignalIdentity.from_alert(alert_fields))
        return self._holds(cid, str(alert_fields.get("alert_id") or ""))

    def _holds(self, case_id: str, alert_id: str) -> bool:
        return bool(alert_id) and alert_id in self._alert_ids.get(case_id, ())

    def on_alert(self, alert_fields: Mapping[str, Any], at: float) -> AlertOutcome:
        """Decide what an alert does to its case, record it as an event, and return what happened."""
        identity = SignalIdentity.from_alert(alert_fields)
        cid = case_id_for(identity)
        alert_id = str(alert_fields.get("alert_id") or "")
        if self._holds(cid, alert_id):
            return AlertOutcome(Outcome.DUPLICATE, cid, identity, None)
        case = self._cases.get(cid) or Case(cid)
        data: dict[str, Any] = {"identity": identity.to_list(), "alert": dict(alert_fields)}
        label = f"alert {alert_id}" if alert_id else "alert"
        muted = self._mute_reason(identity, at)
        if muted is not None:
            action, outcome, reason = Action.MUTE, Outcome.MUTED, f"{label} muted: {muted[0]}"
            data.update(muted[1])
        elif case.state is State.NEW:
            action, outcome, reason = Action.OPEN, Outcome.OPENED, f"{label}: new signal {identity}"
        elif (case.state, case.decision, Action.REOPEN) in TRANSITIONS:
            action, outcome = Action.REOPEN, Outcome.REOPENED
            reason = f"{label}: signal {identity} is back after the case was closed ({case.decision})"
        else:  # open, assessing, decided, or closed after a recall: the same case gets the evidence
            action, outcome, reason = Action.EVIDENCE, Outcome.EVIDENCE, f"{label}: more evidence"
        event = case.next_event(action, actor=self.actor, at=at, reason=reason, data=data)
        self.apply(event)
        return AlertOutcome(outcome, cid, identity, event)


def related_recalls(book: CaseBook, model: str, failure_mode: str, batch: str) -> int:
    """How many cases on ``model`` and ``failure_mode`` in other batches than ``batch`` were
    decided as recalls (the decision still in force).

    >>> book = CaseBook([])
    >>> case_id = book.open_case(SignalIdentity.cell("M", "B1", "fire"), actor="a", at=0, reason="r").case_id
    >>> related_recalls(book, "M", "fire", "B2"), related_recalls(book, "M", "fire", "B1")
    (0, 0)
    """
    return sum(
        1
        for case in book.cases()
        if case.decision is Decision.RECALL
        and (identity := book.identity_of(case.case_id)).kind == "cell"
        and identity.parts[0] == model
        and identity.parts[2] == failure_mode
        and identity.parts[1] != batch
    )
