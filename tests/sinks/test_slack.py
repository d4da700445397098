"""Shared Slack plumbing: call_slack's retries against a real local HTTP server speaking the Slack
Web API, message text helpers, and request signatures.

How case threads use call_slack (replies and updates retried without duplicates, events queued
behind an outage delivered in order) is tested in test_slack_threads.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import urllib.request
from collections.abc import Coroutine
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from sinks.slack import (
    RetryPolicy,
    SlackPermanentError,
    call_slack,
    escape_mrkdwn,
    header_text,
    verify_slack_signature,
    web_client,
)
from tests.slack_fake import SlackFake

TOKEN = "xoxb-test"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


class RecordingSleep:
    """Stands in for asyncio.sleep: records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def post(fake: SlackFake, sleep: RecordingSleep, token: str = TOKEN, max_backoff_s: float = 30.0) -> Any:
    """One chat.postMessage through call_slack, as sinks.slack_threads makes it."""
    client = web_client(token, fake.base_url, 5)
    policy = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=max_backoff_s, sleep=sleep)
    return run(
        call_slack(
            lambda: client.chat_postMessage(channel="C1", text="hello"), what="test post", policy=policy
        )
    )


# --- message text ------------------------------------------------------------------------------


def test_escape_mrkdwn_neutralises_links_and_mentions() -> None:
    assert (
        escape_mrkdwn("<!channel> <http://evil|x> & co") == "&lt;!channel&gt; &lt;http://evil|x&gt; &amp; co"
    )
    assert escape_mrkdwn("&lt;") == "&amp;lt;"  # "&" first, so the data is shown exactly as it was


def test_header_text_is_cut_to_slacks_limit() -> None:
    assert header_text("M" * 150) == "M" * 150
    cut = header_text("M" * 300)
    assert len(cut) == 150
    assert cut.endswith("…")


# --- call_slack --------------------------------------------------------------------------------


def test_retries_through_500s_and_429_then_delivers_once(caplog: pytest.LogCaptureFixture) -> None:
    sleep = RecordingSleep()
    with SlackFake(token=TOKEN) as fake:
        fake.fail_next(2, status=500)
        fake.rate_limit_next(1, retry_after=7)
        resp = post(fake, sleep)
        statuses = [c.status for c in fake.calls]
        delivered = fake.delivered

    assert statuses == [500, 500, 429, 200]
    assert len(delivered) == 1
    assert resp["ts"] == delivered[0].response["ts"]
    assert sleep.delays == [0.5, 1.0, 7.0]  # exponential backoff, then the server's Retry-After
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert warnings[0].startswith("slack test post failed (attempt 1, http_500)")


def test_ratelimited_error_body_is_retried() -> None:
    sleep = RecordingSleep()
    with SlackFake(token=TOKEN) as fake:
        fake.error_next(2, "ratelimited")
        post(fake, sleep)
        assert [c.ok for c in fake.calls] == [False, False, True]

    assert sleep.delays == [0.5, 1.0]


def test_a_success_status_without_slacks_json_is_retried_not_given_up() -> None:
    # An HTML page with a 200 (a proxy in the way) was taken for a permanent error: the message was
    # recorded as failed and never sent again.
    sleep = RecordingSleep()
    with SlackFake(token=TOKEN) as fake:
        fake.garble_next(2)
        resp = post(fake, sleep)
        assert [c.ok for c in fake.calls] == [False, False, True]
        assert len(fake.delivered) == 1 and resp["ts"] == fake.delivered[0].response["ts"]
    assert sleep.delays == [0.5, 1.0]


def test_backoff_is_capped() -> None:
    sleep = RecordingSleep()
    with SlackFake(token=TOKEN) as fake:
        fake.fail_next(6, status=503)
        post(fake, sleep, max_backoff_s=2.0)
        assert len(fake.delivered) == 1

    assert sleep.delays == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "error", ["channel_not_found", "not_in_channel", "account_inactive", "invalid_blocks"]
)
def test_permanent_error_raises_without_retrying(error: str) -> None:
    sleep = RecordingSleep()
    with SlackFake(token=TOKEN) as fake:
        fake.error_next(1, error)
        with pytest.raises(SlackPermanentError) as info:
            post(fake, sleep)
        assert len(fake.calls) == 1

    assert info.value.error == error
    assert isinstance(info.value.__cause__, SlackApiError)
    assert sleep.delays == []


def test_bad_token_fails_with_invalid_auth() -> None:
    sleep = RecordingSleep()
    with SlackFake(token=TOKEN) as fake:
        with pytest.raises(SlackPermanentError) as info:
            post(fake, sleep, token="xoxb-wrong")
        [call] = fake.calls

    assert call.response == {"ok": False, "error": "invalid_auth"}
    assert info.value.error == "invalid_auth"
    assert sleep.delays == []


# --- the fake itself ---------------------------------------------------------------------------


def test_fake_supports_chat_update_and_form_bodies() -> None:
    with SlackFake(token=TOKEN) as fake:

        async def post_then_update() -> tuple[Any, Any]:
            client = AsyncWebClient(token=TOKEN, base_url=fake.base_url, retry_handlers=[])
            posted = await client.chat_postMessage(channel="C1", text="first")
            updated = await client.chat_update(channel="C1", ts=posted["ts"], text="second")
            return posted, updated

        posted, updated = run(post_then_update())
        assert (updated["ts"], updated["text"]) == (posted["ts"], "second")

        form = f"token={TOKEN}&channel=C1&text=hi&blocks=%5B%5D".encode()
        request = urllib.request.Request(fake.base_url + "chat.postMessage", data=form, method="POST")
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert json.load(resp)["ok"] is True
        assert fake.calls[-1].body == {"token": TOKEN, "channel": "C1", "text": "hi", "blocks": []}
        assert float(fake.calls[-1].response["ts"]) > float(posted["ts"])
        with pytest.raises(TimeoutError):
            fake.wait_for_calls(4, timeout=0.05)


# --- request signatures ------------------------------------------------------------------------

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BODY = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&command=%2Frecall&text=ack"
TS = "1531420618"


def sign(secret: str, ts: str, body: bytes) -> str:
    return "v0=" + hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()


def test_signature_valid_and_agrees_with_slack_sdk() -> None:
    signature = sign(SECRET, TS, BODY)
    assert signature == SignatureVerifier(SECRET).generate_signature(timestamp=TS, body=BODY)
    assert verify_slack_signature(SECRET, TS, BODY, signature, now=float(TS) + 10)


@pytest.mark.parametrize(
    ("secret", "body", "now", "ts"),
    [
        (SECRET, BODY + b"&admin=1", 1531420628.0, TS),  # tampered body
        ("wrong-secret", BODY, 1531420628.0, TS),  # signed with another secret
        (SECRET, BODY, 1531420618.0 + 301, TS),  # stale: replayed over 5 minutes later
        (SECRET, BODY, 1531420618.0, "not-a-number"),  # malformed timestamp
    ],
    ids=["tampered-body", "wrong-secret", "stale", "malformed-ts"],
)
def test_signature_rejected(secret: str, body: bytes, now: float, ts: str) -> None:
    signature = sign(SECRET, TS, BODY)
    assert not verify_slack_signature(secret, ts, body, signature, now=now)
