"""Faust's Kafka consumer and flow control with six corrections, made through small subclasses.

1. The fetch long-poll wait. Faust's aiokafka driver always asks brokers to hold a fetch up to
   1.5 s. A broker should answer as soon as data arrives, but Tansu 0.6 does not when a fetch
   spans several partitions (measured: median 0.48 s, max 1.23 s per message at 1.5 s, versus
   11 ms and 45 ms at 100 ms), and that wait lands straight on alert latency.

2. Rewinding partitions that have no committed offset. On a rebalance Faust drops the messages
   still queued for its agents and seeks every partition back to its committed offset to read
   them again; aiokafka's ``seek_to_committed`` only seeks when that offset is above 0, so a
   partition with no commit yet keeps its fetch position and the dropped messages are never read
   again, and Faust's check for an unacked head skips a committed offset of None or 0, so it can
   commit over them. Seeking such partitions to the beginning, which is what
   ``auto_offset_reset="earliest"`` means anyway, rereads them; the cells skip what they applied.

3. Resuming flow that is already flowing. After a rebalance Faust's recovery resumes flow once to
   read the changelogs, then resumes the stream partitions, seeks them, and calls
   ``app.flow_control.resume()`` again; mode's ``FlowControlEvent.resume`` clears every agent
   queue each time. By that second call the fetcher is already delivering the new generation's
   events, and ``Consumer._drain_messages`` has moved its read offset past them, so the queued
   ones are wiped and never read again (the kill -9 test lost 1-3 events in about one run of a
   dozen, each queued at that instant). Here a resume while flow is not suspended does nothing.

4. Committing over an unacked head. Faust's ``Consumer._new_offset`` refuses to commit over an
   unacked head only when ``min(acked) - committed > 1``, but the committed offset is the *next*
   offset to read, so with committed=C and C unacked it still commits past C (measured once: the
   event at C was wiped by 3 and the commit then went over it for good). Here it refuses whenever
   ``min(acked) > committed``: a missing head holds the commit back until it is acked or the
   partition is read again from C after a rebalance; the event is never skipped.

5. Dropping re-read events as already read. ``Consumer._drain_messages`` drops every fetched
   message below ``_read_offset[tp]``, and sets that offset after each message it hands on. A
   seek (``perform_seek`` after every rebalance) resets it, but a batch fetched before the seek
   is still being handed on and moves it back up, so the events the seek asked to read again are
   dropped as duplicates when they arrive (traced: a restarted worker fetches 0-3384 while its
   seek to the beginning runs, then drops the re-read 0-3384). If the first copies never reached
   the agent, they are gone for good: in one of 32 kill -9 runs a restarted worker's agent never
   saw its first fetch (0-3374 and 0-3362 of its two partitions, fetched during that seek) and
   went on from 3375 and 3363. Why those first copies missed the agent is not known. Here nothing
   is dropped: replays are harmless (the cells skip offsets they applied), a loss is not. Nor are
   offset gaps recorded: Faust counts them as acked when committing, measured from a read offset
   that seeks reset, and these topics have no real holes (no compaction, no transactions), so a
   "gap" could only be events that were fetched but not handed on.

6. Racing every message against flow suspension. The drain loop awaits each message's callback
   in ``wait_first`` against ``suspend_flow``: four tasks and an ``asyncio.wait`` per message, a
   quarter of the worker's event-loop time. Here a callback that finishes without suspending (the
   usual case) runs directly, and one that suspends races as before. The loop then yields after
   every message: the race used to, and without it the agent fell behind in bursts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms = 1500

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms  # read by aiokafka when it starts
        return consumer

    async def seek_to_committed(self) -> Any:
        return await self.call_thread(seek_to_committed_or_beginning, self._ensure_consumer())


class ResumeOnceFlowControl(FlowControlEvent):
    """``app.flow_control`` whose ``resume`` clears the agent queues only when flow was suspended.

    mode's ``FlowControlEvent.resume`` always clears the queues. Faust resumes twice after a
    rebalance (``Recovery._restart_recovery`` to read changelogs, then ``_resume_streams`` or
    ``on_recovery_completed`` after resuming the stream partitions and seeking them); between
    the two the fetcher already puts new events in the queues and ``_drain_messages`` records
    their offsets as read, so the second clear loses them: re-fetched copies are dropped as
    already read. Events that reach a queue while flow is suspended are cleared by the first
    resume as before (and ``on_partitions_revoked`` clears the queues itself).
    """

    def resume(self) -> None:
        if self.is_active():
            return
        super().resume()


def new_offset_keeping_unacked_head(consumer: Any, tp: TP) -> int | None:
    """``Consumer._new_offset``, but never past an unacked message at the committed offset.

    Faust returns ``None`` (no commit) only when ``min(acked) - committed > 1``; the committed
    offset is the next one to read, so with committed=C and acks from C+1 on it committed over C,
    losing C for good if it had not been processed. Acks come in offset order here, so a missing
    head only means C has not been processed yet: wait for it.
    """
    acked = consumer._acked[tp]
    committed = consumer._committed_offset[tp]
    if acked and committed is not None and min(acked) > committed:
        return None
    offset: int | None = faust_aiokafka.Consumer._new_offset(consumer, tp)
    return offset


async def seek_to_committed_or_beginning(consumer: Any) -> Any:
    """Seek each partition to its committed offset, and partitions with none to the beginning."""
    offsets = await consumer.seek_to_committed()
    uncommitted = [tp for tp, offset in offsets.items() if offset is None or offset <= 0]
    if uncommitted:
        await consumer.seek_to_beginning(*uncommitted)
    return offsets


async def drain_messages_redelivering(consumer: Any, fetcher: Any) -> None:
    """Faust's ``Consumer._drain_messages``, but a message below the read offset is handed on.

    Faust drops it as already read; after a seek that loses events whose first copies were
    fetched before the seek and never reached an agent (point 5 of the module docstring). Nor
    are offset gaps recorded: Faust counts a gap as acked when it commits, and on these topics
    (never compacted, no transactions) a jump in offsets can only be fetched events that were not
    handed on, so counting it would commit over them. And it runs each message's callback through
    :func:`hand_on` and yields after every message (point 6). Otherwise Faust 0.15.3's loop.
    """
    callback = consumer.callback
    getmany = consumer.getmany
    consumer_should_stop = consumer._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    set_read_offset = consumer._read_offset.__setitem__
    set_flag = consumer.diag.set_flag
    unset_flag = consumer.diag.unset_flag
    commit_every = consumer._commit_every
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await consumer.sleep(0)
            if not consumer.should_stop:
                async for tp, message in ait:
                    if commit_every is not None and consumer._n_acked >= commit_every:
                        consumer._n_acked = 0
                        await consumer.commit()
                    await hand_on(consumer, callback, message)
                    set_read_offset(tp, message.offset)  # kept for Faust's bookkeeping; never drops
                    # Let the agents run after every message, as Faust's per-message race did:
                    # yielding every 100 messages (Faust's own pace besides the race) let the
                    # stream buffer fill and pause the partition, and halved the worker's rate.
                    await asyncio.sleep(0)
                unset_flag(CONSUMER_FETCHING)
    except consumer.consumer_stopped_errors:
        if consumer.transport.app.should_stop:
            consumer.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if consumer.transport.app.should_stop:
            consumer.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        consumer.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)


async def hand_on(consumer: Any, callback: Any, message: Any) -> None:
    """``await consumer.wait_first(callback(message), consumer.suspend_flow.wait())``, cheaply.

    Faust races every message's callback against flow suspension, which costs four tasks and an
    ``asyncio.wait`` per message: a quarter of the worker's event-loop time in a profile of
    bench/pipeline.py. The race only matters when the callback suspends (a full producer buffer),
    and almost every call finishes without suspending, so the callback's first step runs here
    directly; if it does suspend, the rest of it races flow suspension exactly as in Faust.
    """
    call = callback(message)
    try:
        awaited = call.send(None)
    except StopIteration:
        return
    await consumer.wait_first(_Resume(call, awaited), consumer.suspend_flow.wait())


class _Resume:
    """Await the rest of coroutine ``call``, whose first step already ran and yielded ``awaited``:
    what ``yield from`` would do, handing each yielded future to the task running this."""

    def __init__(self, call: Any, awaited: Any) -> None:
        self.call, self.awaited = call, awaited

    def __await__(self) -> Any:
        call, awaited = self.call, self.awaited
        while True:
            try:
                sent = yield awaited
            except GeneratorExit:
                call.close()
                raise
            except BaseException as exc:  # cancellation included: the callback sees it
                try:
                    awaited = call.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    awaited = call.send(sent)
                except StopIteration as stop:
                    return stop.value


def app_with_fetch_wait(fetch_max_wait_ms: int) -> type[faust.App]:
    """A ``faust.App`` subclass whose Kafka consumer long-polls at most ``fetch_max_wait_ms``."""

    class ConsumerThread(_ConsumerThread):
        pass

    ConsumerThread.fetch_max_wait_ms = fetch_max_wait_ms

    class TunedConsumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> Any:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        def _new_offset(self, tp: TP) -> int | None:
            return new_offset_keeping_unacked_head(self, tp)

        async def _drain_messages(self, fetcher: Any) -> None:
            await drain_messages_redelivering(self, fetcher)

    class Transport(faust_aiokafka.Transport):
        Consumer = TunedConsumer

    class App(faust.App):
        consumer_thread_class = ConsumerThread
        transport_class = Transport

        def _new_transport(self) -> Any:
            return Transport(self.conf.broker_consumer, self)

        @cached_property
        def flow_control(self) -> FlowControlEvent:
            return ResumeOnceFlowControl(loop=self.loop)

    return App
