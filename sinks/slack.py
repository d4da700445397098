"""Shared Slack plumbing: the API retry loop, error classification and request signing.

:func:`call_slack` runs one Web API call until it succeeds. Transient failures (connection errors,
HTTP 5xx and 408, rate limits, Slack's own "try again" error codes) are retried forever with capped
exponential backoff, honouring ``Retry-After``; permanent errors (bad token, unknown channel,
rejected blocks) raise :class:`SlackPermanentError` at once, since retrying cannot help.
:func:`web_client` builds the client it expects, :func:`escape_mrkdwn` and :func:`header_text` make
event data safe to show, and :func:`verify_slack_signature` checks that a request to our API (a button
click on a case thread) really came from Slack. The case threads in sinks.slack_threads and the
Slack routes in api.slack_routes are built on these.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

log = logging.getLogger(__name__)

# Slack error codes that mean "try again later" even though the call was answered.
_RATE_LIMIT_ERRORS = frozenset({"ratelimited", "rate_limited"})
_RETRYABLE_SLACK_ERRORS = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
# Failures after which Slack may have done what was asked all the same (it failed while doing it).
_AMBIGUOUS_SLACK_ERRORS = frozenset({"internal_error", "fatal_error"})
_HEADER_MAX_CHARS = 150  # Slack rejects longer header text with invalid_blocks, a permanent error.


# --- message text ------------------------------------------------------------------------------


def escape_mrkdwn(text: str) -> str:
    """Escape Slack's control characters so event data cannot inject links or mentions.

    >>> escape_mrkdwn("<!channel> & co")
    '&lt;!channel&gt; &amp; co'
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def header_text(text: str) -> str:
    """``text`` cut to what a Block Kit header accepts (longer ones fail with invalid_blocks)."""
    return text if len(text) <= _HEADER_MAX_CHARS else text[: _HEADER_MAX_CHARS - 1] + "…"


# --- Slack -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Retry:
    """Why a transient failure is retried; ``wait_s`` is the server-requested delay, if any."""

    reason: str
    wait_s: float | None = None
    rate_limited: bool = False
    ambiguous: bool = False  # the call may have taken effect: sending it again may do it twice


def _retry_after(headers: Any) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After")))
    except (AttributeError, TypeError, ValueError):
        return None


def _classify(exc: SlackApiError) -> tuple[str, _Retry | None]:
    """The error string of a failed API call, and a _Retry when it is worth retrying."""
    resp = exc.response
    # On unparseable bodies slack-sdk hands over the raw aiohttp response (``status``, not ``status_code``).
    status = int(getattr(resp, "status_code", None) or getattr(resp, "status", 0) or 0)
    data = getattr(resp, "data", None)
    error = data.get("error") if isinstance(data, dict) else None
    error = error or f"http_{status}"
    wait_s = _retry_after(getattr(resp, "headers", None))
    if status == 429 or error in _RATE_LIMIT_ERRORS:
        return error, _Retry(error, wait_s, rate_limited=True)
    if error in _RETRYABLE_SLACK_ERRORS:
        return error, _Retry(error, wait_s, ambiguous=error in _AMBIGUOUS_SLACK_ERRORS)
    if status >= 500 or status == 408:
        return error, _Retry(error, wait_s, ambiguous=status >= 500)
    if 200 <= status < 300 and not (isinstance(data, dict) and "ok" in data):
        # A success status without Slack's JSON (which always says "ok"; slack-sdk hands over {}
        # for a body it cannot parse): something in the way, a proxy or a gateway, answered, or
        # the answer was cut. Nothing says the call failed for good, and it may have been done:
        # retried as a transient error, looked up first where the caller can.
        return error, _Retry(f"{error} (not JSON)", wait_s, ambiguous=True)
    return error, None


def _connection_retry(exc: Exception) -> _Retry:
    # A refused connection never reached Slack; a reset or a timeout may have come after it acted.
    never_sent = isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError)
    return _Retry(f"{type(exc).__name__}: {exc}", ambiguous=not never_sent)


class SlackPermanentError(Exception):
    """A Slack call that can never succeed as sent (bad token, unknown channel, rejected blocks).

    ``thread`` is set by thread delivery when the failure came after the thread's root was posted,
    so the caller keeps that root instead of posting a second one next time.
    """

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error
        self.thread: Any = None


class SlackAlreadyDone(Exception):
    """A call's ``recheck`` found that a failed attempt took effect after all: no more attempts."""


class SlackGaveUp(Exception):
    """A transient failure that a bounded call (see :func:`call_slack`) did not wait out.

    ``rate_limited`` says Slack asked to slow down (HTTP 429): waiting is what it wants, so a
    caller that can do without the call should leave it alone for a while.
    """

    def __init__(self, error: str, *, rate_limited: bool) -> None:
        super().__init__(error)
        self.error = error
        self.rate_limited = rate_limited


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff; ``sleep`` is injectable so tests do not wait."""

    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep


async def call_slack(
    call: Callable[[], Awaitable[AsyncSlackResponse]],
    *,
    what: str,
    policy: RetryPolicy,
    max_attempts: int | None = None,
    recheck: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncSlackResponse:
    """Run one Slack API call until it succeeds, retrying transient failures forever.

    Retrying forever (never dropping) is the point: while Slack is down a caller that awaits its
    notifications one by one simply queues behind this call and delivers everything, in order,
    once Slack is back. Permanent errors raise :class:`SlackPermanentError` at once instead.

    With ``max_attempts`` the call is one the caller can do without (a lookup): it raises
    :class:`SlackGaveUp` once the attempts are spent, and at once when rate-limited, since Slack's
    Retry-After may be a minute.

    ``recheck`` guards a call that must not take effect twice (a post): after a failure that may
    have reached Slack (a dropped connection, a timeout, a 5xx, ``internal_error``) it is awaited
    before the next attempt, and when it says the call went through, :class:`SlackAlreadyDone` is
    raised instead of sending it again.
    """
    backoff = policy.initial_backoff_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except SlackApiError as exc:
            error, retry = _classify(exc)
            if retry is None:
                raise SlackPermanentError(error) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            retry = _connection_retry(exc)
        if max_attempts is not None and (retry.rate_limited or attempt >= max_attempts):
            raise SlackGaveUp(retry.reason, rate_limited=retry.rate_limited)
        delay = retry.wait_s if retry.wait_s is not None else backoff
        log.warning("slack %s failed (attempt %d, %s); retrying in %.1fs", what, attempt, retry.reason, delay)
        await policy.sleep(delay)
        backoff = min(backoff * 2, policy.max_backoff_s)
        if retry.ambiguous and recheck is not None and await recheck():
            raise SlackAlreadyDone(what)


def web_client(token: str, base_url: str | None, timeout_s: int) -> AsyncWebClient:
    # retry_handlers=[] turns off slack-sdk's own (one-shot connection-error) retry so call_slack
    # alone decides what is retried. No session is passed: slack-sdk then opens and closes one per
    # call, so nothing is tied to (or leaks from) a particular event loop.
    return AsyncWebClient(
        token=token, base_url=base_url or AsyncWebClient.BASE_URL, timeout=timeout_s, retry_handlers=[]
    )


# --- request signing ---------------------------------------------------------------------------


def verify_slack_signature(
    signing_secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    now: float,
    tolerance_s: int = 300,
) -> bool:
    """Check Slack's ``X-Slack-Signature`` (v0, HMAC-SHA256 over ``v0:{timestamp}:{body}``).

    Stale timestamps are rejected so a captured request cannot be replayed later.
    """
    try:
        ts = int(timestamp)
        stale = abs(now - ts) > tolerance_s  # OverflowError: an int too large to compare as a float
    except (TypeError, ValueError, OverflowError):
        return False
    if stale:
        return False
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode())
