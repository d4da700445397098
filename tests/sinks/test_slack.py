"""Slack and console notifiers, against a real local HTTP server speaking the Slack Web API."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import logging
import urllib.request
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from core.alerts import ALL_MODES, Alert
from sinks.slack import (
    ConsoleNotifier,
    DeliveryResult,
    SlackNotifier,
    build_alert_blocks,
    make_notifier,
    verify_slack_signature,
)
from tests.slack_fake import SlackFake

TOKEN = "xoxb-test"
URL = "http://rw.example/v1/alerts/a1"


def make_alert(**overrides: Any) -> Alert:
    values: dict[str, Any] = {
        "alert_id": "a1",
        "model": "M-100",
        "batch": "B-7",
        "failure_mode": "brakes",
        "opened_at": 1704164645.0,  # 2024-01-02T03:04:05Z
        "detector": "cusum",
        "detector_params": {"k": 0.5},
        "config_version": "v3",
        "score": 7.1,
        "count": 12,
        "expected": 3.0,
        "units_in_field": 10000,
        "rate_per_1000": 1.2,
        "expected_rate_per_1000": 0.3,
        "window_s": 86400,
    }
    values.update(overrides)
    return Alert(**values)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


class RecordingSleep:
    """Stands in for asyncio.sleep: records delays, optionally acts on the n-th sleep."""

    def __init__(self, on_sleep: Callable[[int], None] | None = None) -> None:
        self.delays: list[float] = []
        self._on_sleep = on_sleep

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self._on_sleep is not None:
            self._on_sleep(len(self.delays))
        await asyncio.sleep(0)


def notifier(fake: SlackFake, sleep: RecordingSleep, token: str = TOKEN, **kwargs: Any) -> SlackNotifier:
    return SlackNotifier(
        token,
        "#recalls",
        base_url=fake.base_url,
        api_base_url="http://rw.example",
        sleep=sleep,
        now=lambda: 1234.5,
        **kwargs,
    )


def mrkdwn_texts(blocks: list[dict[str, Any]]) -> list[str]:
    fields = [f["text"] for b in blocks for f in b.get("fields", [])]
    return fields + [e["text"] for b in blocks if b["type"] == "context" for e in b["elements"]]


# --- blocks ------------------------------------------------------------------------------------


def test_blocks_show_the_alert_facts_and_link() -> None:
    text, blocks = build_alert_blocks(make_alert(), URL)

    assert blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Potential recall: M-100 batch B-7", "emoji": False},
    }
    fields = "\n".join(mrkdwn_texts(blocks))
    for expected in (
        "brakes",
        "12 in bucket vs 3.0 expected (4.0x)",
        "1.20 vs 0.30 per 1,000 units",
        "10,000",
        "cusum (score 7.10), config v3",
        "2024-01-02T03:04:05Z",
    ):
        assert expected in fields
    [button] = [e for b in blocks if b["type"] == "actions" for e in b["elements"]]
    assert button["url"] == URL
    assert button["text"]["text"] == "Open in RecallWatch"
    assert text.startswith("Potential recall: M-100 batch B-7 (brakes)")
    assert f"<{URL}|Open in RecallWatch>" in text


def test_blocks_label_the_aggregate_as_all_modes() -> None:
    text, blocks = build_alert_blocks(make_alert(failure_mode=ALL_MODES), URL)
    assert "*Failure mode*\nall modes" in mrkdwn_texts(blocks)
    assert "(all modes)" in text


def test_blocks_handle_nothing_expected() -> None:
    _, blocks = build_alert_blocks(make_alert(expected=0.0), URL)
    assert any("(none expected)" in t for t in mrkdwn_texts(blocks))


def test_blocks_escape_event_data() -> None:
    alert = make_alert(model="<!channel>", batch="A&B", failure_mode="<http://evil|x>")
    text, blocks = build_alert_blocks(alert, URL)

    joined = "\n".join(mrkdwn_texts(blocks))
    assert "&lt;http://evil|x&gt;" in joined
    assert "<" not in joined and ">" not in joined
    assert text.startswith("Potential recall: &lt;!channel&gt; batch A&amp;B (&lt;http://evil|x&gt;)")
    assert text.count("<") == 1  # only our own link
    # The header is plain_text, which Slack never parses, so it shows the data as is.
    assert blocks[0]["text"]["text"] == "Potential recall: <!channel> batch A&B"


def test_header_is_truncated_to_slacks_limit() -> None:
    _, blocks = build_alert_blocks(make_alert(model="M" * 300), URL)
    assert len(blocks[0]["text"]["text"]) == 150


# --- Slack delivery ----------------------------------------------------------------------------


def test_notify_posts_the_alert() -> None:
    alert = make_alert()
    with SlackFake(token=TOKEN) as fake:
        result = run(notifier(fake, RecordingSleep()).notify(alert))
        [call] = fake.calls

    assert call.method == "chat.postMessage"
    text, blocks = build_alert_blocks(alert, "http://rw.example/v1/alerts/a1")
    assert call.body["channel"] == "#recalls"
    assert call.body["text"] == text
    assert call.body["blocks"] == blocks
    assert result == DeliveryResult("a1", "#recalls", "delivered", call.response["ts"], 1234.5)


def test_retries_through_500s_and_429_then_delivers_once() -> None:
    sleep = RecordingSleep()
    with SlackFake(token=TOKEN) as fake:
        fake.fail_next(2, status=500)
        fake.rate_limit_next(1, retry_after=7)
        result = run(notifier(fake, sleep).notify(make_alert()))
        statuses = [c.status for c in fake.calls]
        delivered = fake.delivered

    assert result.status == "delivered"
    assert statuses == [500, 500, 429, 200]
    assert len(delivered) == 1
    assert sleep.delays == [0.5, 1.0, 7.0]  # exponential backoff, then the server's Retry-After


def test_ratelimited_error_body_is_retried() -> None:
    sleep = RecordingSleep()
    with SlackFake(token=TOKEN) as fake:
        fake.error_next(2, "ratelimited")
        result = run(notifier(fake, sleep).notify(make_alert()))
        assert len(fake.calls) == 3

    assert result.status == "delivered"
    assert sleep.delays == [0.5, 1.0]


def test_backoff_is_capped() -> None:
    sleep = RecordingSleep()
    with SlackFake(token=TOKEN) as fake:
        fake.fail_next(6, status=503)
        result = run(notifier(fake, sleep, max_backoff_s=2.0).notify(make_alert()))

    assert result.status == "delivered"
    assert sleep.delays == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "error", ["channel_not_found", "not_in_channel", "account_inactive", "invalid_blocks"]
)
def test_permanent_error_fails_without_retrying(error: str, caplog: pytest.LogCaptureFixture) -> None:
    sleep = RecordingSleep()
    with SlackFake(token=TOKEN) as fake:
        fake.error_next(1, error)
        result = run(notifier(fake, sleep).notify(make_alert()))
        assert len(fake.calls) == 1

    assert result == DeliveryResult("a1", "#recalls", "failed", error, 1234.5)
    assert sleep.delays == []
    assert any(r.levelno == logging.ERROR and error in r.getMessage() for r in caplog.records)


def test_bad_token_fails_with_invalid_auth() -> None:
    sleep = RecordingSleep()
    with SlackFake(token=TOKEN) as fake:
        result = run(notifier(fake, sleep, token="xoxb-wrong").notify(make_alert()))
        [call] = fake.calls

    assert call.response == {"ok": False, "error": "invalid_auth"}
    assert (result.status, result.detail) == ("failed", "invalid_auth")
    assert sleep.delays == []


def test_alerts_notified_while_slack_is_down_arrive_in_order_after_it_returns() -> None:
    alerts = [make_alert(alert_id=f"a{i}", batch=f"B-{i}") for i in range(3)]
    with SlackFake(token=TOKEN) as fake:
        port = fake.port
        fake.down()
        # Bring Slack back on the third retry, proving connection refusals were retried.
        sleep = RecordingSleep(on_sleep=lambda n: fake.up() if n == 3 else None)
        slack = notifier(fake, sleep)

        async def notify_all() -> list[DeliveryResult]:
            return [await slack.notify(a) for a in alerts]

        results = run(notify_all())
        calls = fake.wait_for_calls(3)
        assert fake.port == port

    assert len(sleep.delays) == 3
    assert [r.status for r in results] == ["delivered"] * 3
    assert [c.body["blocks"][0]["text"]["text"] for c in calls] == [
        f"Potential recall: M-100 batch B-{i}" for i in range(3)
    ]
    assert [r.detail for r in results] == [c.response["ts"] for c in calls]
    assert [float(r.detail) for r in results] == sorted(float(r.detail) for r in results)


# --- console & factory -------------------------------------------------------------------------


def test_console_notifier_prints_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    result = run(ConsoleNotifier(stream=out, now=lambda: 99.0).notify(make_alert(failure_mode=ALL_MODES)))

    printed = out.getvalue()
    assert printed.startswith("=== Potential recall: M-100 batch B-7 ===\n")
    for expected in ("all modes", "12 in bucket vs 3.0 expected", "10,000", "2024-01-02T03:04:05Z", "a1"):
        assert expected in printed
    assert result == DeliveryResult("a1", "console", "console", "printed", 99.0)
    assert any(r.levelno == logging.WARNING and "a1" in r.getMessage() for r in caplog.records)


def test_make_notifier_picks_slack_only_with_a_token() -> None:
    slack = make_notifier("xoxb-1", "#c", "http://127.0.0.1:1/api/", "http://rw")
    assert isinstance(slack, SlackNotifier)
    assert slack.client.base_url == "http://127.0.0.1:1/api/"
    assert isinstance(make_notifier(None, "#c", None, "http://rw"), ConsoleNotifier)
    assert isinstance(make_notifier("", "#c", None, "http://rw"), ConsoleNotifier)


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
