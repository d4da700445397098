"""What the ingest agent holds between flushes, and the order in which a flush makes it durable.

A flush writes the rows, waits for the broker to confirm every message the batch sent (alerts,
dead letters), persists the touched cells to the changelog and waits for the broker to confirm
those too, and only then acks the events. Acked events can be committed, and a committed event is
never read again, so everything it caused must be on disk first: its rows in ClickHouse, its
messages in Kafka, and a cell snapshot that includes it in the changelog. Otherwise a new owner
of the partition recovers a cell that has not seen the event and never reads the event again.

Waiting is the point. Faust's ``send_changelog`` only queues the snapshot in the producer's own
buffer, and ``Producer.flush`` (which Faust runs before each commit and on revocation) gives up
on that buffer once a message takes longer than 0.1 s to go out, so a busy broker let offsets be
committed past snapshots that were still queued. The cell that recovered from the changelog then
lacked those events for good, and its next bucket rows overwrote the right counts with smaller
ones (kill -9 test, about one CI run in five: 352 counted for 532 events of one cell).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from core.cells import CellState

log = logging.getLogger("recallwatch.worker")


class DeliveryFailed(Exception):
    """The broker refused or never confirmed a message; the flush is retried."""


@dataclass
class Sent:
    """A message sent while a batch was processed, kept until the broker confirms it."""

    send: Callable[[], Awaitable[Awaitable[Any]]]  # sends it (again); returns its confirmation
    confirmation: Awaitable[Any]

    @classmethod
    async def of(cls, send: Callable[[], Awaitable[Awaitable[Any]]]) -> Sent:
        return cls(send, await _attempt(send))


async def _attempt(send: Callable[[], Awaitable[Awaitable[Any]]]) -> Awaitable[Any]:
    """Send; a send that raises (the producer's buffer stayed full, the broker is away) becomes a
    failed confirmation, so the caller carries on and the next :func:`confirm_sent` sends again.
    Raised in the middle of a batch, it would leave cells advanced past events never acked."""
    try:
        return await send()
    except Exception as exc:
        failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        failed.set_exception(exc)
        return failed


async def confirm_sent(sent: list[Sent]) -> None:
    """Wait for every message's confirmation; send again those that failed, and raise.

    Sent again, a message is confirmed by the next flush; until then its events stay unacked.
    Alerts and dead letters are keyed by their source, so a second copy is harmless. A message the
    broker will never take (too large, not authorised: Kafka marks those errors not retriable) is
    logged and let go rather than retried forever: it would hold every later event back.
    """
    failed = []
    for index, error in await _failures([s.confirmation for s in sent]):
        message = sent[index]
        if getattr(error, "retriable", True) is False:
            log.error("the broker refused a message for good, not sending it again: %r", error)
            message.confirmation = _settled()
            continue
        failed.append(error)
        message.confirmation = await _attempt(message.send)
    if failed:
        raise DeliveryFailed(f"{len(failed)} of {len(sent)} messages not confirmed: {failed[0]!r}")


async def _failures(confirmations: list[Awaitable[Any]]) -> list[tuple[int, BaseException]]:
    """Wait for every confirmation; the position and error of each that failed."""
    results = await asyncio.gather(*confirmations, return_exceptions=True)
    return [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]


def _settled() -> asyncio.Future[Any]:
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


@dataclass
class PendingFlush:
    """What the ingest agent processed but has not yet made durable and acked."""

    stream: Any = None
    events: list[Any] = field(default_factory=list)
    event_rows: list[tuple[Any, ...]] = field(default_factory=list)  # processing.EVENT_SCHEMA order
    rate_rows: list[tuple[Any, ...]] = field(default_factory=list)  # processing.RATE_SCHEMA order
    reject_rows: list[dict[str, Any]] = field(default_factory=list)
    alert_rows: list[dict[str, Any]] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    dirty: dict[str, int] = field(default_factory=dict)

    def add(self, events: list[Any], result: Any, alert_rows: list[dict[str, Any]], sent: list[Sent]) -> None:
        self.events.extend(events)
        self.event_rows.extend(result.event_rows)
        self.rate_rows.extend(result.rate_rows)
        self.reject_rows.extend(result.reject_rows)
        self.alert_rows.extend(alert_rows)
        self.sent.extend(sent)
        self.dirty.update(result.touched)

    def take(self) -> PendingFlush:
        """Hand over everything pending and start afresh."""
        taken = PendingFlush(
            self.stream,
            self.events,
            self.event_rows,
            self.rate_rows,
            self.reject_rows,
            self.alert_rows,
            self.sent,
            self.dirty,
        )
        self.events, self.event_rows, self.rate_rows, self.reject_rows, self.alert_rows = [], [], [], [], []
        self.sent, self.dirty = [], {}
        return taken

    def put_back(self, work: PendingFlush, done: int) -> None:
        """A flush that failed after ``done`` of its events (acked, or let go as no longer this
        worker's): back in front of what came since.

        Dropped, its events would never be acked (the partition's commit stuck behind them) while
        their cells, persisted by a later flush, would skip them on replay: their rows would never
        be written. Put back, the next flush writes them again (rows are keyed, so idempotent).
        """
        self.events[:0] = work.events[done:]
        self.event_rows[:0] = work.event_rows
        self.rate_rows[:0] = work.rate_rows
        self.reject_rows[:0] = work.reject_rows
        self.alert_rows[:0] = work.alert_rows
        self.sent[:0] = work.sent
        self.dirty = {**work.dirty, **self.dirty}


class FaustTableCells(MutableMapping[str, CellState]):
    """The cell table seen as a mapping of live objects; writes go to the changelog by hand.

    The table is declared with raw byte values: the changelog carries pickled cells, recovery puts
    those bytes back in the table, and the first read unpickles them in place. Because recovery
    always overwrites with bytes, an object left over from before a rebalance can never shadow
    state another worker advanced meanwhile.
    """

    def __init__(self, table: Any) -> None:
        self.table = table

    def __getitem__(self, key: str) -> CellState:
        value = self.table.data[key]
        if isinstance(value, bytes):
            # Only this worker writes the changelog (an internal topic), so unpickling it is safe.
            value = pickle.loads(value)
            self.table.data[key] = value
        return value  # type: ignore[no-any-return]

    def __setitem__(self, key: str, value: CellState) -> None:
        self.table.data[key] = value

    def __delitem__(self, key: str) -> None:
        del self.table.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.table.data)

    def __len__(self) -> int:
        return len(self.table.data)

    def snapshots(self, dirty: dict[str, int], owned: Callable[[int], bool]) -> dict[str, tuple[int, bytes]]:
        """Each dirty cell of a partition this worker still owns, pickled, with its partition.

        A cell whose partition went to another worker is left out (Faust may have dropped it too):
        its new owner recovers it from the changelog and reads its events again from the committed
        offset, and a late snapshot from here could land after the owner's and undo its progress.
        """
        data = self.table.data
        return {
            key: (partition, pickle.dumps(self[key], protocol=pickle.HIGHEST_PROTOCOL))
            for key, partition in dirty.items()
            if key in data and owned(partition)
        }

    async def persist(self, key: str, partition: int, snapshot: bytes) -> Awaitable[Any]:
        """Send a cell's snapshot to the changelog; returns the broker's confirmation to await.

        Explicit partition: the state of a cell must live beside the cell's events so the worker
        that owns the events recovers the state, whatever partitioner producers used. Sent straight
        to the producer, not through ``Table.send_changelog``'s buffer (see the module docstring).
        """
        table = self.table
        return await table.changelog_topic.send(  # type: ignore[no-any-return]
            key=key,
            value=snapshot,
            partition=partition,
            key_serializer=table.key_serializer,
            value_serializer=table.value_serializer,
            callback=table._on_changelog_sent,
            force=True,  # never held back to commit time (Faust's stream_publish_on_commit)
        )


async def make_durable(
    work: PendingFlush,
    snapshots: dict[str, tuple[int, bytes]],
    write_rows: Callable[[PendingFlush], Awaitable[None]],
    persist: Callable[[str, int, bytes], Awaitable[Awaitable[Any]]],
) -> None:
    """Everything a flush must have on disk before it acks ``work``'s events, in order.

    The rows first, then the batch's messages, then the cell snapshots: a snapshot is the promise
    that its events need not be processed again, so it goes last, and the flush acks nothing
    until the broker has confirmed every one of them.
    """
    await write_rows(work)
    await confirm_sent(work.sent)
    confirmations = [await persist(key, partition, snap) for key, (partition, snap) in snapshots.items()]
    if failures := await _failures(confirmations):
        first = failures[0][1]
        raise DeliveryFailed(
            f"{len(failures)} of {len(confirmations)} cell snapshots not confirmed: {first!r}"
        )


class Flusher:
    """Takes what the ingest agent processed, makes it durable (:func:`make_durable`), then acks it.

    ``process_lock`` guards the cells and ``pending`` while the agent folds a batch in; only taking
    the pending work and snapshotting its cells holds processing up, and the slow writes run while
    new batches are folded in. Each snapshot holds exactly the events whose rows this flush writes,
    so persisting it after those rows keeps replay exact. One flush runs at a time, which keeps the
    changelog writes in order.
    """

    def __init__(
        self,
        cells: FaustTableCells,
        write_rows: Callable[[PendingFlush], Awaitable[None]],
        owned: Callable[[int], bool],
    ) -> None:
        self.cells, self.write_rows, self.owned = cells, write_rows, owned
        self.pending = PendingFlush()
        self.process_lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()

    async def flush(self) -> None:
        pending, owned = self.pending, self.owned
        async with self._flush_lock:
            async with self.process_lock:
                if not pending.events:
                    return
                work = pending.take()
                try:  # in the same hold as the take: a batch folded in later changes the cells
                    snapshots = self.cells.snapshots(work.dirty, owned)
                except Exception:
                    pending.put_back(work, 0)
                    raise
            done = 0
            last: dict[int, int] = {}
            try:
                await make_durable(work, snapshots, self.write_rows, self.cells.persist)
                ack = work.stream.ack
                held: dict[int, bool] = {}  # asked once per partition and flush, not per event
                for event in work.events:
                    message = event.message
                    partition = message.partition
                    if partition not in held:
                        held[partition] = owned(partition)
                    # An event of a partition given away is let go, not acked: its cell was not
                    # persisted, and its new owner reads it again from the committed offset.
                    if held[partition]:
                        await ack(event)
                        if message.offset > last.get(partition, -1):
                            last[partition] = message.offset
                    done += 1
            except BaseException:
                # Cancelled too (the agent stopping mid-flush): dropped, the work's events would
                # never be acked while later snapshots, which include them, skip them on replay.
                # put_back does not wait, so it needs no lock and survives the cancellation.
                pending.put_back(work, done)
                raise
        # Per-partition high offsets make a gap in processing visible in the logs.
        log.info("flushed %d events and %d cells; last offsets %s", len(work.events), len(snapshots), last)
