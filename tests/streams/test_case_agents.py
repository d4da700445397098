"""Which Slack thread a case's next event goes to, after deliveries that worked, failed or crashed.

The crash tests run the case-threads agent's handler (``CaseThreadPoster``) on the real case
desk and store, posting to SlackFake: a worker killed after Slack accepted a post but before the
position was saved is played by a notifier that posts and saves nothing, then a fresh handler (the
restarted worker, with an empty cache) gets the same event again from Kafka.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import faust
import orjson
import pytest

from cases.commands import Command
from cases.identity import SignalIdentity, case_id_for
from cases.risk import DEFAULT_MATRIX
from recallwatch.case_bus import command_message
from recallwatch.case_desk import CaseDesk, UnusableInput
from sinks.case_store import CaseStore, CommandResult, ThreadPosition
from sinks.clickhouse import ClickHouseStore, ClickHouseUnavailable
from sinks.slack_threads import SlackThreadNotifier, ThreadRef
from streams.app import retry_until_done
from streams.case_agents import (
    CaseAgentDeps,
    CaseThreadPoster,
    apply_case_input,
    decode_case_input,
    forget_positions_on_rebalance,
    reply_target,
)
from streams.records import Rejection
from tests.slack_fake import SlackFake, channel_id

TOKEN = "xoxb-test"
T0 = 1_700_000_000.0
Delivery = tuple[str, int, dict[str, Any], dict[str, Any] | None]  # what the agent decodes


def test_a_case_without_a_position_gets_a_root_and_one_with_a_thread_replies_in_it() -> None:
    assert reply_target(None) is None
    assert reply_target(ThreadPosition("case-1", "C1", "1700000000.000100", 3)) == ThreadRef(
        "C1", "1700000000.000100"
    )


def test_after_a_refused_root_the_next_event_tries_a_root_again() -> None:
    # What the agent saves when Slack refused the root post for good (e.g. not_in_channel).
    refused = ThreadPosition("case-1", "none", "", 1)
    assert reply_target(refused) is None


# --- crash between the Slack post and the saved position ---------------------------------------


class Worker:
    """The case desk on the real store and one process's case-threads handler."""

    def __init__(self, store: ClickHouseStore, fake: SlackFake, channel: str = "C1") -> None:
        self.channel = channel
        ticks = itertools.count()
        self.clock: Callable[[], float] = lambda: T0 + next(ticks)
        self.desk = CaseDesk(CaseStore(store), DEFAULT_MATRIX, clock=self.clock)
        self.store, self.fake = store, fake
        self.post = self.restart()

    def notifier(self) -> SlackThreadNotifier:
        return SlackThreadNotifier(TOKEN, self.channel, base_url=self.fake.base_url, sleep=_no_wait)

    def restart(self) -> CaseThreadPoster:
        """A fresh handler: what the worker is after kill -9 and a start."""

        async def insert(table: str, rows: list[dict[str, Any]]) -> None:
            await asyncio.to_thread(self.store.insert, table, rows)

        async def retry(_what: str, call: Callable[[], Any]) -> Any:
            return await call()

        async def reject(_payload: bytes, _reason: str, _source: Any) -> None:
            raise AssertionError("no message here is unreadable")

        stats = SimpleNamespace(alerts=[], deliveries=[])
        deps = CaseAgentDeps(self.desk, self.notifier(), insert, retry, self.clock, stats, reject)
        return CaseThreadPoster(deps)

    def alert(self, alert_id: str, model: str = "M-1") -> Delivery:
        fields = {"alert_id": alert_id, "model": model, "batch": "B-1", "failure_mode": "brakes",
                  "count": 9, "expected": 2.0, "detector": "cusum", "config_version": "v1"}  # fmt: skip
        [event] = self.desk.on_alert(fields, self.clock())
        return self._delivery(event.case_id, event.to_dict())

    def command(self, case_id: str, kind: str, **args: Any) -> Delivery:
        cmd = Command(f"cmd-{kind}", case_id, kind, "ana", self.clock(), "because", args)
        result, [event] = self.desk.run(cmd)
        assert result.status == "ok", result
        return self._delivery(case_id, event.to_dict())

    def _delivery(self, case_id: str, event: dict[str, Any]) -> Delivery:
        return case_id, int(event["seq"]), event, self.desk.case_dict(case_id)

    def crash_after_posting(self, delivery: Delivery, thread: ThreadRef | None) -> ThreadRef:
        """Slack got the post; the process died before saving the position."""
        _case_id, _seq, event, case = delivery
        assert case is not None
        return asyncio.run(self.notifier().deliver(case, event, thread))


async def _no_wait(_delay: float) -> None:
    await asyncio.sleep(0)


def roots(fake: SlackFake) -> list[Any]:
    return [c for c in fake.delivered if c.method == "chat.postMessage" and "thread_ts" not in c.body]


def test_a_root_posted_before_a_crash_is_adopted_not_posted_twice(store: ClickHouseStore) -> None:
    with SlackFake(token=TOKEN) as fake:
        worker = Worker(store, fake)
        opened = worker.alert("a1")
        posted = worker.crash_after_posting(opened, None)
        assert worker.desk.store.thread(opened[0]) is None  # the position was never saved

        post = worker.restart()
        asyncio.run(post(*opened))  # Kafka delivers the open event again
        asyncio.run(post(*worker.alert("a2")))
        asyncio.run(post(*worker.command(opened[0], "assess")))
        replies = fake.replies("C1", posted.ts)

    assert len(roots(fake)) == 1  # one thread for the case in the channel
    assert [r["metadata"]["event_payload"]["seq"] for r in replies] == [2, 3]
    assert worker.desk.store.thread(opened[0]) == ThreadPosition(opened[0], "C1", posted.ts, 3)


def test_a_reply_posted_before_a_crash_is_not_posted_twice(store: ClickHouseStore) -> None:
    with SlackFake(token=TOKEN) as fake:
        worker = Worker(store, fake)
        opened = worker.alert("a1")
        case_id = opened[0]
        asyncio.run(worker.post(*opened))
        asyncio.run(worker.post(*worker.alert("a2")))
        normal = [c.method for c in fake.calls]
        position = worker.desk.store.thread(case_id)
        assert position is not None

        assessed = worker.command(case_id, "assess")
        worker.crash_after_posting(assessed, reply_target(position))
        fake.calls.clear()
        post = worker.restart()
        asyncio.run(post(*assessed))  # the replay: its reply is in the thread already
        replay = [c.method for c in fake.calls]
        fake.calls.clear()
        asyncio.run(post(*worker.command(case_id, "take")))  # this process's own position: no lookup
        after = [c.method for c in fake.calls]
        replies = fake.replies("C1", position.ts)

    assert normal == ["conversations.history", "chat.postMessage", "chat.postMessage", "chat.update"]
    assert replay == ["conversations.replies", "chat.update"]
    assert after == ["chat.postMessage", "chat.update"]
    assert [r["metadata"]["event_payload"]["seq"] for r in replies] == [2, 3, 4]
    assert worker.desk.store.thread(case_id) == ThreadPosition(case_id, "C1", position.ts, 4)


def test_a_channel_configured_by_name_finds_a_root_lost_in_a_crash_after_a_restart(
    store: ClickHouseStore,
) -> None:
    with SlackFake(token=TOKEN) as fake:
        worker = Worker(store, fake, channel="#quality")
        asyncio.run(worker.post(*worker.alert("a1")))  # an earlier case: its position names the id
        opened = worker.alert("b1", model="M-2")
        posted = worker.crash_after_posting(opened, None)

        post = worker.restart()  # knows the channel by name only, until the store tells its id
        asyncio.run(post(*opened))  # Kafka delivers the open event again: its first event
        position = worker.desk.store.thread(opened[0])

    assert len(roots(fake)) == 2  # one per case
    assert position == ThreadPosition(opened[0], channel_id("#quality"), posted.ts, 1)


def test_after_forget_a_cached_case_is_looked_up_before_posting(store: ClickHouseStore) -> None:
    with SlackFake(token=TOKEN) as fake:
        worker = Worker(store, fake)
        opened = worker.alert("a1")
        asyncio.run(worker.post(*opened))
        fake.calls.clear()
        worker.post.forget()  # the partition went to another worker and came back
        asyncio.run(worker.post(*worker.alert("a2")))
        methods = [c.method for c in fake.calls]

    assert methods == ["conversations.replies", "chat.postMessage", "chat.update"]


def test_revoked_partitions_make_the_poster_forget() -> None:
    forgotten = []
    poster = SimpleNamespace(forget=lambda: forgotten.append(True))
    app = faust.App("case-agents-test", broker="memory://", store="memory://")
    forget_positions_on_rebalance(app, poster)  # type: ignore[arg-type]
    asyncio.run(app.on_partitions_revoked.send(set()))

    assert forgotten == [True]


# --- alerts-topic input the case desk cannot take --------------------------------------------------

ALERT = {"alert_id": "a1", "model": "KT", "batch": "B1", "failure_mode": "overheat", "opened_at": 1.0,
         "detector": "cusum", "detector_params": {}, "config_version": "v1", "score": 1.0, "count": 1,
         "expected": 1.0, "units_in_field": 1, "rate_per_1000": 1.0, "expected_rate_per_1000": 1.0,
         "window_s": 1}  # fmt: skip
CASE = case_id_for(SignalIdentity.cell("KT", "B1", "overheat"))


def command_payload(kind: str, args: dict[str, Any], case_id: str = CASE) -> bytes:
    return command_message(Command(f"c-{kind}", case_id, kind, "ana", 5.0, "r", args))


UNUSABLE = [
    (orjson.dumps(ALERT | {"model": ""}), "model must be 1-128"),
    (orjson.dumps(ALERT | {"model": "M" * 200}), "model must be 1-128"),
    (orjson.dumps(ALERT | {"batch": "B|1"}), "batch must be 1-128 printable characters without '|'"),
    (orjson.dumps(ALERT | {"failure_mode": "f" * 129}), "failure_mode must be 1-128 characters"),
    (command_payload("evidence", {"note": "n", "complaints": 5}), "complaints: must be a list of strings"),
    (command_payload("launch_campaign", {"scope": [{}]}), "scope: a signal identity is a list"),
    (command_payload("open", {"identity": ["cell", "M" * 200, "B", "f"]}, ""), "model must be 1-128"),
]


@pytest.mark.parametrize(("payload", "reason"), UNUSABLE)
def test_input_the_case_desk_cannot_take_is_rejected_with_the_reason_when_decoded(
    payload: bytes, reason: str
) -> None:
    # Each decoded, then raised inside the desk on every retry, stalling the cases agent.
    decoded = decode_case_input(payload)
    assert isinstance(decoded, Rejection) and reason in decoded.reason and decoded.payload == payload


def test_names_the_rest_of_the_system_takes_still_decode() -> None:
    alert = ALERT | {"model": "M" * 128, "failure_mode": "*"}
    assert not isinstance(decode_case_input(orjson.dumps(alert)), Rejection)
    scope = {"scope": [["cell", "KT", "B2", "overheat"], ["lot", "L-1"]], "remedy": "refund"}
    assert not isinstance(decode_case_input(command_payload("launch_campaign", scope)), Rejection)


class StubDesk:
    """A case desk whose answers a test sets: each call pops the next (raised if an exception)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls = 0

    def _next(self, *_args: Any) -> Any:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    on_alert = run = _next


def agent_deps(desk: Any) -> tuple[CaseAgentDeps, list[tuple[bytes, str, Any]]]:
    """Deps as the worker builds them, retrying with the worker's own loop (short delays)."""
    rejected: list[tuple[bytes, str, Any]] = []

    async def reject(payload: bytes, reason: str, source: Any) -> None:
        rejected.append((payload, reason, source))

    async def retry(what: str, call: Callable[[], Any]) -> Any:
        return await retry_until_done(what, call, 0.001, 0.002)

    async def insert(_table: str, _rows: list[dict[str, Any]]) -> None:
        raise AssertionError("the cases agent inserts nothing")

    stats = SimpleNamespace(alerts=[], deliveries=[])
    return CaseAgentDeps(desk, None, insert, retry, lambda: T0, stats, reject), rejected


def apply(deps: CaseAgentDeps, payload: bytes) -> list[Any]:
    return asyncio.run(asyncio.wait_for(apply_case_input(deps, payload, "rw.alerts/0@7"), timeout=10))


def test_an_alert_the_desk_cannot_take_is_dead_lettered_not_retried_forever() -> None:
    payload = orjson.dumps(ALERT)
    desk = StubDesk(UnusableInput("the case desk cannot take this alert: KeyError('x')"))
    deps, rejected = agent_deps(desk)
    assert apply(deps, payload) == []
    assert desk.calls == 1
    assert rejected == [(payload, "the case desk cannot take this alert: KeyError('x')", "rw.alerts/0@7")]


def test_a_store_outage_is_retried_until_the_desk_takes_the_alert() -> None:
    desk = StubDesk(ClickHouseUnavailable("refused"), ClickHouseUnavailable("refused"), ["event"])
    deps, rejected = agent_deps(desk)
    assert apply(deps, orjson.dumps(ALERT)) == ["event"]
    assert desk.calls == 3 and rejected == []


def test_a_command_the_desk_answers_invalid_is_also_dead_lettered() -> None:
    payload = command_payload("assess", {})
    invalid = CommandResult("c-assess", CASE, "invalid", "the case desk cannot carry out this command", ())
    deps, rejected = agent_deps(StubDesk((invalid, [])))
    assert apply(deps, payload) == []
    assert rejected == [(payload, "case command assess: the case desk cannot carry out this command",
                         "rw.alerts/0@7")]  # fmt: skip
    refused = CommandResult("c-close", CASE, "refused", "cannot close a case in state open", ())
    deps, rejected = agent_deps(StubDesk((refused, [])))
    assert apply(deps, command_payload("close", {})) == [] and rejected == []  # refused is an answer


def test_unusable_input_on_the_real_desk_is_rejected_and_the_next_alert_gets_its_case(
    store: ClickHouseStore,
) -> None:
    desk = CaseDesk(CaseStore(store), DEFAULT_MATRIX, clock=lambda: T0)
    deps, rejected = agent_deps(desk)
    assert [e.seq for e in apply(deps, orjson.dumps(ALERT))] == [1]
    for payload, _reason in UNUSABLE:
        assert apply(deps, payload) == []
    assert [p for p, _r, _s in rejected] == [p for p, _r in UNUSABLE]
    assert [e.seq for e in apply(deps, orjson.dumps(ALERT | {"alert_id": "a2"}))] == [2]
    assert [e.seq for e in CaseStore(store).events(CASE)] == [1, 2]
