"""Recall cases in Slack: one thread per case in the quality channel.

The first event of a case posts the thread's root message (the case at a glance, with buttons to
acknowledge, take or open it); every later event posts one short reply in that thread and then
updates the root, so the channel always shows each case as it is now and the thread tells how it
got there. This module holds the delivery: the notifiers and what they need to find their own
posts again. What the root and the replies say is built by the pure functions of
:mod:`sinks.slack_messages`, kept apart so the wording is read and tested without Slack.

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
from typing import Any, Protocol, TextIO

from slack_sdk.web.async_slack_response import AsyncSlackResponse

from sinks.slack import (
    RetryPolicy,
    SlackAlreadyDone,
    SlackGaveUp,
    SlackPermanentError,
    call_slack,
    web_client,
)
from sinks.slack_messages import clip, root_message, thread_reply

__all__ = [
    "CASE_EVENT_METADATA",
    "ConsoleThreadNotifier",
    "SlackPermanentError",
    "SlackThreadNotifier",
    "ThreadNotifier",
    "ThreadRef",
    "make_thread_notifier",
    # Re-exported from sinks.slack_messages: callers that rendered messages from here still can.
    "root_message",
    "thread_reply",
]

log = logging.getLogger(__name__)

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
            f"[case {case['case_id']}] {clip(case['title'])}: {event['action']} by {clip(event['actor'])} "
            f"({event['from_state']} -> {event['to_state']}): {clip(event['reason'])}"
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
