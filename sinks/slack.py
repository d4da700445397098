"""Alert notification: Slack (chat.postMessage) with a console fallback.

Delivery never drops an alert. Transient failures (connection errors, HTTP 5xx, rate limits) are
retried forever with capped exponential backoff; permanent Slack errors (bad token, unknown
channel, rejected blocks) return a "failed" :class:`DeliveryResult` at once so the caller can
record it and fall back to the console instead of retrying something that can never succeed.
The retry loop (:func:`call_slack`) is shared with the case-thread notifier in sinks.slack_threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from core.alerts import ALL_MODES, Alert

log = logging.getLogger(__name__)

# Slack error codes that mean "try again later" even though the call was answered.
_RETRYABLE_SLACK_ERRORS = frozenset(
    {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
_HEADER_MAX_CHARS = 150  # Slack rejects longer header text with invalid_blocks, a permanent error.


@dataclass(frozen=True)
class DeliveryResult:
    alert_id: str
    channel: str
    status: str  # "delivered" | "failed" | "console"
    detail: str  # message ts when delivered, the error when failed
    delivered_at: float


class Notifier(Protocol):
    async def notify(self, alert: Alert) -> DeliveryResult: ...


# --- message content ---------------------------------------------------------------------------


def escape_mrkdwn(text: str) -> str:
    """Escape Slack's control characters so event data cannot inject links or mentions.

    >>> escape_mrkdwn("<!channel> & co")
    '&lt;!channel&gt; &amp; co'
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _failure_mode_label(alert: Alert) -> str:
    return "all modes" if alert.failure_mode == ALL_MODES else alert.failure_mode


def _opened_at_iso(alert: Alert) -> str:
    return datetime.fromtimestamp(alert.opened_at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ratio_label(alert: Alert) -> str:
    return f"{alert.ratio:.1f}x" if math.isfinite(alert.ratio) else "none expected"


def _facts(alert: Alert) -> list[tuple[str, str]]:
    """(label, raw value) pairs shared by the Slack and console renderings."""
    return [
        ("Failure mode", _failure_mode_label(alert)),
        (
            "Rate vs expected",
            f"{alert.count} in bucket vs {alert.expected:.1f} expected ({_ratio_label(alert)})\n"
            f"{alert.rate_per_1000:.2f} vs {alert.expected_rate_per_1000:.2f} per 1,000 units",
        ),
        ("Units at risk", f"{alert.units_in_field:,}"),
        ("Detector", f"{alert.detector} (score {alert.score:.2f}), config {alert.config_version}"),
        ("Opened at", _opened_at_iso(alert)),
    ]


def header_text(text: str) -> str:
    """``text`` cut to what a Block Kit header accepts (longer ones fail with invalid_blocks)."""
    return text if len(text) <= _HEADER_MAX_CHARS else text[: _HEADER_MAX_CHARS - 1] + "…"


def _title(alert: Alert) -> str:
    return f"Potential recall: {alert.model} batch {alert.batch}"


def build_alert_blocks(alert: Alert, alert_url: str) -> tuple[str, list[dict[str, Any]]]:
    """Fallback text and Block Kit blocks for ``alert``; pure, so it is tested without Slack."""
    title = header_text(_title(alert))
    fields = [
        {"type": "mrkdwn", "text": f"*{label}*\n{escape_mrkdwn(value)}"} for label, value in _facts(alert)
    ]
    blocks: list[dict[str, Any]] = [
        # plain_text is never parsed for links or mentions, so the header needs no escaping.
        {"type": "header", "text": {"type": "plain_text", "text": title, "emoji": False}},
        {"type": "section", "fields": fields},
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "action_id": "open_alert",
                    "text": {"type": "plain_text", "text": "Open in RecallWatch"},
                    "url": alert_url,
                    "value": alert.alert_id,
                }
            ],
        },
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"alert `{alert.alert_id}`"}]},
    ]
    # The fallback text shows in notifications and is parsed as mrkdwn, hence escaped too.
    text = (
        f"{escape_mrkdwn(_title(alert))} ({escape_mrkdwn(_failure_mode_label(alert))}): "
        f"{alert.count} vs {alert.expected:.1f} expected. <{alert_url}|Open in RecallWatch>"
    )
    return text, blocks


# --- Slack -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Retry:
    """Why a transient failure is retried; ``wait_s`` is the server-requested delay, if any."""

    reason: str
    wait_s: float | None = None


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
    if status == 429 or error in _RETRYABLE_SLACK_ERRORS:
        return error, _Retry(error, wait_s)
    if status >= 500 or status == 408:
        return error, _Retry(error, wait_s)
    return error, None


class SlackPermanentError(Exception):
    """A Slack call that can never succeed as sent (bad token, unknown channel, rejected blocks).

    ``thread`` is set by thread delivery when the failure came after the thread's root was posted,
    so the caller keeps that root instead of posting a second one next time.
    """

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error
        self.thread: Any = None


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff; ``sleep`` is injectable so tests do not wait."""

    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep


async def call_slack(
    call: Callable[[], Awaitable[AsyncSlackResponse]], *, what: str, policy: RetryPolicy
) -> AsyncSlackResponse:
    """Run one Slack API call until it succeeds, retrying transient failures forever.

    Retrying forever (never dropping) is the point: while Slack is down a caller that awaits its
    notifications one by one simply queues behind this call and delivers everything, in order,
    once Slack is back. Permanent errors raise :class:`SlackPermanentError` at once instead.
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
            retry = _Retry(f"{type(exc).__name__}: {exc}")
        delay = retry.wait_s if retry.wait_s is not None else backoff
        log.warning("slack %s failed (attempt %d, %s); retrying in %.1fs", what, attempt, retry.reason, delay)
        await policy.sleep(delay)
        backoff = min(backoff * 2, policy.max_backoff_s)


def web_client(token: str, base_url: str | None, timeout_s: int) -> AsyncWebClient:
    # retry_handlers=[] turns off slack-sdk's own (one-shot connection-error) retry so call_slack
    # alone decides what is retried. No session is passed: slack-sdk then opens and closes one per
    # call, so nothing is tied to (or leaks from) a particular event loop.
    return AsyncWebClient(
        token=token, base_url=base_url or AsyncWebClient.BASE_URL, timeout=timeout_s, retry_handlers=[]
    )


class SlackNotifier:
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
        now: Callable[[], float] = time.time,
        timeout_s: int = 30,
    ) -> None:
        self.channel = channel
        self.api_base_url = api_base_url.rstrip("/")
        self.max_backoff_s = max_backoff_s
        self.initial_backoff_s = initial_backoff_s
        self._policy = RetryPolicy(initial_backoff_s, max_backoff_s, sleep)
        self._now = now
        self.client = web_client(token, base_url, timeout_s)

    def alert_url(self, alert: Alert) -> str:
        return f"{self.api_base_url}/v1/alerts/{alert.alert_id}"

    async def notify(self, alert: Alert) -> DeliveryResult:
        text, blocks = build_alert_blocks(alert, self.alert_url(alert))
        try:
            resp = await call_slack(
                lambda: self.client.chat_postMessage(channel=self.channel, text=text, blocks=blocks),
                what=f"delivery of alert {alert.alert_id}",
                policy=self._policy,
            )
        except SlackPermanentError as exc:
            log.error("slack delivery of alert %s failed permanently: %s", alert.alert_id, exc.error)
            return self._result(alert, self.channel, "failed", exc.error)
        return self._result(alert, str(resp.get("channel", self.channel)), "delivered", str(resp["ts"]))

    def _result(self, alert: Alert, channel: str, status: str, detail: str) -> DeliveryResult:
        return DeliveryResult(alert.alert_id, channel, status, detail, self._now())


# --- console -----------------------------------------------------------------------------------


class ConsoleNotifier:
    """Prints alerts when Slack is not configured (or as the fallback when it failed)."""

    def __init__(self, stream: TextIO | None = None, now: Callable[[], float] = time.time) -> None:
        self._stream = stream
        self._now = now

    async def notify(self, alert: Alert) -> DeliveryResult:
        lines = [f"=== {_title(alert)} ==="]
        lines += [f"  {label:<17}{value.replace(chr(10), '; ')}" for label, value in _facts(alert)]
        lines.append(f"  {'Alert id':<17}{alert.alert_id}")
        # Resolved at call time, not import time, so pytest's capsys / redirected stdout work.
        print("\n".join(lines), file=self._stream or sys.stdout, flush=True)
        log.warning(
            "potential recall alert %s: %s (%s)", alert.alert_id, _title(alert), _failure_mode_label(alert)
        )
        return DeliveryResult(alert.alert_id, "console", "console", "printed", self._now())


def make_notifier(
    token: str | None, channel: str, base_url: str | None, api_base_url: str
) -> SlackNotifier | ConsoleNotifier:
    """Slack when a token is configured, else the console."""
    if token:
        return SlackNotifier(token, channel, base_url=base_url, api_base_url=api_base_url)
    return ConsoleNotifier()


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
    except (TypeError, ValueError):
        return False
    if abs(now - ts) > tolerance_s:
        return False
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode())
