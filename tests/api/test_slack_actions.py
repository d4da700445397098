"""Slack buttons on a case thread: signed clicks act (once), anything unsigned or stale is a 401."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response

from api.app import create_api
from api.slack_routes import slack_router
from cases.commands import Command
from cases.risk import DEFAULT_MATRIX
from core.access import AccessPolicy
from recallwatch.case_desk import CaseDesk
from sinks.case_store import CaseStore, CommandResult
from sinks.clickhouse import ClickHouseStore

pytestmark = pytest.mark.integration
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
POLICY = AccessPolicy(keys={"key-analyst": "analyst"}, anonymous_role=None)
ALERT = {"alert_id": "a1", "model": "KT-100", "batch": "B05", "failure_mode": "heating_element",
         "count": 12, "expected": 2.5, "detector": "cusum"}  # fmt: skip


def signed(body: bytes, secret: str = SECRET, ts: float | None = None) -> dict[str, str]:
    stamp = str(int(time.time() if ts is None else ts))
    digest = hmac.new(secret.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": f"v0={digest}",
    }


def click(action_id: str, case_id: str, trigger_id: str = "t-1", user: dict[str, str] | None = None) -> bytes:
    payload = {
        "type": "block_actions",
        "trigger_id": trigger_id,
        "user": user or {"id": "U123", "username": "bob"},
        "actions": [{"action_id": action_id, "value": case_id, "action_ts": "1700000000.1"}],
    }
    return urlencode({"payload": orjson.dumps(payload).decode()}).encode()


def post(client: TestClient, body: bytes, headers: dict[str, str]) -> Response:
    r = client.post("/v1/slack/actions", content=body, headers=headers)
    assert r.status_code < 500, r.text
    return r


@pytest.fixture
def desk(store: ClickHouseStore) -> CaseDesk:
    # A worker on the same store; time.time as its clock, like every writer of the log.
    return CaseDesk(CaseStore(store), DEFAULT_MATRIX, time.time)


@pytest.fixture
def case_id(desk: CaseDesk) -> str:
    (opened,) = desk.on_alert(ALERT, at=time.time())
    return opened.case_id


@pytest.fixture
def client(store: ClickHouseStore) -> Any:
    with TestClient(create_api(store, "http://rw.test", POLICY, slack_signing_secret=SECRET)) as c:
        yield c


def audit(client: TestClient, case_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/v1/cases/{case_id}/audit", headers={"X-API-Key": "key-analyst"})
    assert r.status_code == 200, r.text
    return r.json()["events"]


def test_acknowledge_and_take_change_the_case_as_the_slack_user(client: TestClient, case_id: str) -> None:
    body = click("case_acknowledge", case_id, "t-ack")
    r = post(client, body, signed(body))
    assert r.status_code == 200 and r.json() == {
        "ok": True, "status": "ok", "detail": "", "command_id": "slack-t-ack"
    }  # fmt: skip
    body = click("case_take", case_id, "t-take", user={"id": "U999"})  # no username: the id names them
    r = post(client, body, signed(body))
    assert r.status_code == 200 and r.json()["status"] == "ok"

    events = audit(client, case_id)
    assert [(e["actor"], e["action"], e["reason"]) for e in events[1:]] == [
        ("slack:bob", "acknowledge", "acknowledged in Slack"),
        ("slack:U999", "assign", "took the case in Slack"),
    ]
    assert events[2]["data"]["role"] == "quality" and events[2]["data"]["owner"] is True
    case = client.get(f"/v1/cases/{case_id}", headers={"X-API-Key": "key-analyst"}).json()
    assert case["acknowledged_by"] == ["slack:bob"] and case["owner"] == "slack:U999"


def test_a_retried_delivery_acts_once(client: TestClient, case_id: str) -> None:
    body = click("case_acknowledge", case_id, "t-same")
    first, second = post(client, body, signed(body)), post(client, body, signed(body))
    assert first.json() == second.json() and first.json()["status"] == "ok"
    assert [e["action"] for e in audit(client, case_id)] == ["open", "acknowledge"]


def test_refused_and_unknown_cases_are_still_200_with_the_reason(
    client: TestClient, desk: CaseDesk, case_id: str
) -> None:
    now = time.time()
    for i, (kind, args) in enumerate([("assess", {}), ("decide", {"decision": "dismiss"}), ("close", {})]):
        result, _ = desk.run(Command(f"c{i}", case_id, kind, "qm.kim", now, "not a real problem", args))
        assert result.status == "ok", result
    body = click("case_acknowledge", case_id, "t-late")
    r = post(client, body, signed(body))
    assert r.status_code == 200
    assert r.json()["status"] == "refused"
    assert r.json()["detail"].startswith("cannot acknowledge a case in state closed (decision dismiss)")

    unknown = "case-" + "0" * 20
    body = click("case_take", unknown, "t-x")
    r = post(client, body, signed(body))
    assert r.status_code == 200 and r.json()["status"] == "unknown_case"


def test_the_open_button_is_a_link_and_does_nothing(client: TestClient, case_id: str) -> None:
    body = click("case_open", case_id, "t-open")
    r = post(client, body, signed(body))
    assert r.status_code == 200 and r.json() == {"ok": True, "status": "nothing to do"}
    assert len(audit(client, case_id)) == 1


def test_unsigned_forged_and_stale_requests_are_401(client: TestClient, case_id: str) -> None:
    body = click("case_acknowledge", case_id)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    cases = {
        "unsigned": form,
        "no timestamp": {k: v for k, v in signed(body).items() if k != "X-Slack-Request-Timestamp"},
        "wrong secret": signed(body, secret="not-the-secret"),
        "stale": signed(body, ts=time.time() - 360),  # margins: a loaded CI box is slow
        "from the future": signed(body, ts=time.time() + 360),
        "bad timestamp": {**signed(body), "X-Slack-Request-Timestamp": "yesterday"},
        "other body": signed(body + b"&x=1"),
    }
    for name, headers in cases.items():
        r = post(client, body, headers)
        assert r.status_code == 401, (name, r.text)
        assert "Slack" in r.json()["detail"], name
    assert len(audit(client, case_id)) == 1  # nothing acted


def test_without_a_signing_secret_every_click_is_refused(store: ClickHouseStore, case_id: str) -> None:
    with TestClient(create_api(store, "http://rw.test", POLICY)) as c:
        body = click("case_acknowledge", case_id)
        r = post(c, body, signed(body))
        assert r.status_code == 401 and "not configured" in r.json()["detail"]


def test_unknown_actions_and_malformed_payloads_are_400(client: TestClient, case_id: str) -> None:
    body = click("case_delete", case_id)
    r = post(client, body, signed(body))
    assert r.status_code == 400 and r.json()["detail"] == "unknown action 'case_delete'"

    def form(payload: Any) -> bytes:
        raw = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
        return urlencode({"payload": raw}).encode()

    base = {"type": "block_actions", "trigger_id": "t", "user": {"id": "U1"},
            "actions": [{"action_id": "case_take", "value": case_id}]}  # fmt: skip
    malformed = [
        b"",
        b"payload=",
        b"nopayload=1",
        form("{not json"),
        form([1, 2]),
        form({**base, "type": "view_submission"}),
        form({**base, "actions": []}),
        form({**base, "actions": ["case_take"]}),
        form({**base, "user": {}}),
        form({k: v for k, v in base.items() if k != "trigger_id"}),
        form({**base, "actions": [{"action_id": "case_take", "value": "not-a-case"}]}),
        b"\xff\xfe",
    ]
    for body in malformed:
        r = post(client, body, signed(body))
        assert r.status_code == 400, (body, r.text)
    assert len(audit(client, case_id)) == 1


class SlowBus:
    """A bus whose worker answers late (the Kafka bus waits up to its command_wait_s)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s, self.done = delay_s, threading.Event()
        self.sent: list[Command] = []

    def submit(self, cmd: Command) -> CommandResult | None:
        time.sleep(self.delay_s)
        self.sent.append(cmd)
        self.done.set()
        return CommandResult(cmd.command_id, cmd.case_id, "ok", "", (2,))


def test_slack_gets_its_answer_in_time_while_the_command_carries_on() -> None:
    bus = SlowBus(delay_s=1.0)
    app = FastAPI()
    app.include_router(slack_router(bus, SECRET, POLICY, wait_s=0.1))
    case_id = "case-" + "a" * 20
    with TestClient(app) as c:
        body = click("case_take", case_id, "t-slow")
        started = time.monotonic()
        r = post(c, body, signed(body))
        assert time.monotonic() - started < 0.9
        assert r.status_code == 200 and r.json() == {
            "ok": True,
            "status": "queued",
            "command_id": "slack-t-slow",
        }
        assert bus.done.wait(5)  # not cancelled by the answer going out
    (cmd,) = bus.sent
    assert (cmd.kind, cmd.actor, dict(cmd.args)) == ("take", "slack:bob", {"role": "quality"})


def test_whoever_took_the_case_in_slack_scores_it_under_their_slack_name(
    client: TestClient, case_id: str
) -> None:
    body = click("case_take", case_id, "t-take")
    assert post(client, body, signed(body)).json()["status"] == "ok"
    analyst = {"X-API-Key": "key-analyst"}
    url = f"/v1/cases/{case_id}/commands"
    r = client.post(f"{url}/assess", json={"actor": "slack:bob", "reason": "triage"}, headers=analyst)
    assert r.status_code == 200, r.text
    score = {"actor": "slack:bob", "reason": "burns", "args": {"dimension": "severity", "value": 4}}
    r = client.post(f"{url}/score", json=score, headers=analyst)
    assert r.status_code == 200, r.text
    assert r.json()["case"]["scores"] == [
        {"dimension": "severity", "role": "quality", "reviewer": "slack:bob", "value": 4}
    ]
