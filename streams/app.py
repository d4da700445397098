"""The Faust worker: agents that decode, call the core, and emit.

``ingest`` takes small batches from the events topic, folds them into per-cell state (a Faust table
whose changelog partition is the source partition) and sends alerts at once; every flush interval it
writes the rows, then persists the touched cells, then acks their events.
``cases`` and ``case-threads`` (streams/case_agents.py) turn alerts and commands into case events
and follow each case in its own Slack thread.
``registry`` folds production, shipment, sale and ownership events into the traceability registry
and sends each touched cell's new count of units in the field to ``ingest`` as its denominator.
Sinks that are down are retried with backoff: an outage delays delivery, it never drops data.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import faust
import orjson
from faust.types import TP

from cases.risk import load_risk_matrix
from config.settings import Settings
from models.alarm_ranker import AlarmRanker
from recallwatch.case_desk import CaseDesk
from sinks.alarm_context import AlarmContext
from sinks.case_store import CaseStore
from sinks.clickhouse import ClickHouseStore
from sinks.registry_store import RegistryStore
from streams.alert_ranking import AlertRanking
from streams.case_agents import CaseAgentDeps, add_case_agents, case_key
from streams.faust_tuning import app_with_fetch_wait
from streams.flushing import FaustTableCells, Flusher, PendingFlush, Sent, confirm_sent
from streams.peer_agent import add_peer_scan
from streams.processing import (
    EVENT_SCHEMA,
    RATE_SCHEMA,
    RawRecord,
    alert_row,
    dead_letter_headers,
    process_batch,
    reject_row,
    rows_table,
)
from streams.records import encode_event
from streams.registry_events import (
    Cell,
    cell_population_event,
    movable_serials,
    registry_batch,
    shipped_cells,
)

log = logging.getLogger("recallwatch.worker")
T = TypeVar("T")


@dataclass
class WorkerStats:
    """Counters the demo and the bench read; in-process only."""

    processed: int = 0
    replayed: int = 0
    rejected: int = 0
    alerts: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    alert_sent_at: dict[str, float] = field(default_factory=dict)


async def retry_until_done(
    what: str, action: Callable[[], Awaitable[T]], initial_s: float, max_s: float
) -> T:
    """Run ``action`` until it succeeds, backing off; a sink outage must never lose data."""
    delay = initial_s
    while True:
        try:
            return await action()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any sink failure: keep the batch, wait, try again
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(max_s, delay * 2)


_gc_settled = False


def settle_garbage_collector() -> None:
    """Keep Python's cyclic garbage collector off what the worker holds for its whole life.

    The ingest agent keeps every event until the flush that acks it, so each event's objects
    outlive the young generations, and every few thousand events a full collection walked the
    whole heap: modules, Faust, the chdb session, a couple of hundred thousand objects that live
    as long as the process (measured: 1.3 s of full collections per 100k events, about a tenth
    of the worker's time; 0.3 s with this). Frozen when ingestion starts, that start-up heap is
    left out of every later collection (a frozen object that ever became cyclic garbage would
    stay until exit), and young collections run every 10,000 allocations instead of 700, which
    the asyncio tasks Faust makes per message reached several times per batch.
    """
    global _gc_settled
    if not _gc_settled:  # once per process: a rebalance restarts the agent, not the process
        _gc_settled = True
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)


def alert_ranking(settings: Settings, store: ClickHouseStore, desk: CaseDesk) -> AlertRanking | None:
    """The ranker named by the settings, reading its context from ClickHouse; None when unset."""
    if not settings.ranking.ranker_file:
        return None
    # A bad file fails the worker at start (RankerFileError says why), not at the first alert.
    ranker = AlarmRanker.load(Path(settings.ranking.ranker_file))
    meta = ranker.meta
    context = AlarmContext(store, int(meta.get("window_days", 90)), int(meta.get("history_days", 3650)))
    # A few flushes' time for the alarming events' rows to land (see AlertRanking._until_written).
    flush_wait_s = 4 * settings.worker.flush_interval_s
    return AlertRanking(ranker, context, desk.recalls_on, settings.ranking.timeout_s, flush_wait_s)


def create_app(
    settings: Settings,
    broker_url: str,
    store: ClickHouseStore,
    notifier: Any,
    stats: WorkerStats | None = None,
    clock: Callable[[], float] = time.time,
) -> faust.App:
    k = settings.kafka
    stats = stats if stats is not None else WorkerStats()
    cfg = settings.detection.to_core()
    app = app_with_fetch_wait(k.fetch_max_wait_ms)(
        k.app_id,
        broker=broker_url,
        store="memory://",
        datadir=str(settings.worker.data_dir),
        topic_partitions=k.partitions,
        broker_rebalance_timeout=k.rebalance_timeout_s,
        broker_session_timeout=k.session_timeout_s,
        broker_heartbeat_interval=k.heartbeat_interval_s,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.worker.commit_interval_s,
        web_enabled=False,
        table_standby_replicas=0,
        producer_linger_ms=1,
        # Tansu 0.6 reports a partition's high-water mark as the last *batch's* base offset + 1,
        # and Faust's table recovery stops at the high-water mark: the tail of a multi-record
        # batch would never be recovered. One record per batch keeps the mark exact (measured:
        # 2000 records gave 4000 = 2000 + 2000 with this, 1996 without). Real Kafka needs none.
        producer_max_batch_size=1 if k.one_record_per_batch else 16_384,
    )
    app.recallwatch_stats = stats  # type: ignore[attr-defined]
    events_topic = app.topic(
        k.events_topic, key_serializer="raw", value_serializer="raw", partitions=k.partitions
    )
    dlq_topic = app.topic(k.dead_letter_topic, key_serializer="raw", value_serializer="raw")
    alerts_topic = app.topic(
        k.alerts_topic, key_serializer="raw", value_serializer="raw", partitions=k.partitions
    )
    case_events_topic = app.topic(
        k.case_events_topic, key_serializer="raw", value_serializer="raw", partitions=k.partitions
    )
    registry_topic = app.topic(
        k.registry_topic, key_serializer="raw", value_serializer="raw", partitions=k.partitions
    )
    registry = RegistryStore(store)
    cell_table = app.Table("cells", default=None, partitions=k.partitions, key_type=str, value_type=bytes)
    cells = FaustTableCells(cell_table)
    retry_s = (settings.clickhouse.retry_initial_s, settings.clickhouse.retry_max_s)

    async def insert(table: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            await retry_until_done(
                f"ClickHouse insert into {table}",
                lambda: asyncio.to_thread(store.insert, table, rows),
                *retry_s,
            )

    async def insert_columns(table: str, schema: Any, rows: list[tuple[Any, ...]]) -> None:
        """Insert row tuples column-wise: built into Arrow once, off the event loop."""
        if rows:
            data = await asyncio.to_thread(rows_table, schema, rows)
            await retry_until_done(
                f"ClickHouse insert into {table}",
                lambda: asyncio.to_thread(store.insert_arrow, table, data),
                *retry_s,
            )

    async def write_rows(work: PendingFlush) -> None:
        await insert_columns("events", EVENT_SCHEMA, work.event_rows)
        await insert_columns("rates", RATE_SCHEMA, work.rate_rows)
        await insert("rejects", work.reject_rows)
        await insert("alerts", work.alert_rows)

    def owned(partition: int) -> bool:
        """Whether this worker holds the events partition now (and so the cells keyed to it)."""
        return TP(k.events_topic, partition) in app.consumer.assignment()

    flusher = Flusher(cells, write_rows, owned)
    pending, process_lock, flush = flusher.pending, flusher.process_lock, flusher.flush

    @app.agent(events_topic)
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        # Small batches keep alerts prompt; rows, cell state and acks are flushed together on an
        # interval. Nothing is acked before its cell is persisted, and no cell is persisted before
        # the rows and alerts it produced are durable, so a crash anywhere replays exactly.
        pending.stream = stream
        settle_garbage_collector()
        # The flusher is this agent's own task, not a Faust timer: Faust stops its timers before it
        # waits for unacked events on shutdown, so a timer would leave that wait hanging forever.
        flusher = asyncio.ensure_future(flush_forever())
        try:
            await consume(stream)
        finally:
            flusher.cancel()

    async def flush_forever() -> None:
        while True:
            await asyncio.sleep(settings.worker.flush_interval_s)
            await flush_or_log()

    async def flush_or_log() -> None:
        """A flush whose failure ends neither the flusher nor the agent: its work is put back, and
        the next flush retries it."""
        try:
            await flush()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("flush failed")

    async def consume(stream: faust.StreamT[bytes]) -> None:
        async for batch in stream.noack_take(settings.worker.batch_max, settings.worker.batch_within_s):
            async with process_lock:
                records = [e.message for e in batch]  # partition, offset, timestamp, raw value
                result = process_batch(records, cells, cfg, k.events_topic, clock())
                sent = []
                for alert in result.alerts:
                    key, value = case_key(alert), orjson.dumps(alert.to_dict())
                    sent.append(await Sent.of(partial(alerts_topic.send, key=key, value=value)))
                    stats.alert_sent_at[alert.alert_id] = clock()
                for record, reason in result.dead_letters:
                    sent.append(await Sent.of(partial(dead_letter, k.events_topic, record, reason)))
                pending.add(batch, result, [alert_row(a, clock()) for a in result.alerts], sent)
                if result.replayed:
                    log.warning("skipped %d replayed events their cells had already applied", result.replayed)
                stats.processed += len(records) - len(result.dead_letters)
                stats.replayed += result.replayed
                stats.rejected += len(result.dead_letters)
            # A batch that alerted is flushed at once: the cases agent ranks its alert from these
            # rows (and waits for them), so they should not wait for the flush interval.
            if result.alerts or len(pending.events) >= settings.worker.flush_max_events:
                await flush_or_log()

    @app.agent(registry_topic)
    async def registry_updates(stream: faust.StreamT[bytes]) -> None:
        # Written before acked: a crash replays the batch, and replaying sets the same fields again.
        async for batch in stream.noack_take(settings.worker.batch_max, settings.worker.batch_within_s):
            by_partition: dict[int, list[RawRecord]] = {}
            for e in batch:
                m = e.message
                by_partition.setdefault(m.partition, []).append(
                    RawRecord(m.partition, m.offset, m.timestamp, m.value)
                )
            for records in by_partition.values():
                await apply_registry_records(records)
            for e in batch:
                await stream.ack(e)

    async def apply_registry_records(records: list[RawRecord]) -> None:
        checked = registry_batch(records)
        by_offset = {r.offset: r for r in records}
        rejects = list(checked.rejects)
        recount: set[str] = set()  # serials whose (current) cells are counted after the batch
        left: dict[Cell, int] = {}  # cells a shipped unit may have left, with its shipment time
        for run in checked.runs:
            rows = run.rows
            # Read before the merge: afterwards a moved unit no longer says which cell it left, and
            # that cell's count would stay too high (the new cell's is counted from ``recount``).
            movable = movable_serials(rows)
            if movable:
                before = await read_units(movable)
                for cell, at in shipped_cells(before).items():
                    left[cell] = max(left.get(cell, 0), at)
                recount.update(s for s, unit in before.items() if shipped_cells({s: unit}))
            merged = await retry_until_done(
                "registry merge",
                lambda rows=rows: asyncio.to_thread(
                    registry.merge, rows, source=k.registry_topic, now=int(clock())
                ),
                *retry_s,
            )
            rejects.extend((by_offset[line], reason) for line, reason in merged.rejects)
            refused = {line for line, _ in merged.rejects}
            for serial, line in zip(
                rows.column("serial").to_pylist(), rows.column("source_line").to_pylist(), strict=True
            ):
                if line in checked.shipment_offsets and line not in refused:
                    recount.add(serial)
        sent = [await Sent.of(partial(dead_letter, k.registry_topic, r, why)) for r, why in rejects]
        await insert("rejects", [reject_row(k.registry_topic, r, why, clock()) for r, why in rejects])
        stats.rejected += len(rejects)
        if recount or left:
            sent += await send_populations(recount, left)
        # Confirmed before the batch is acked: a committed batch is never read again.
        await retry_until_done("registry messages", lambda: confirm_sent(sent), *retry_s)

    async def read_units(serials: Sequence[str]) -> dict[str, dict[str, Any]]:
        return await retry_until_done(
            "registry read", lambda: asyncio.to_thread(registry.units_by_serial, sorted(serials)), *retry_s
        )

    async def send_populations(serials: set[str], left: dict[Cell, int]) -> list[Sent]:
        """Each touched cell's units in the field, as an absolute count: replays set, never add.

        ``left`` are cells a shipped unit may have moved out of, with its shipment time: one left
        with no shipped unit gets a count of 0 dated then (a cell that never had one gets nothing).
        """
        cells = {(row["model"], row["batch"]) for row in (await read_units(serials)).values()}
        sent = []
        for model, batch in sorted(cells | left.keys()):
            at, count = await retry_until_done(
                "registry count",
                lambda m=model, b=batch: asyncio.to_thread(registry.cell_population, m, b),
                *retry_s,
            )
            if count == 0:
                if (model, batch) not in left:  # a shipment taken back: nothing to count from
                    continue
                at = left[(model, batch)]
            event = cell_population_event(model, batch, at, count, clock())
            if isinstance(event, str):
                sent += await refuse_population(model, batch, at, count, event)
                continue
            key, value = event.cell_key.encode(), encode_event(event)
            sent.append(await Sent.of(partial(events_topic.send, key=key, value=value)))
        return sent

    async def refuse_population(model: str, batch: str, at: int, count: int, reason: str) -> list[Sent]:
        """A count no event can carry: to the dead-letter topic and the rejects table, keyed by the
        cell, time and count (a replay rewrites the same row), never a crash that would loop forever."""
        log.error("%s", reason)
        payload = orjson.dumps(
            {"kind": "population", "model": model, "batch": batch, "at": at, "units": count}
        )
        record = RawRecord(-1, -1, clock(), payload)  # no source position: it is the registry's count
        sent = [await Sent.of(partial(dead_letter, k.events_topic, record, reason))]
        row = reject_row(k.events_topic, record, reason, clock())
        row["reject_id"] = f"{k.events_topic}:population:{model}|{batch}:{at}:{count}"
        await insert("rejects", [row])
        stats.rejected += 1
        return sent

    async def dead_letter(topic: str, record: Any, reason: str) -> Awaitable[Any]:
        """A rejected message's copy on the dead-letter topic, as it came, with why and where from;
        returns the broker's confirmation."""
        headers = dead_letter_headers(topic, record, reason)
        return await dlq_topic.send(value=record.value or b"", headers=headers)

    async def reject(payload: bytes, reason: str, source: Any) -> None:
        """A message the case agents cannot read: to the dead-letter topic and the rejects table,
        under the topic, partition and offset it came from (a replay writes the same row again)."""
        log.error("rejected a case message: %s", reason)
        topic, partition, offset = (
            (k.alerts_topic, 0, 0) if source is None else (source.topic, source.partition, source.offset)
        )
        record = RawRecord(partition, offset, clock(), payload)
        sent = [await Sent.of(partial(dead_letter, topic, record, reason))]
        await retry_until_done("dead letter", lambda: confirm_sent(sent), *retry_s)
        row = reject_row(topic, record, reason, clock())
        if source is None:  # no position to key it by: the payload is the next best thing
            row["reject_id"] = f"{topic}:{hashlib.blake2b(payload, digest_size=10).hexdigest()}"
        await insert("rejects", [row])

    def retry(what: str, action: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        return retry_until_done(what, action, *retry_s)

    desk = CaseDesk(CaseStore(store), load_risk_matrix(settings.cases.risk_matrix), clock)
    ranking = alert_ranking(settings, store, desk)
    deps = CaseAgentDeps(
        desk, notifier, insert, retry, clock, stats, reject, ranking.rank if ranking else None
    )
    add_peer_scan(app, settings, store, desk, alerts_topic, retry, clock)
    add_case_agents(
        app, alerts_topic, case_events_topic, deps, settings.cases.escalate_after_s,
        settings.cases.escalation_check_s,
    )  # fmt: skip
    return app
