"""Recall cases in Slack: one thread per case in the quality channel.

The first event of a case posts the thread's root message (the case at a glance, with buttons to
acknowledge, take or open it); every later event posts one short reply in that thread and then
updates the root, so the channel always shows each case as it is now and the thread tells how it
got there. Message content is built by pure functions from ``cases.view.view_to_dict`` and
``CaseEvent.to_dict`` dicts, so it is tested without Slack.

Every Slack call goes through :func:`sinks.slack.call_slack`: transient failures of posts and
updates are retried forever with capped backoff, so a caller that awaits ``deliver`` for each event
in turn queues behind an outage and delivers everything, in order, when Slack returns. Permanent
errors raise :class:`SlackPermanentError` for the caller to record.

Posting survives a crash between Slack's answer and the caller saving the thread: every root and
reply carries message metadata (:data:`CASE_EVENT_METADATA`: the case id, the event's seq and the
installation's public API URL, so another installation's messages never count), so before a case's
first root the channel's recent history is searched for a root already posted for it, and, when the
caller asks (``check_posted``) or a root was adopted, a thread's replies for the event's own reply.
A post that failed in a way Slack may have acted on is looked up the same way before it is retried.
Lookups only spare duplicates, so they never hold delivery up: a few tries, no waiting on a rate
limit, and a pause of all lookups after a rate limit or a refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

from slack_sdk.web.async_slack_response import AsyncSlackResponse

from sinks.slack import (
    RetryPolicy,
    SlackAlreadyDone,
    SlackGaveUp,
    SlackPermanentError,
    call_slack,
    escape_mrkdwn,
    header_text,
    web_client,
)

__all__ = [
    "CASE_EVENT_METADATA",
    "ConsoleThreadNotifier",
    "SlackPermanentError",
    "SlackThreadNotifier",
    "ThreadNotifier",
    "ThreadRef",
    "make_thread_notifier",
    "root_message",
    "thread_reply",
]

log = logging.getLogger(__name__)

# Caps on user text: a thread reply stays one short line, and a section field stays well under
# Slack's 2,000-character limit even after escaping (which can grow "&" five-fold).
_LINE_MAX_CHARS = 300
_FIELD_MAX_CHARS = 300

# The metadata event type of every message this module posts; its payload is {case_id, seq, source}
# where source is the installation's public API URL (what the case links point to).
CASE_EVENT_METADATA = "recallwatch_case_event"
# Clocks differ (ours stamps the case, Slack stamps the post), so history is read from a little
# before the case opened.
_LOOKBACK_MARGIN_S = 3600.0
_PAGE_SIZE = 200
# A lost root or reply was posted just before the crash, so it is among the newest messages; the
# bounds keep a busy channel or a long thread from costing unbounded calls (past them: post again).
_MAX_HISTORY_PAGES = 5
_MAX_REPLY_PAGES = 5
# A lookup that fails for a moment (network, 5xx) is tried this many times, then the post goes out.
_LOOKUP_ATTEMPTS = 3
# After a lookup is rate-limited or refused for good, none is tried for this long.
_LOOKUP_PAUSE_S = 600.0


@dataclass(frozen=True)
class ThreadRef:
    """Where a case's thread lives: the channel id Slack answered with and the root message's ts."""

    channel: str
    ts: str


class ThreadNotifier(Protocol):
    async def deliver(
        self,
        case: dict[str, Any],
        event: dict[str, Any],
        thread: ThreadRef | None,
        *,
        check_posted: bool = False,
    ) -> ThreadRef: ...

    def learn_channel(self, channel: str) -> None: ...


def case_event_metadata(case_id: str, seq: int, source: str) -> dict[str, Any]:
    """The metadata of a message posted for event ``seq`` of case ``case_id`` by installation ``source``."""
    payload = {"case_id": case_id, "seq": seq, "source": source}
    return {"event_type": CASE_EVENT_METADATA, "event_payload": payload}


def posted_seq(message: Mapping[str, Any], case_id: str, source: str) -> int | None:
    """The seq ``message`` was posted for, when its metadata says it belongs to case ``case_id``
    as posted by installation ``source``.

    Case ids and seqs are the same in every installation (a case id is a hash of its signal), so
    without the source a staging installation sharing the channel would pass for this one.
    """
    metadata = message.get("metadata")
    if not isinstance(metadata, Mapping) or metadata.get("event_type") != CASE_EVENT_METADATA:
        return None
    payload = metadata.get("event_payload")
    if not isinstance(payload, Mapping) or payload.get("case_id") != case_id:
        return None
    if payload.get("source") != source:
        return None
    seq = payload.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def is_channel_id(channel: str) -> bool:
    """Whether ``channel`` (a saved thread's) is a Slack channel id, not a name or a stand-in."""
    return channel not in ("", "none", "console") and not channel.startswith("#")


# --- text helpers ------------------------------------------------------------------------------


def _clip(value: Any, limit: int = _LINE_MAX_CHARS) -> str:
    """One line of at most ``limit`` characters: user text must not break a reply into many lines."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _esc(value: Any, limit: int = _LINE_MAX_CHARS) -> str:
    # Clip before escaping so an entity such as "&amp;" is never cut in half.
    return escape_mrkdwn(_clip(value, limit))


def _iso(ts: Any) -> str:
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return "—"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


# --- Slack -------------------------------------------------------------------------------------


class SlackThreadNotifier:
    """Posts each case's events to its own thread in ``channel`` and keeps the root up to date."""

    def __init__(
        self,
        token: str,
        channel: str,
        *,
        base_url: str | None = None,
        api_base_url: str = "http://127.0.0.1:8000",
        max_backoff_s: float = 30.0,
        initial_backoff_s: float = 0.5,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        timeout_s: int = 30,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.channel = channel
        self.api_base_url = api_base_url.rstrip("/")
        self._policy = RetryPolicy(initial_backoff_s, max_backoff_s, sleep)
        self.client = web_client(token, base_url, timeout_s)
        # conversations.history takes a channel id only: a "#name" is known by its id once a root
        # post in it has been answered, or once a saved thread has told it (learn_channel).
        self._channel_id: str | None = None if channel.startswith("#") else channel
        self._monotonic = monotonic
        self._lookups_paused_until: float | None = None
        self._warned: set[str] = set()

    def case_url(self, case_id: str) -> str:
        return f"{self.api_base_url}/v1/cases/{case_id}"

    def learn_channel(self, channel: str) -> None:
        """The id of a channel configured by name, from a thread saved before (a restart's best guess).

        Only a guess: if the configured channel changed since, the lookup finds nothing there and
        the root is posted, whose answer then tells the right id.
        """
        if self._channel_id is None and is_channel_id(channel):
            self._channel_id = channel

    async def deliver(
        self,
        case: dict[str, Any],
        event: dict[str, Any],
        thread: ThreadRef | None,
        *,
        check_posted: bool = False,
    ) -> ThreadRef:
        """Post ``event`` of ``case`` (the case as of that event); returns the case's thread.

        ``thread`` is what an earlier call returned for this case, None for its first event: then
        a root already posted for the case (by a process that died before saving it) is adopted,
        not posted again. ``check_posted`` says the caller cannot know whether this event's reply
        went out before a crash: the thread is searched for it first. Await calls one at a time per
        case: each returns only once Slack has everything. On a permanent error the raised
        SlackPermanentError carries the thread if its root was already posted.
        """
        posted_root = False
        try:
            if thread is not None:
                self.learn_channel(thread.channel)
            else:
                thread = await self._find_root(case, event)
                # An adopted root may have replies the crashed process posted: this one among them.
                check_posted = check_posted or thread is not None
            if thread is None:
                thread = await self._post_root(case, event)
                posted_root = True
            reply = thread_reply(case, event)
            look_for_reply = check_posted and not posted_root  # a root posted just now has no replies
            if reply is not None and not (look_for_reply and await self._replied(thread, event)):
                await self._reply(thread, reply, event)
            if not posted_root:  # a root posted just now already shows this event
                await self._update_root(thread, case)
        except SlackPermanentError as exc:
            exc.thread = thread
            log.error(
                "slack thread of case %s: event #%s failed: %s", case["case_id"], event["seq"], exc.error
            )
            raise
        return thread

    def _metadata(self, case_id: Any, seq: Any) -> dict[str, Any]:
        return case_event_metadata(str(case_id), int(seq), self.api_base_url)

    async def _call(
        self,
        what: str,
        call: Callable[[], Awaitable[AsyncSlackResponse]],
        recheck: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncSlackResponse:
        return await call_slack(call, what=what, policy=self._policy, recheck=recheck)

    async def _post_root(self, case: dict[str, Any], event: dict[str, Any]) -> ThreadRef:
        text, blocks = root_message(case, self.case_url(case["case_id"]))
        metadata = self._metadata(case["case_id"], event["seq"])
        found: list[ThreadRef] = []

        async def posted_after_all() -> bool:
            ref = await self._find_root(case, event)
            found.extend([ref] if ref is not None else [])
            return ref is not None

        try:
            resp = await self._call(
                f"root post of case {case['case_id']}",
                lambda: self.client.chat_postMessage(
                    channel=self.channel, text=text, blocks=blocks, metadata=metadata
                ),
                recheck=posted_after_all,
            )
        except SlackAlreadyDone:
            return found[-1]
        # chat.update needs the channel id Slack answers with, not a "#name" it accepted on post.
        channel = str(resp.get("channel") or self.channel)
        if is_channel_id(channel):
            self._channel_id = channel
        return ThreadRef(channel, str(resp["ts"]))

    async def _reply(self, thread: ThreadRef, text: str, event: dict[str, Any]) -> None:
        metadata = self._metadata(event["case_id"], event["seq"])
        with contextlib.suppress(SlackAlreadyDone):  # a failed attempt was posted after all
            await self._call(
                f"reply for event #{event['seq']} of case {event['case_id']}",
                lambda: self.client.chat_postMessage(
                    channel=thread.channel, thread_ts=thread.ts, text=text, metadata=metadata
                ),
                recheck=lambda: self._replied(thread, event),
            )

    async def _update_root(self, thread: ThreadRef, case: dict[str, Any]) -> None:
        text, blocks = root_message(case, self.case_url(case["case_id"]))
        # Without a metadata argument chat.update keeps the root's metadata, which the lookup needs.
        await self._call(
            f"root update of case {case['case_id']}",
            lambda: self.client.chat_update(channel=thread.channel, ts=thread.ts, text=text, blocks=blocks),
        )

    # --- finding what a crash left behind ------------------------------------------------------

    async def _find_root(self, case: dict[str, Any], event: dict[str, Any]) -> ThreadRef | None:
        """A root message already posted for the case in the channel's recent history, if any."""
        case_id = str(case["case_id"])
        channel = self._channel_id
        if channel is None:
            self._warn_once(
                "channel-name",
                "slack channel %s is configured by name; until a root post or a saved thread reveals its "
                "id, a root lost in a crash is posted again (configure the channel id to avoid it)",
                self.channel,
            )
            return None
        oldest = _read_from(case.get("opened_at") or event.get("at"))

        def page(cursor: str | None) -> Awaitable[AsyncSlackResponse]:
            return self.client.conversations_history(
                channel=channel,
                oldest=oldest,
                limit=_PAGE_SIZE,
                cursor=cursor,
                include_all_metadata=True,
            )

        def is_root(m: Mapping[str, Any]) -> bool:
            # History lists a root with replies with thread_ts == ts, and a reply never.
            ours = posted_seq(m, case_id, self.api_base_url) is not None
            return ours and m.get("thread_ts", m.get("ts")) == m.get("ts")

        found = await self._search(f"root lookup of case {case_id}", page, _MAX_HISTORY_PAGES, is_root)
        if found is None:
            return None
        log.info("slack thread of case %s: adopting root %s posted before a restart", case_id, found["ts"])
        return ThreadRef(channel, str(found["ts"]))

    async def _replied(self, thread: ThreadRef, event: dict[str, Any]) -> bool:
        """Whether the thread already holds the reply for ``event``."""
        case_id, seq = str(event["case_id"]), int(event["seq"])
        oldest = _read_from(event.get("at"))

        def page(cursor: str | None) -> Awaitable[AsyncSlackResponse]:
            return self.client.conversations_replies(
                channel=thread.channel,
                ts=thread.ts,
                oldest=oldest,
                limit=_PAGE_SIZE,
                cursor=cursor,
                include_all_metadata=True,
            )

        found = await self._search(
            f"reply lookup for event #{seq} of case {case_id}",
            page,
            _MAX_REPLY_PAGES,
            lambda m: m.get("ts") != thread.ts and posted_seq(m, case_id, self.api_base_url) == seq,
        )
        return found is not None

    async def _search(
        self,
        what: str,
        page: Callable[[str | None], Awaitable[AsyncSlackResponse]],
        max_pages: int,
        wanted: Callable[[Mapping[str, Any]], bool],
    ) -> Mapping[str, Any] | None:
        """The first wanted message in at most ``max_pages`` pages; None also when the lookup fails.

        A lookup only spares a duplicate, so it must never hold delivery up for long, nor lose a
        message: when it fails the caller posts (at worst a duplicate, as before lookups existed).
        Rate-limited (history may allow one call a minute) or refused for good (missing_scope,
        not_in_channel), lookups pause for a while rather than fail or wait for every new case.
        """
        if self._lookups_paused():
            return None
        cursor: str | None = None
        try:
            for _ in range(max_pages):
                resp = await call_slack(
                    functools.partial(page, cursor),
                    what=what,
                    policy=self._policy,
                    max_attempts=_LOOKUP_ATTEMPTS,
                )
                found = _first(resp.get("messages") or (), wanted)
                cursor = (resp.get("response_metadata") or {}).get("next_cursor")
                if found is not None or not cursor:
                    return found
        except SlackPermanentError as exc:
            self._pause_lookups(what, exc.error)
        except SlackGaveUp as exc:
            if exc.rate_limited:
                self._pause_lookups(what, exc.error)
            else:
                log.warning(
                    "slack %s failed (%s): posting without it, a crash may duplicate", what, exc.error
                )
        return None

    def _lookups_paused(self) -> bool:
        until = self._lookups_paused_until
        return until is not None and self._monotonic() < until

    def _pause_lookups(self, what: str, error: str) -> None:
        self._lookups_paused_until = self._monotonic() + _LOOKUP_PAUSE_S
        message = "slack %s refused (%s): posting without lookups for %.0f s, a crash may duplicate"
        # Warned once per error: a scope that stays missing must not warn every ten minutes.
        level = logging.INFO if error in self._warned else logging.WARNING
        self._warned.add(error)
        log.log(level, message, what, error, _LOOKUP_PAUSE_S)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)


def _read_from(at: Any) -> str | None:
    """The ``oldest`` bound of a lookup for what was posted at or after ``at`` (None: no bound)."""
    return f"{float(at) - _LOOKBACK_MARGIN_S:.6f}" if isinstance(at, int | float) else None


def _first(
    messages: Iterable[Mapping[str, Any]], wanted: Callable[[Mapping[str, Any]], bool]
) -> Mapping[str, Any] | None:
    return next((m for m in messages if isinstance(m, Mapping) and wanted(m)), None)


# --- console -----------------------------------------------------------------------------------


class ConsoleThreadNotifier:
    """Prints one line per case event when Slack is not configured."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def learn_channel(self, channel: str) -> None:
        """Nothing to learn: the console has no channels."""

    async def deliver(
        self,
        case: dict[str, Any],
        event: dict[str, Any],
        thread: ThreadRef | None,
        *,
        check_posted: bool = False,  # nothing to find on a console: every line is printed
    ) -> ThreadRef:
        line = (
            f"[case {case['case_id']}] {_clip(case['title'])}: {event['action']} by {_clip(event['actor'])} "
            f"({event['from_state']} -> {event['to_state']}): {_clip(event['reason'])}"
        )
        # Resolved at call time, not import time, so pytest's capsys / redirected stdout work.
        print(line, file=self._stream or sys.stdout, flush=True)
        return ThreadRef("console", str(case["case_id"]))


def make_thread_notifier(
    token: str | None, channel: str, base_url: str | None, api_base_url: str
) -> SlackThreadNotifier | ConsoleThreadNotifier:
    """Slack when a token is configured, else the console."""
    if token:
        return SlackThreadNotifier(token, channel, base_url=base_url, api_base_url=api_base_url)
    return ConsoleThreadNotifier()
