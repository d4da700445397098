from __future__ import annotations

import itertools

from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.faust_tuning import app_with_fetch_wait


class BuiltConsumer:
    _fetch_max_wait_ms = 1500  # what Faust hard-codes


def test_the_worker_consumer_long_polls_at_most_the_configured_wait(monkeypatch):
    monkeypatch.setattr(
        faust_aiokafka.AIOKafkaConsumerThread,
        "_create_worker_consumer",
        lambda self, transport: BuiltConsumer(),
    )
    app_class = app_with_fetch_wait(123)
    thread_class = app_class.consumer_thread_class
    thread = thread_class.__new__(thread_class)
    assert thread._create_worker_consumer(None)._fetch_max_wait_ms == 123
    assert (
        app_class.transport_class.Consumer._new_consumer_thread
        is not faust_aiokafka.Consumer._new_consumer_thread
    )


def test_each_app_class_keeps_its_own_wait():
    assert app_with_fetch_wait(50).consumer_thread_class.fetch_max_wait_ms == 50
    assert app_with_fetch_wait(900).consumer_thread_class.fetch_max_wait_ms == 900


def test_partitions_without_a_commit_are_rewound_to_the_beginning():
    import asyncio

    from streams.faust_tuning import seek_to_committed_or_beginning

    class Consumer:
        rewound: tuple[str, ...] = ()

        async def seek_to_committed(self):
            return {"never-committed": None, "committed-zero": 0, "committed": 42}

        async def seek_to_beginning(self, *partitions):
            self.rewound = partitions

    consumer = Consumer()
    offsets = asyncio.run(seek_to_committed_or_beginning(consumer))
    assert offsets["committed"] == 42
    assert set(consumer.rewound) == {"never-committed", "committed-zero"}


class ConsumerOffsets:
    """The state Faust's ``Consumer._new_offset`` reads, for one partition."""

    def __init__(self, committed: int | None, acked: list[int]) -> None:
        from collections import defaultdict

        from intervaltree import IntervalTree

        self._committed_offset: dict[str, int | None] = defaultdict(lambda: None, {"tp": committed})
        self._acked: dict[str, list[int]] = defaultdict(list, {"tp": list(acked)})
        self._acked_index: dict[str, set[int]] = defaultdict(set, {"tp": set(acked)})
        self._gap: dict[str, IntervalTree] = defaultdict(IntervalTree)


def test_a_commit_never_passes_an_unacked_message_at_the_committed_offset():
    from streams.faust_tuning import new_offset_keeping_unacked_head

    # Committed 4196 is the next offset to read; 4196 itself never reached the agent.
    state = ConsumerOffsets(committed=4196, acked=[4197, 4198, 4199])
    assert faust_aiokafka.Consumer._new_offset(ConsumerOffsets(4196, [4197, 4198, 4199]), "tp") == 4200
    assert new_offset_keeping_unacked_head(state, "tp") is None
    assert state._acked["tp"] == [4197, 4198, 4199]  # kept for when 4196 is acked
    state._acked["tp"].append(4196)
    state._acked_index["tp"].add(4196)
    assert new_offset_keeping_unacked_head(state, "tp") == 4200


def test_commits_without_a_missing_head_are_unchanged():
    from streams.faust_tuning import new_offset_keeping_unacked_head

    cases = [(10, [10, 11, 12]), (10, [10, 11, 13]), (None, [5, 6]), (None, []), (0, [0, 1])]
    for committed, acked in cases:
        expected = faust_aiokafka.Consumer._new_offset(ConsumerOffsets(committed, acked), "tp")
        assert new_offset_keeping_unacked_head(ConsumerOffsets(committed, acked), "tp") == expected
    assert new_offset_keeping_unacked_head(ConsumerOffsets(0, [1, 2]), "tp") is None


def test_resuming_flow_that_already_flows_keeps_the_queued_events():
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    from streams.faust_tuning import ResumeOnceFlowControl

    def queued_after_second_resume(flow_control: FlowControlEvent) -> int:
        queue: FlowControlQueue[str] = FlowControlQueue(flow_control=flow_control, clear_on_resume=True)
        flow_control.resume()  # recovery resumes to read the changelogs
        queue.put_nowait("event fetched after the stream partitions were resumed")
        flow_control.resume()  # _resume_streams / on_recovery_completed resume again
        return queue.qsize()

    assert queued_after_second_resume(FlowControlEvent()) == 0  # mode's own: the event is gone
    assert queued_after_second_resume(ResumeOnceFlowControl()) == 1


def test_resuming_suspended_flow_still_clears_what_was_queued():
    from mode.utils.queues import FlowControlQueue

    from streams.faust_tuning import ResumeOnceFlowControl

    flow_control = ResumeOnceFlowControl()
    queue: FlowControlQueue[str] = FlowControlQueue(flow_control=flow_control, clear_on_resume=True)
    flow_control.resume()
    flow_control.suspend()
    queue.put_nowait("stale event from before the rebalance")
    flow_control.resume()
    assert queue.qsize() == 0 and flow_control.is_active()


def test_the_worker_app_uses_the_corrected_flow_control_and_commit():
    from streams.faust_tuning import ResumeOnceFlowControl

    app_class = app_with_fetch_wait(100)
    app = app_class("flow-control-test", broker="kafka://127.0.0.1:1")
    assert isinstance(app.flow_control, ResumeOnceFlowControl)
    assert app.flow_control is app.flow_control
    assert app_class.transport_class.Consumer._new_offset is not faust_aiokafka.Consumer._new_offset


class DrainState:
    """The state Faust's ``Consumer._drain_messages`` reads, fed one fetched batch."""

    def __init__(self, offsets: list[int], read_offset: int | None, acking: bool = True) -> None:
        import asyncio
        from collections import defaultdict
        from types import SimpleNamespace

        from intervaltree import IntervalTree

        self.tp = "tp"
        self.offsets = offsets
        self.handed_on: list[int] = []
        self._stopped = asyncio.Event()
        self.fetcher = SimpleNamespace(_stopped=asyncio.Event())
        self._read_offset: dict[str, int | None] = defaultdict(lambda: None, {self.tp: read_offset})
        self._committed_offset: dict[str, int | None] = defaultdict(lambda: None)
        self._gap: dict[str, IntervalTree] = defaultdict(IntervalTree)
        self._commit_every = None
        self._n_acked = 0
        self.should_stop = False
        self.suspend_flow = asyncio.Event()
        self.consumer_stopped_errors = ()
        self.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: acking))
        self.transport = SimpleNamespace(app=SimpleNamespace(should_stop=False))
        self.log = SimpleNamespace(dev=lambda *a, **k: None, info=print, exception=print)

    async def callback(self, message) -> None:
        self.handed_on.append(message.offset)

    async def getmany(self, timeout: float):
        from types import SimpleNamespace

        for offset in self.offsets:
            yield self.tp, SimpleNamespace(offset=offset, topic="rw.events", key=None, value=None)
        self.fetcher._stopped.set()

    async def sleep(self, seconds: float) -> None:
        pass

    async def wait_first(self, *coros):
        from mode.services import WaitResults

        first, *others = coros
        for other in others:
            other.close()
        return WaitResults([first], [await first], False)

    async def _add_gap(self, tp, offset_from: int, offset_to: int) -> None:
        await faust_aiokafka.Consumer._add_gap(self, tp, offset_from, offset_to)

    def gaps(self) -> list[tuple[int, int]]:
        return sorted((i.begin, i.end - 1) for i in self._gap[self.tp])


def drained(state: DrainState, drain) -> DrainState:
    import asyncio

    asyncio.run(drain(state, state.fetcher))
    return state


def test_events_read_again_after_a_seek_are_handed_on_not_dropped():
    from streams.faust_tuning import drain_messages_redelivering

    # A restarted worker: its first fetch (0..3384) was handed on while the partition was being
    # sought to the beginning, so the read offset ended at 3384; the re-read copies then arrive.
    faust_drain = faust_aiokafka.Consumer._drain_messages
    assert drained(DrainState([0, 1, 2, 3385], read_offset=3384), faust_drain).handed_on == [3385]
    state = drained(DrainState([0, 1, 2, 3385], read_offset=3384), drain_messages_redelivering)
    assert state.handed_on == [0, 1, 2, 3385]
    assert state._read_offset["tp"] == 3385


def test_no_offset_gap_is_counted_as_done():
    from streams.faust_tuning import drain_messages_redelivering

    # Faust measures a gap from the read offset, which a seek sets to the committed offset (5):
    # a message at 9 from a batch fetched before the seek marks 6..9 as done, 9 itself included,
    # and ``_new_offset`` then commits over them.
    faust_drain = faust_aiokafka.Consumer._drain_messages
    assert drained(DrainState([9], read_offset=5), faust_drain).gaps() == [(6, 9)]
    state = drained(DrainState([9, 10, 14], read_offset=5), drain_messages_redelivering)
    assert state.handed_on == [9, 10, 14]
    assert state.gaps() == []


def test_the_worker_consumer_drains_without_dropping():
    consumer_class = app_with_fetch_wait(100).transport_class.Consumer
    assert consumer_class._drain_messages is not faust_aiokafka.Consumer._drain_messages


class FlowConsumer:
    """What ``hand_on`` uses of a Faust consumer: mode's real ``wait_first`` and the flow event."""

    def __init__(self) -> None:
        import asyncio

        from mode import Service

        self.service = Service()
        self.suspend_flow = asyncio.Event()
        self.races = 0

    async def wait_first(self, *coros):
        self.races += 1
        return await self.service.wait_first(*coros)


def run(coro):
    import asyncio

    return asyncio.run(coro)


def test_a_callback_that_never_suspends_runs_without_racing_flow_suspension():
    from streams.faust_tuning import hand_on

    async def scenario():
        consumer, seen = FlowConsumer(), []

        async def callback(message):
            seen.append(message)

        for message in range(3):
            await hand_on(consumer, callback, message)
        return consumer.races, seen

    assert run(scenario()) == (0, [0, 1, 2])


def test_a_callback_that_suspends_is_finished_as_faust_would():
    import asyncio

    from streams.faust_tuning import hand_on

    async def scenario():
        consumer, seen = FlowConsumer(), []
        ready = asyncio.get_running_loop().create_future()

        async def callback(message):
            await asyncio.sleep(0)
            seen.append(await ready)  # a full producer buffer, say
            return message

        asyncio.get_running_loop().call_later(0.01, ready.set_result, "ebbed")
        await hand_on(consumer, callback, 7)
        return consumer.races, seen

    assert run(scenario()) == (1, ["ebbed"])


def test_suspending_flow_still_abandons_a_blocked_callback():
    import asyncio

    from streams.faust_tuning import hand_on

    async def scenario():
        consumer, outcome = FlowConsumer(), []

        async def callback(message):
            try:
                await asyncio.Event().wait()  # blocked until flow is suspended for a rebalance
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        asyncio.get_running_loop().call_later(0.01, consumer.suspend_flow.set)
        await asyncio.wait_for(hand_on(consumer, callback, 1), 5)
        await asyncio.sleep(0.01)
        return outcome

    assert run(scenario()) == ["cancelled"]


def test_a_failing_callback_fails_the_drain_before_or_after_suspending():
    import asyncio

    import pytest

    from streams.faust_tuning import hand_on

    async def at_once(message):
        raise ValueError("first step")

    async def later(message):
        await asyncio.sleep(0)
        raise ValueError("after a suspension")

    for callback, text in ((at_once, "first step"), (later, "after a suspension")):
        with pytest.raises(ValueError, match=text):
            run(hand_on(FlowConsumer(), callback, 1))


def test_the_drain_loop_lets_the_agents_run_between_messages():
    import asyncio

    from streams.faust_tuning import drain_messages_redelivering

    # Without the per-message race the loop never suspended for 100 messages at a time: the
    # agent fell behind and the stream buffer filled. Another task must run between any two.
    async def scenario():
        state = DrainState(list(range(5)), read_offset=None)
        ticks, seen = [0], []

        async def ticker():
            while True:
                ticks[0] += 1
                await asyncio.sleep(0)

        async def callback(message):
            seen.append(ticks[0])

        state.callback = callback
        other = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        await drain_messages_redelivering(state, state.fetcher)
        other.cancel()
        return seen

    seen = asyncio.run(scenario())
    assert len(seen) == 5 and all(b > a for a, b in itertools.pairwise(seen))
