"""What a case's Slack thread says: the root message and the thread replies, as pure functions.

The root message shows a case at a glance (its signal, state, risk, people and latest evidence,
with buttons to acknowledge, take or open it); each later event of the case gets one short mrkdwn
reply in the thread. Both are built from ``cases.view.view_to_dict`` and ``CaseEvent.to_dict``
dicts and nothing else, so what a post says is read and tested without Slack; posting, retrying
and finding posts again after a crash live in :mod:`sinks.slack_threads`.

User text (titles, reasons, names) is clipped to one short line and escaped wherever Slack parses
mrkdwn, so no one can post a mention or a link through a case.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sinks.slack import escape_mrkdwn, header_text

__all__ = ["clip", "root_message", "thread_reply"]

# Caps on user text: a thread reply stays one short line, and a section field stays well under
# Slack's 2,000-character limit even after escaping (which can grow "&" five-fold).
_LINE_MAX_CHARS = 300
_FIELD_MAX_CHARS = 300


# --- text helpers ------------------------------------------------------------------------------


def clip(value: Any, limit: int = _LINE_MAX_CHARS) -> str:
    """One line of at most ``limit`` characters: user text must not break a reply into many lines."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _esc(value: Any, limit: int = _LINE_MAX_CHARS) -> str:
    # Clip before escaping so an entity such as "&amp;" is never cut in half.
    return escape_mrkdwn(clip(value, limit))


def _iso(ts: Any) -> str:
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return "—"
    try:
        return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        # Far outside datetime's years (or nan): show the number. A reply that raised here was
        # recorded as a failed delivery and never posted, for a value the case accepted.
        return _num(ts)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return "?" if value is None else str(value)


# --- root message ------------------------------------------------------------------------------


def _state_label(case: Mapping[str, Any]) -> str:
    decision = case.get("decision")
    return f"{case['state']} ({decision})" if decision else str(case["state"])


def _risk_label(assessment: Mapping[str, Any]) -> str:
    parts = []
    if assessment.get("combined") is not None:
        parts.append(f"combined {assessment['combined']:.2f}")
    if assessment.get("recommendation"):
        parts.append(f"recommend {assessment['recommendation']}")
    if assessment.get("override"):
        parts.append(str(assessment["override"]))
    if assessment.get("missing"):
        parts.append("missing: " + ", ".join(assessment["missing"]))
    return "; ".join(parts) or "not scored"


def _alert_summary(alert: Mapping[str, Any]) -> str:
    text = f"{_num(alert.get('count'))} vs {_num(alert.get('expected'))} expected"
    if alert.get("detector"):
        text += f", detector {alert['detector']}"
    if alert.get("config_version"):
        text += f", config {alert['config_version']}"
    return text


def _rank_label(rank: Any) -> str:
    if not isinstance(rank, Mapping) or not isinstance(rank.get("score"), int | float):
        return "not ranked"
    return f"{float(rank['score']):.0%} (ranker {rank.get('ranker', '?')})"


def _latest_alert(case: Mapping[str, Any]) -> Mapping[str, Any] | None:
    alerts = [e for e in case.get("evidence", ()) if "alert_id" in e]
    return alerts[-1] if alerts else None


def _latest_evidence(case: Mapping[str, Any]) -> str:
    alert = _latest_alert(case)
    return "no alerts yet" if alert is None else f"alert {alert['alert_id']}: {_alert_summary(alert)}"


def _positive(value: Any) -> float | None:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None
    )


def _signal_facts(case: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the latest alert says about the cell: its rate against the expected one, and the units
    in the field that share the risk. A detector without fleet sizes (the peer scan on complaint
    counts) has no rate or units: it says so rather than print zeros."""
    alert = _latest_alert(case)
    if alert is None:
        return []
    units = _positive(alert.get("units_in_field"))
    if units is None:
        rate = f"{_num(alert.get('count'))} incidents vs {_num(alert.get('expected'))} expected"
        return [("Rate vs expected", rate), ("Units at risk", "unknown (no fleet size)")]
    observed = float(alert.get("rate_per_1000") or 0.0)
    expected = float(alert.get("expected_rate_per_1000") or 0.0)
    rate = f"{observed:.2f} vs {expected:.2f} expected per 1,000 units"
    return [("Rate vs expected", rate), ("Units at risk", f"{units:,.0f}")]


def _people(case: Mapping[str, Any]) -> list[tuple[str, str]]:
    assignees = ", ".join(f"{a['person']} ({a['role']})" for a in case.get("assignees", ()))
    return [
        ("Owner", case.get("owner") or "nobody yet"),
        ("Assignees", assignees or "none"),
        ("Acknowledged by", ", ".join(case.get("acknowledged_by", ())) or "nobody yet"),
    ]


def _root_facts(case: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, raw value) pairs of the root message; at most 10, Slack's limit per section."""
    return [
        ("State", _state_label(case)),
        ("Risk", _risk_label(case.get("assessment", {}))),
        *_people(case),
        ("Alerts", f"{case.get('alerts', 0)} ({case.get('muted_alerts', 0)} muted)"),
        ("Recall likelihood", _rank_label(case.get("rank"))),
        ("Latest evidence", _latest_evidence(case)),
        ("Opened", _iso(case.get("opened_at"))),
        ("Updated", _iso(case.get("updated_at"))),
    ]


def _fields(facts: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {"type": "mrkdwn", "text": f"*{label}*\n{_esc(value, _FIELD_MAX_CHARS)}"} for label, value in facts
    ]


def _button(action_id: str, text: str, case_id: str, url: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": text},
        "value": case_id,
    }
    if url is not None:
        button["url"] = url
    return button


def root_message(case: dict[str, Any], case_url: str) -> tuple[str, list[dict[str, Any]]]:
    """Fallback text and Block Kit blocks for the root message of ``case`` (a view_to_dict dict)."""
    case_id = str(case["case_id"])
    signal_facts = _signal_facts(case)
    blocks: list[dict[str, Any]] = [
        # plain_text is never parsed for links or mentions, so the header needs no escaping.
        {"type": "header", "text": {"type": "plain_text", "text": header_text(str(case["title"]))}},
    ]
    # Two sections: Slack takes at most 10 fields in one, and the case's facts fill it.
    for facts in (signal_facts, _root_facts(case)):
        if facts:
            blocks.append({"type": "section", "fields": _fields(facts)})
    blocks += [
        {
            "type": "actions",
            "elements": [
                _button("case_acknowledge", "Acknowledge", case_id),
                _button("case_take", "Take case", case_id),
                _button("case_open", "Open in RecallWatch", case_id, url=case_url),
            ],
        },
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"case `{escape_mrkdwn(case_id)}`"}]},
    ]
    # The fallback text shows in notifications and is parsed as mrkdwn, hence escaped too.
    signal = "".join(f" {label}: {_esc(value)}." for label, value in signal_facts)
    state = _esc(_state_label(case))
    text = f"Recall case {_esc(case['title'])}: {state}.{signal} <{case_url}|Open in RecallWatch>"
    return text, blocks


# --- thread replies ----------------------------------------------------------------------------

_Reply = Callable[[Mapping[str, Any], Mapping[str, Any]], str | None]


def _by(event: Mapping[str, Any]) -> str:
    return f"*{_esc(event['actor'])}*"


def _change(event: Mapping[str, Any]) -> str:
    return f"{_esc(event['from_state'])} → {_esc(event['to_state'])}"


def _state_line(label: str) -> _Reply:
    """assess, close, reassess, reopen...: the state change, who did it and why."""
    return lambda _case, e: f"{label} by {_by(e)} ({_change(e)}): {_esc(e['reason'])}"


def _evidence(_case: Mapping[str, Any], e: Mapping[str, Any]) -> str:
    data = e.get("data", {})
    alert = data.get("alert")
    if isinstance(alert, Mapping):
        return f"New alert `{_esc(alert.get('alert_id', '?'))}`: {_esc(_alert_summary(alert))}"
    complaints = len(data.get("complaints") or ())
    extra = f" ({complaints} complaints)" if complaints else ""
    return f"Evidence from {_by(e)}{extra}: {_esc(data.get('note') or e['reason'])}"


def _assign(_case: Mapping[str, Any], e: Mapping[str, Any]) -> str:
    data = e.get("data", {})
    role = _esc(data.get("role", "?"))
    if data.get("owner"):
        return f"*{_esc(data.get('person', e['actor']))}* took the case (as {role})"
    return f"*{_esc(data.get('person', '?'))}* assigned as {role} by {_by(e)}"


def _score(case: Mapping[str, Any], e: Mapping[str, Any]) -> str:
    data = e.get("data", {})
    scored = f"{_esc(data.get('dimension', '?'))}={_esc(data.get('value', '?'))}"
    now = _esc(_risk_label(case.get("assessment", {})))
    return f"{_by(e)} scored {scored} (as {_esc(data.get('role', '?'))}). Risk now: {now}"


def _decide(_case: Mapping[str, Any], e: Mapping[str, Any]) -> str:
    data = e.get("data", {})
    recommended = (data.get("assessment") or {}).get("recommendation")
    hint = f" (recommended {_esc(recommended)})" if recommended else " (no recommendation yet)"
    return f"Decided *{_esc(data.get('decision', '?'))}*{hint} by {_by(e)}: {_esc(e['reason'])}"


def _campaign(_case: Mapping[str, Any], e: Mapping[str, Any]) -> str:
    scope = len(e.get("data", {}).get("scope") or ())
    return f"Recall campaign launched by {_by(e)} (scope: {scope} signals): {_esc(e['reason'])}"


def _mute(_case: Mapping[str, Any], e: Mapping[str, Any]) -> str:
    # The reason already says which alert and why (campaign or silence), as CaseBook wrote it.
    return f"Muted: {_esc(e['reason'])}"


def _silence(_case: Mapping[str, Any], e: Mapping[str, Any]) -> str:
    until = e.get("data", {}).get("until")
    if isinstance(until, int | float) and until <= e["at"]:
        return f"{_by(e)} lifted the silence: {_esc(e['reason'])}"
    return f"{_by(e)} silenced alerts until {_iso(until)}: {_esc(e['reason'])}"


def _task_title(case: Mapping[str, Any], task_id: Any) -> str:
    titles = {t["task_id"]: t["title"] for t in case.get("tasks", ())}
    return f"“{_esc(titles.get(task_id, task_id))}”"


def _add_task(_case: Mapping[str, Any], e: Mapping[str, Any]) -> str:
    task = e.get("data", {}).get("task") or {}
    who = f"{_esc(task.get('owner', '?'))} ({_esc(task.get('role', '?'))})"
    return f"{_by(e)} added task “{_esc(task.get('title', '?'))}” for {who}, due {_iso(task.get('due'))}"


def _complete_task(case: Mapping[str, Any], e: Mapping[str, Any]) -> str:
    return f"{_by(e)} completed task {_task_title(case, e.get('data', {}).get('task_id'))}"


def _escalate(case: Mapping[str, Any], e: Mapping[str, Any]) -> str:
    data = e.get("data", {})
    task = _task_title(case, data.get("task_id"))
    return f"Task {task} escalated to *{_esc(data.get('to', '?'))}*: {_esc(e['reason'])}"


_REPLIES: dict[str, _Reply] = {
    "open": lambda _case, _e: None,  # the root message is the open event's post
    "evidence": _evidence,
    "assign": _assign,
    "acknowledge": lambda _case, e: f"{_by(e)} acknowledged the case",
    "score": _score,
    "assess": _state_line("Assessment started"),
    "decide": _decide,
    "launch_campaign": _campaign,
    "close": _state_line("Closed"),
    "reassess": _state_line("Reassessment started"),
    "reopen": _state_line("Reopened"),
    "mute": _mute,
    "silence": _silence,
    "add_task": _add_task,
    "complete_task": _complete_task,
    "escalate": _escalate,
}


def thread_reply(case: dict[str, Any], event: dict[str, Any]) -> str | None:
    """The mrkdwn line posted in the case's thread for ``event`` (a CaseEvent.to_dict dict).

    None when the event gets no reply (``open``: the root message is its post). An action this
    module does not know still gets a generic line, so nothing that happened to a case is hidden.
    """
    reply = _REPLIES.get(str(event["action"]))
    if reply is None:
        return f"{_esc(event['action'])} by {_by(event)} ({_change(event)}): {_esc(event['reason'])}"
    return reply(case, event)
