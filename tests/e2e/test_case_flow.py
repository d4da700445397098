"""From alert to decision, end to end: ``recallwatch run --simulate`` with an injected defect.

The detector's alert opens a case and posts the root of its Slack thread; people's commands through
the API (carried out by the worker that owns the case, over Kafka) and a signed Slack button click
reply in the same thread and refresh the root; while Slack is down the thread waits, and when it
returns every message arrives, in order.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.processes import start_cli, stop
from tests.e2e.test_demo import demo_env
from tests.slack_fake import SlackFake

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
KEYS = {"k-manager": "quality_manager", "k-viewer": "viewer"}
SECRET = "slack-signing-secret"


def call(method: str, url: str, key: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"X-API-Key": key})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_for(what: str, probe: Any, timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, KeyError, IndexError):
            found = probe()
            if found:
                return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n" + log.read_text(errors="replace")[-4000:])


def click(api: str, action_id: str, case_id: str, trigger: str) -> int:
    payload = {
        "type": "block_actions",
        "trigger_id": trigger,
        "user": {"id": "U1", "username": "bo"},
        "actions": [{"action_id": action_id, "value": case_id, "action_ts": "1"}],
    }
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    ts = str(int(time.time()))
    sig = "v0=" + hmac.new(SECRET.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(f"{api}/v1/slack/actions", data=body, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    request.add_header("X-Slack-Request-Timestamp", ts)
    request.add_header("X-Slack-Signature", sig)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def test_alert_opens_a_case_whose_slack_thread_follows_every_decision(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    with SlackFake(token="xoxb-cases") as slack:
        env = demo_env(
            tmp_path,
            RW_SLACK__TOKEN="xoxb-cases",
            RW_SLACK__BASE_URL=slack.base_url,
            RW_SLACK__SIGNING_SECRET=SECRET,
            RW_API__KEYS=json.dumps(KEYS),
            RW_API__ANONYMOUS_ROLE="",
            RW_CASES__ESCALATE_AFTER_S="0",  # a task past due escalates at the next check
            RW_CASES__ESCALATION_CHECK_S="1",
        )
        api = env["RW_API__PUBLIC_URL"]
        process = start_cli(["run", "--simulate"], env, tmp_path, log)
        try:
            cases = wait_for(
                "a case", lambda: call("GET", f"{api}/v1/cases", "k-viewer")[1]["cases"], 120, log
            )
            case_id = cases[-1]["case_id"]
            roots = wait_for("the thread root", lambda: [c for c in slack.delivered if is_root(c)], 30, log)
            root = next(c for c in roots if case_id in json.dumps(c.body))
            thread_ts = root.response["ts"]
            assert root.body["blocks"][0]["text"]["text"].startswith("KT-200 batch KT-200-B04")
            # The cell's rate against the expected one, and its units in the field (the simulator's
            # shipments give the worker fleet sizes).
            signal = json.dumps(root.body["blocks"])
            assert "per 1,000 units" in signal and "Units at risk" in signal and "no fleet size" not in signal
            # The worker ranked the alert with the shipped ranker, from the events in ClickHouse.
            rank = cases[-1]["rank"]
            assert rank["ranker"] == "alarm-ranker-v1" and 0.0 <= rank["score"] <= 1.0, cases[-1]
            assert "(ranker alarm-ranker-v1)" in json.dumps(root.body["blocks"])

            status, body = call(
                "POST",
                f"{api}/v1/cases/{case_id}/commands/assess",
                "k-manager",
                {"actor": "ana", "reason": "triage"},
            )
            assert status == 200, body
            assert body["case"]["state"] == "assessing"
            status, _ = call(
                "POST",
                f"{api}/v1/cases/{case_id}/commands/decide",
                "k-viewer",
                {"actor": "eve", "reason": "no", "args": {"decision": "recall"}},
            )
            assert status == 403
            assert click(api, "case_take", case_id, "trig-1") == 200

            slack.down()  # Slack goes away; decisions go on and their messages queue
            status, body = call(
                "POST",
                f"{api}/v1/cases/{case_id}/commands/decide",
                "k-manager",
                {"actor": "ana", "reason": "burn risk", "args": {"decision": "recall"}},
            )
            assert status == 200 and body["case"]["decision"] == "recall", body
            status, body = call(
                "POST",
                f"{api}/v1/cases/{case_id}/commands/silence",
                "k-manager",
                {"actor": "ana", "reason": "noise", "args": {"until": time.time() + 60}},
            )
            assert status == 200, body
            task = {
                "title": "lab test of returns",
                "owner": "bo",
                "role": "engineering",
                "due": time.time() - 5,
            }
            status, body = call(
                "POST",
                f"{api}/v1/cases/{case_id}/commands/add_task",
                "k-manager",
                {"actor": "ana", "reason": "need lab data", "args": task},
            )
            assert status == 200, body
            time.sleep(3)
            slack.up()

            def replies() -> list[str]:
                return [
                    c.body.get("text", "")
                    for c in slack.delivered
                    if c.method == "chat.postMessage" and c.body.get("thread_ts") == thread_ts
                ]

            words = ("Assessment", "slack:bo", "Decided", "silenced", "added task", "escalated to")

            def all_replies() -> list[str] | None:
                texts = replies()
                return texts if all(any(w in t for t in texts) for w in words) else None

            texts = wait_for("every reply, the escalation included", all_replies, 60, log)
            order = [next(i for i, t in enumerate(texts) if word in t) for word in words]
            assert order == sorted(order), texts
            updates = [
                c for c in slack.delivered if c.method == "chat.update" and c.body.get("ts") == thread_ts
            ]
            assert updates and "recall" in json.dumps(updates[-1].body)

            status, audit = call("GET", f"{api}/v1/cases/{case_id}/audit", "k-manager")
            actors = [e["actor"] for e in audit["events"]]
            assert (
                status == 200 and actors[:1] == ["recallwatch"] and "ana" in actors and "slack:bo" in actors
            )
        finally:
            stop(process)


def is_root(call: Any) -> bool:
    return call.method == "chat.postMessage" and not call.body.get("thread_ts") and call.ok
