"""Case agents: alerts and commands become case events; case events become a Slack thread per case.

``cases`` reads the alerts topic, where detector alerts and people's commands for a case share the
case id as key, so one worker applies them in order through the case desk (the log's one writer).
Each resulting event goes to the case-events topic with the case as it now stands.
``case_threads`` follows that topic: a case's first event posts the thread's root, later ones
reply in the thread and refresh the root. While Slack is down it retries, holding its place, so
notifications queue in Kafka and go out in order when Slack is back; ClickHouse outages likewise
only delay. Both agents are idempotent: replayed input re-sends the same events, and a thread
skips events at or below the seq it already posted.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, TypeVar

import faust
import orjson

from cases.commands import Command
from cases.identity import SignalIdentity, case_id_for, check_names
from cases.lifecycle import CaseEvent
from core.alerts import ALL_MODES, Alert
from recallwatch.case_bus import COMMAND_TYPE, command_message
from recallwatch.case_desk import CaseDesk, UnusableInput
from sinks.case_store import ThreadPosition
from sinks.slack_threads import SlackPermanentError, ThreadRef
from streams.flushing import Sent, confirm_sent
from streams.records import Rejection

log = logging.getLogger("recallwatch.cases")
Insert = Callable[[str, list[dict[str, Any]]], Awaitable[None]]
Retry = Callable[[str, Callable[[], Any]], Awaitable[Any]]
T = TypeVar("T")


def case_key(alert: Alert) -> bytes:
    """The alerts-topic key of an alert: its case's id, so a case's inputs stay on one partition."""
    return case_id_for(SignalIdentity.from_alert(alert.to_dict())).encode()


def decode_case_input(payload: bytes | None) -> Alert | Command | Rejection:
    """An alert or a case command from the alerts topic; never raises on a bad message."""
    try:
        data = orjson.loads(payload or b"")
        if not isinstance(data, dict):
            return Rejection("message is not a JSON object", payload or b"")
        if data.get("type") == COMMAND_TYPE:
            cmd = Command.from_dict(data.get("command") or {})
            if not math.isfinite(cmd.at):  # from_dict reads "nan" and "inf" as floats
                raise ValueError(f"a command's at must be a finite epoch time, got {cmd.at!r}")
            return cmd
        alert = Alert.from_dict(data)
        _check_alert_types(alert)
        return alert
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        return Rejection(f"neither an alert nor a case command: {exc}", payload or b"")


# Alert.from_dict takes any values (an alert_id of null, a count of "x"); such an alert would be
# stored on its case as it came, for every later reader to trip on, rather than dead-lettered.
# A number may be written without a fraction; true/false are not numbers (Python's bool is an int).
_ALERT_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "float": (int, float), "int": (int,)}


def _check_alert_types(alert: Alert) -> None:
    for f in fields(alert):
        value, wanted = getattr(alert, f.name), _ALERT_TYPES.get(str(f.type))
        if wanted is not None and (isinstance(value, bool) or not isinstance(value, wanted)):
            raise ValueError(f"alert field {f.name} must be {f.type}, got {value!r:.100}")
    if not all(isinstance(d, str) for d in alert.detectors_fired):
        raise ValueError("alert field detectors_fired must be a list of strings")
    # An empty model made the case desk raise on every retry; a 200-character one opened a case
    # that later reads refuse. Checked here, such an alert is dead-lettered with the reason.
    check_names("cell", (alert.model, alert.batch, alert.failure_mode))


def decode_case_event(
    payload: bytes | None,
) -> tuple[str, int, dict[str, Any], dict[str, Any] | None] | Rejection:
    """A case-events message as (case id, seq, event, case); never raises on a bad message."""
    try:
        message = orjson.loads(payload or b"")
        event, case = message["event"], message["case"]
        case_id, seq = str(event["case_id"]), int(event["seq"])
        # What ``post`` reads of the event: a bad one must be refused here, not crash the agent.
        if not isinstance(event.get("action"), str):
            raise ValueError(f"the event's action must be a string, got {event.get('action')!r:.100}")
        if not isinstance(event.get("data") or {}, dict) or not isinstance(event.get("reason", ""), str):
            raise ValueError("the event's data must be an object and its reason a string")
        if case is not None and not isinstance(case, dict):
            raise ValueError("the case must be an object or null")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        return Rejection(f"not a case event: {exc}", payload or b"")
    return case_id, seq, event, case


def reply_target(pos: ThreadPosition | None) -> ThreadRef | None:
    """The thread a case's next event replies in; None posts a new root message.

    A position saved after the root post failed has no ts (Slack refused it: say the bot was not in
    the channel yet). The next event then tries a root again, so the thread starts once the
    channel is fixed, instead of every later event replying to a thread that does not exist.
    """
    return None if pos is None or not pos.ts else ThreadRef(pos.channel, pos.ts)


def _source(stream: faust.StreamT[bytes]) -> Any:
    """The message being handled (topic, partition, offset), for its reject row."""
    event = stream.current_event
    return None if event is None else event.message


def case_event_message(event: CaseEvent, case: dict[str, Any] | None) -> bytes:
    return orjson.dumps({"event": event.to_dict(), "case": case})


@dataclass
class CaseAgentDeps:
    desk: CaseDesk
    # Slack- or ConsoleThreadNotifier: deliver(case, event, thread, *, check_posted), learn_channel(id)
    notifier: Any
    insert: Insert
    retry: Retry
    clock: Callable[[], float]
    stats: Any
    # A message the agents cannot read, with the message's source (its topic, partition, offset).
    reject: Callable[[bytes, str, Any], Awaitable[None]]
    # Best-effort rank of a new alert (streams/alert_ranking.py); None: alerts are not ranked.
    rank: Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]] | None = None


class CaseThreadPoster:
    """What the case-threads agent does with one decoded case event: post it, save the position.

    Positions are cached while this worker holds the case's partition. Only a cached one proves
    this process saw the case's last post through to its save; any other (read back from
    ClickHouse, or none) may be one post behind Slack after a crash, or after another worker held
    the partition for a while, so the notifier is asked to look before it posts. :meth:`forget`
    drops the cache when partitions are revoked.
    """

    def __init__(self, deps: CaseAgentDeps) -> None:
        self.deps = deps
        self._positions: dict[str, ThreadPosition] = {}
        self._channel_learned = False

    def forget(self) -> None:
        """Drop every cached position: another worker may post to these cases before they return."""
        self._positions.clear()

    async def __call__(
        self, case_id: str, seq: int, event: dict[str, Any], case: dict[str, Any] | None
    ) -> None:
        deps, store = self.deps, self.deps.desk.store
        await self._learn_channel()
        pos = self._positions.get(case_id)
        check_posted = pos is None
        if pos is None:
            pos = await deps.retry("thread lookup", lambda: asyncio.to_thread(store.thread, case_id))
        if pos is not None and seq <= pos.posted_seq:
            return  # posted before a restart replayed it
        alert = (event.get("data") or {}).get("alert")
        if event["action"] == "mute":
            # Muted on purpose (a campaign or a silence): on record, not in anyone's channel.
            await self._record_delivery(alert, "none", "muted", event.get("reason", ""))
            return
        thread = reply_target(pos)
        try:
            ref = await deps.notifier.deliver(case, event, thread, check_posted=check_posted)
            status, detail = "delivered", ref.ts
        except SlackPermanentError as exc:
            # Retrying cannot help (bad token, unknown channel): record it loudly and move on.
            log.error("slack refused case %s event #%d: %s", case_id, seq, exc)
            ref = exc.thread or thread or ThreadRef("none", "")
            status, detail = "failed", str(exc)
        except Exception as exc:  # a rendering bug must not stop every later case's thread
            log.exception("could not post case %s event #%d", case_id, seq)
            ref = thread or ThreadRef("none", "")
            status, detail = "failed", f"notifier error: {exc}"
        new = ThreadPosition(case_id, ref.channel, ref.ts, seq)
        await deps.retry("thread position", lambda: asyncio.to_thread(store.save_thread, new, deps.clock()))
        self._positions[case_id] = new
        await self._record_delivery(alert, ref.channel, status, detail)

    async def _learn_channel(self) -> None:
        """Once per process: tell the notifier the channel id saved threads use.

        A channel configured by name is known by id only after a root post, and after a crash the
        first post may be the replay of a root that is already there: the lookup needs the id.
        """
        if self._channel_learned:
            return
        store = self.deps.desk.store
        channel = await self.deps.retry(
            "thread channel", lambda: asyncio.to_thread(store.latest_thread_channel)
        )
        if channel is not None:
            self.deps.notifier.learn_channel(channel)
        self._channel_learned = True

    async def _record_delivery(self, alert: Any, channel: str, status: str, detail: str) -> None:
        if not isinstance(alert, dict) or not alert.get("alert_id"):
            return
        row = {"alert_id": str(alert["alert_id"]), "channel": channel, "status": status,
               "detail": detail[:500], "delivered_at": self.deps.clock()}  # fmt: skip
        await self.deps.insert("alert_deliveries", [row])
        self.deps.stats.alerts.append(dict(alert))
        self.deps.stats.deliveries.append(row)


def forget_positions_on_rebalance(app: faust.App, poster: CaseThreadPoster) -> None:
    """Clear the poster's cached positions whenever this worker's partitions are revoked.

    A revoked partition may go to another worker that posts and saves a case's next events; when
    it comes back, a cached position would be behind and an event's reply posted twice.
    """

    def on_revoked(_app: Any, *_revoked: Any, **_kwargs: Any) -> None:  # (app, revoked, signal=...)
        poster.forget()

    app.on_partitions_revoked.connect(on_revoked)


def _unless_unusable(call: Callable[..., T], *args: Any) -> T | UnusableInput:
    """``call(*args)``, or the UnusableInput it raised, returned so the retry loop ends.

    The loop retries whatever is raised, which is right for the store (an outage must only delay)
    and wrong for an input the case core cannot take: that one stalled every case on the partition.
    """
    try:
        return call(*args)
    except UnusableInput as exc:
        return exc


async def apply_case_input(deps: CaseAgentDeps, raw: bytes | None, source: Any) -> list[CaseEvent]:
    """What the cases agent does with one alerts-topic message: the case events to pass on.

    A message that cannot be read, or that the case desk cannot take, is dead-lettered with the
    reason and yields no events. Store failures are retried (``deps.retry``) however long they last.
    """
    desk = deps.desk
    item = decode_case_input(raw)
    if isinstance(item, Rejection):
        await deps.reject(item.payload, item.reason, source)
        return []
    if isinstance(item, Alert):
        alert_fields, at = item.to_dict(), deps.clock()
        if deps.rank is not None and item.failure_mode != ALL_MODES:
            alert_fields["rank"] = await deps.rank(alert_fields)  # the ranker reads one failure mode
        events = await deps.retry(
            "case update", lambda: asyncio.to_thread(_unless_unusable, desk.on_alert, alert_fields, at)
        )
        if isinstance(events, UnusableInput):
            await deps.reject(raw or b"", str(events), source)
            return []
        return list(events)
    cmd = item
    result, events = await deps.retry("case command", lambda: asyncio.to_thread(desk.run, cmd))
    if result.status != "ok":
        log.warning("case command %s (%s) %s: %s", cmd.command_id, cmd.kind, result.status, result.detail)
    if result.status == "invalid":
        # Answered (its sender reads the result), and dead-lettered, as any unusable input is.
        await deps.reject(raw or b"", f"case command {cmd.kind}: {result.detail}", source)
    return list(events)


def add_case_agents(
    app: faust.App,
    alerts_topic: Any,
    case_events_topic: Any,
    deps: CaseAgentDeps,
    escalate_after_s: float,
    escalation_check_s: float,
) -> None:
    desk = deps.desk
    post = CaseThreadPoster(deps)
    forget_positions_on_rebalance(app, post)

    async def emit(events: list[CaseEvent]) -> None:
        sent = []
        for event in events:
            case = await deps.retry("case view", lambda e=event: asyncio.to_thread(desk.case_dict, e.case_id))
            key, value = event.case_id.encode(), case_event_message(event, case)
            sent.append(await Sent.of(partial(case_events_topic.send, key=key, value=value)))
        # Confirmed before the alert or command is acked: once committed it is never read again,
        # and the desk, having recorded its events, would not emit them a second time.
        await deps.retry("case events", lambda: confirm_sent(sent))

    @app.agent(alerts_topic, name="cases")
    async def cases(stream: faust.StreamT[bytes]) -> None:
        async for raw in stream:
            await emit(await apply_case_input(deps, raw, _source(stream)))

    @app.agent(case_events_topic, name="case-threads")
    async def case_threads(stream: faust.StreamT[bytes]) -> None:
        async for raw in stream:
            decoded = decode_case_event(raw)
            if isinstance(decoded, Rejection):
                await deps.reject(decoded.payload, decoded.reason, _source(stream))
                continue
            await post(*decoded)

    @app.timer(escalation_check_s)
    async def escalate_overdue_tasks() -> None:
        # Every worker may find the same overdue task; the command id is fixed per task, so the
        # case's owner applies it once however many copies arrive.
        try:
            commands = await asyncio.to_thread(desk.due_escalations, deps.clock(), escalate_after_s)
        except Exception as exc:  # ClickHouse down: the next tick tries again
            log.warning("escalation check failed: %s", exc)
            return
        for cmd in commands:
            await alerts_topic.send(key=cmd.case_id.encode(), value=command_message(cmd))
