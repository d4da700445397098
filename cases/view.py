"""What a case looks like now, derived from its log: people, scores, tasks, evidence, assessment.

Why derived and never stored: the log is the record an auditor reads, and two summaries of one log
must never disagree. Anything shown in the API or in Slack is computed here from ``Case.history``.

>>> from cases.identity import CaseBook, SignalIdentity
>>> from cases.risk import DEFAULT_MATRIX
>>> book = CaseBook()
>>> outcome = book.on_alert({"alert_id": "a1", "model": "M", "batch": "B", "failure_mode": "fire",
...                          "count": 9, "expected": 2.0}, at=100.0)
>>> view = view_of(book.case(outcome.case_id), SignalIdentity.cell("M", "B", "fire"),
...                DEFAULT_MATRIX)
>>> str(view.state), view.opened_at, [e["alert_id"] for e in view.evidence]
('open', 100.0, ['a1'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cases.identity import SignalIdentity
from cases.lifecycle import Action, Case, CaseEvent, Decision, State
from cases.risk import Assessment, RiskMatrix, Score
from cases.tasks import Task


@dataclass(frozen=True, slots=True)
class CaseView:
    case_id: str
    identity: SignalIdentity
    state: State
    decision: Decision | None
    opened_at: float | None  # the first open (a re-opened case keeps it)
    updated_at: float | None
    owner: str | None  # who took the case
    assignees: Mapping[str, str]  # person -> reviewer role
    acknowledged_by: tuple[str, ...]
    scores: tuple[Score, ...]
    assessment: Assessment
    tasks: Mapping[str, Task]
    escalated: frozenset[str]  # task ids already escalated
    evidence: tuple[Mapping[str, Any], ...]  # alerts and notes, oldest first
    muted: int  # alerts muted by a campaign or a silence
    campaign_scope: tuple[tuple[str, ...], ...]
    campaign_remedy: str | None
    allowed_actions: tuple[Action, ...]
    events: int = 0
    last: CaseEvent | None = field(default=None, compare=False)


def view_of(case: Case, identity: SignalIdentity, matrix: RiskMatrix) -> CaseView:
    """Fold ``case``'s history into a view; scores from an earlier assessment are kept but a
    reassessment (``reassess`` or ``reopen``) starts a fresh round, so only its scores count."""
    opened_at = owner = None
    assignees: dict[str, str] = {}
    acked: list[str] = []
    scores: list[Score] = []
    tasks: dict[str, Task] = {}
    escalated: set[str] = set()
    evidence: list[Mapping[str, Any]] = []
    muted = 0
    scope: tuple[tuple[str, ...], ...] = ()
    remedy: str | None = None
    for e in case.history:
        d = e.data
        if e.action is Action.OPEN and opened_at is None:
            opened_at = e.at
        if e.action in (Action.REASSESS, Action.REOPEN):
            scores = []
        if isinstance(d.get("alert"), Mapping) and e.action is not Action.MUTE:
            evidence.append({**d["alert"], "recorded_at": e.at, "action": str(e.action)})
        if e.action is Action.EVIDENCE and "note" in d:
            evidence.append(
                {
                    "note": d["note"],
                    "complaints": list(d.get("complaints", ())),
                    "by": e.actor,
                    "recorded_at": e.at,
                }
            )
        if e.action is Action.MUTE:
            muted += 1
        elif e.action is Action.ASSIGN:
            assignees[str(d["person"])] = str(d["role"])
            if d.get("owner"):
                owner = str(d["person"])
        elif e.action is Action.ACKNOWLEDGE and e.actor not in acked:
            acked.append(e.actor)
        elif e.action is Action.SCORE:
            scores.append(Score(str(d["dimension"]), str(d["role"]), e.actor, int(d["value"])))
        elif e.action is Action.ADD_TASK:
            t = d["task"]
            tasks[t["task_id"]] = Task(
                t["task_id"], t["title"], t["owner"], t["role"], float(t["due"]), case_id=case.case_id
            )
        elif e.action is Action.COMPLETE_TASK:
            tasks[str(d["task_id"])] = tasks[str(d["task_id"])].completed()
        elif e.action is Action.ESCALATE:
            escalated.add(str(d["task_id"]))
        elif e.action is Action.LAUNCH_CAMPAIGN:
            scope = tuple(tuple(i) for i in d.get("scope", ()))
            remedy = d.get("remedy")
    last = case.history[-1] if case.history else None
    return CaseView(
        case_id=case.case_id,
        identity=identity,
        state=case.state,
        decision=case.decision,
        opened_at=opened_at,
        updated_at=last.at if last else None,
        owner=owner,
        assignees=assignees,
        acknowledged_by=tuple(acked),
        scores=tuple(scores),
        assessment=matrix.assess(scores),
        tasks=tasks,
        escalated=frozenset(escalated),
        evidence=tuple(evidence),
        muted=muted,
        campaign_scope=scope,
        campaign_remedy=remedy,
        allowed_actions=case.allowed_actions(),
        events=case.seq,
        last=last,
    )


def view_to_dict(view: CaseView) -> dict[str, Any]:
    """The JSON shape of a case (the API's and the Slack message's source)."""
    a = view.assessment
    return {
        "case_id": view.case_id,
        "identity": view.identity.to_list(),
        "title": title_of(view.identity),
        "state": str(view.state),
        "decision": None if view.decision is None else str(view.decision),
        "opened_at": view.opened_at,
        "updated_at": view.updated_at,
        "owner": view.owner,
        "assignees": [{"person": p, "role": r} for p, r in sorted(view.assignees.items())],
        "acknowledged_by": list(view.acknowledged_by),
        "scores": [
            {"dimension": s.dimension, "role": s.role, "reviewer": s.reviewer, "value": s.value}
            for s in view.scores
        ],
        "assessment": {
            "dimensions": dict(a.dimensions),
            "missing": list(a.missing),
            "combined": a.combined,
            "recommendation": None if a.recommendation is None else str(a.recommendation),
            "override": a.override,
        },
        "tasks": [
            {
                "task_id": t.task_id,
                "title": t.title,
                "owner": t.owner,
                "role": t.role,
                "due": t.due,
                "done": t.done,
                "escalated": t.task_id in view.escalated,
            }
            for t in sorted(view.tasks.values(), key=lambda t: (t.due, t.task_id))
        ],
        "evidence": [dict(e) for e in view.evidence],
        "alerts": sum(1 for e in view.evidence if "alert_id" in e),
        "rank": latest_rank(view.evidence),
        "muted_alerts": view.muted,
        "campaign_scope": [list(i) for i in view.campaign_scope],
        "campaign_remedy": view.campaign_remedy,
        "allowed_actions": [str(a) for a in view.allowed_actions],
        "events": view.events,
    }


def latest_rank(evidence: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The rank of the latest alert the ranker scored (``{"score", "ranker"}``), None if none was.

    >>> latest_rank([{"alert_id": "a", "rank": {"score": 0.2, "ranker": "v1"}}, {"alert_id": "b"}])
    {'score': 0.2, 'ranker': 'v1'}
    """
    for e in reversed(evidence):
        rank = e.get("rank")
        if isinstance(rank, Mapping) and isinstance(rank.get("score"), int | float):
            return {"score": float(rank["score"]), "ranker": str(rank.get("ranker", ""))}
    return None


def title_of(identity: SignalIdentity) -> str:
    """A person's name for a signal: 'KT-100 batch B05, heating_element' or 'supplier lot L02'."""
    if identity.kind == "lot":
        return f"supplier lot {identity.parts[0]}"
    model, batch, mode = identity.parts
    return f"{model} batch {batch}, " + ("all failure modes" if mode == "*" else mode)
