"""Slack interactivity: the buttons on a case's thread (Acknowledge, Take case) become case commands.

Slack signs every request with the app's signing secret; without a valid, fresh signature nothing
happens (there is no API key on these requests, so the signature is the only proof of origin).
Slack wants a 200 within 3 s or it shows the user an error and retries, so the command gets a
bounded wait: a command not carried out by then is still queued and answered as such. A refused
command is still a 200 (with the reason): the click reached us, and Slack has no use for a 4xx.
A retried delivery carries the same trigger_id, which becomes the command id, so it acts once.
"""

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, HTTPException, Request

from cases.commands import Command
from core.access import AccessPolicy
from recallwatch.case_bus import CommandBus
from sinks.case_store import CommandResult
from sinks.slack import verify_slack_signature

log = logging.getLogger("recallwatch.slack")
_CASE_ID = re.compile(r"^case-[0-9a-f]{20}$")
SLACK_ROLE = "quality"  # a Slack user acts with the quality team's rights (see core.access)
ACTIONS: Mapping[str, tuple[str, dict[str, Any], str] | None] = {
    # action_id -> (command kind, args, reason); None: nothing to do
    "case_acknowledge": ("acknowledge", {}, "acknowledged in Slack"),
    "case_take": ("take", {"role": "quality"}, "took the case in Slack"),
    "case_open": None,  # a URL button: Slack opens the link and tells us, nothing to carry out
}


def slack_router(
    bus: CommandBus,
    signing_secret: str | None,
    policy: AccessPolicy,
    *,
    wait_s: float = 2.0,
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/slack/actions")
    async def actions(request: Request) -> dict[str, Any]:
        """A button click from a case thread; the body is form-encoded with a JSON ``payload``."""
        body = await request.body()  # the raw bytes: the signature is over them, not a re-encoding
        if not signing_secret:
            raise HTTPException(
                status_code=401, detail="Slack signing secret is not configured: button clicks are refused"
            )
        ts = request.headers.get("x-slack-request-timestamp")
        sig = request.headers.get("x-slack-signature")
        if not ts or not sig:
            raise HTTPException(
                status_code=401, detail="missing X-Slack-Request-Timestamp or X-Slack-Signature"
            )
        if not verify_slack_signature(signing_secret, ts, body, sig, now=clock()):
            raise HTTPException(status_code=401, detail="bad or stale Slack signature")
        payload = _payload(body)
        action = payload["actions"][0]
        action_id = action.get("action_id")
        if not isinstance(action_id, str) or action_id not in ACTIONS:  # a list or object is unhashable
            raise HTTPException(status_code=400, detail=f"unknown action {action_id!r}")
        todo = ACTIONS[action_id]
        if todo is None:
            return {"ok": True, "status": "nothing to do"}
        kind, args, reason = todo
        if not policy.may_command(SLACK_ROLE, kind):
            return {"ok": True, "status": "refused", "detail": f"Slack users may not send {kind} commands"}
        case_id = action.get("value")
        if not isinstance(case_id, str) or not _CASE_ID.match(case_id):
            raise HTTPException(status_code=400, detail="the action's value must be a case id")
        cmd = Command(
            _command_id(payload, action), case_id, kind, _actor(payload), clock(), reason, dict(args)
        )
        result = await _submit_within(bus, cmd, wait_s)
        if result is None:
            return {"ok": True, "status": "queued", "command_id": cmd.command_id}
        if result.status != "ok":
            log.info("slack %s on %s %s: %s", kind, case_id, result.status, result.detail)
        return {"ok": True, "status": result.status, "detail": result.detail, "command_id": cmd.command_id}

    return router


def _payload(body: bytes) -> dict[str, Any]:
    """The interaction payload of a block_actions request; a 400 for anything else."""
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        payload = orjson.loads(form["payload"][0])
    except (UnicodeDecodeError, KeyError, IndexError, orjson.JSONDecodeError):
        raise HTTPException(status_code=400, detail="expected a form field 'payload' holding JSON") from None
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        raise HTTPException(status_code=400, detail="only block_actions interactions are handled")
    actions, user = payload.get("actions"), payload.get("user")
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict):
        raise HTTPException(status_code=400, detail="the payload has no actions")
    if not isinstance(user, dict) or not (user.get("username") or user.get("id")):
        raise HTTPException(status_code=400, detail="the payload names no user")
    if not (payload.get("trigger_id") or actions[0].get("action_ts")):
        raise HTTPException(status_code=400, detail="the payload has neither trigger_id nor action_ts")
    return payload


def _actor(payload: Mapping[str, Any]) -> str:
    user = payload["user"]
    return f"slack:{user.get('username') or user['id']}"


def _command_id(payload: Mapping[str, Any], action: Mapping[str, Any]) -> str:
    # Slack retries a delivery it got no timely 200 for with the same trigger_id: one command, once.
    return f"slack-{payload.get('trigger_id') or action['action_ts']}"


async def _submit_within(bus: CommandBus, cmd: Command, wait_s: float) -> CommandResult | None:
    """The command's result, or None once ``wait_s`` passed; the submission carries on regardless."""
    submitted = asyncio.get_running_loop().run_in_executor(None, bus.submit, cmd)
    submitted.add_done_callback(_log_failure)
    try:
        # shield: giving up waiting must not cancel the hand-over to the case's writer.
        return await asyncio.wait_for(asyncio.shield(submitted), timeout=wait_s)
    except TimeoutError:
        return None


def _log_failure(done: "asyncio.Future[CommandResult | None]") -> None:
    # Also marks the exception retrieved when nobody awaits it any more (the wait timed out).
    if not done.cancelled() and done.exception() is not None:
        log.error("slack command failed: %s", done.exception())
