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
import pickle
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from core.cells import CellState


class DeliveryFailed(Exception):
    """The broker refused or never confirmed a message; the flush is retried."""


@dataclass
class Sent:
    """A message sent while a batch was processed, kept until the broker confirms it."""

    send: Callable[[], Awaitable[Awaitable[Any]]]  # sends it (again); returns its confirmation
    confirmation: Awaitable[Any]

    @classmethod
    async def of(cls, send: Callable[[], Awaitable[Awaitable[Any]]]) -> Sent:
        return cls(send, await send())


async def confirm_sent(sent: list[Sent]) -> None:
    """Wait for every message's confirmation; send again those that failed, and raise.

    Sent again, a message is confirmed by the next flush; until then its events stay unacked.
    Alerts and dead letters are keyed by their source, so a second copy is harmless.
    """
    if not sent:
        return
    results = await asyncio.gather(*(s.confirmation for s in sent), return_exceptions=True)
    failed = [(s, r) for s, r in zip(sent, results, strict=True) if isinstance(r, BaseException)]
    for message, _ in failed:
        message.confirmation = await message.send()
    if failed:
        raise DeliveryFailed(f"{len(failed)} of {len(sent)} messages not confirmed: {failed[0][1]!r}")


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

    def put_back(self, work: PendingFlush, acked: int) -> None:
        """A flush that failed after ``acked`` of its events: back in front of what came since.

        Dropped, its events would never be acked (the partition's commit stuck behind them) while
        their cells, persisted by a later flush, would skip them on replay: their rows would never
        be written. Put back, the next flush writes them again (rows are keyed, so idempotent).
        """
        self.events[:0] = work.events[acked:]
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

    def snapshots(self, dirty: dict[str, int]) -> dict[str, tuple[int, bytes]]:
        """Each dirty cell still held, pickled, with its partition.

        A cell Faust dropped because its partition went to another worker is left out: its new
        owner recovers it from the changelog and reads its events again from the committed offset.
        """
        data = self.table.data
        return {
            key: (partition, pickle.dumps(self[key], protocol=pickle.HIGHEST_PROTOCOL))
            for key, partition in dirty.items()
            if key in data
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
    results = await asyncio.gather(*confirmations, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise DeliveryFailed(f"{len(errors)} of {len(results)} cell snapshots not confirmed: {errors[0]!r}")
