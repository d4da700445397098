"""One batch of raw messages in, everything the worker must make durable out. No Faust here.

The agent hands a batch of (partition, offset, timestamp, value) records to :func:`process_batch`
with the cell states it holds; this module decodes, rejects, folds events into cells (skipping
any a cell already applied) and returns the rows, alerts and dead letters to write. The agent
writes those first and only then persists the touched cells and acks, so a crash anywhere
replays into the same outputs, which every sink deduplicates by key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import pyarrow as pa

from core.alerts import Alert
from core.cells import BucketOutcome, CellState, RatePoint
from core.config import DetectionConfig
from streams.records import Event, EventFields, Rejection, decode_fields

log = logging.getLogger("recallwatch.processing")


class SourceRecord(Protocol):
    """What processing reads of one message: a :class:`RawRecord`, or Faust's ``Message`` itself
    (the worker passes those as they are rather than copy a few fields of each)."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> float: ...  # broker/producer timestamp, epoch seconds
    @property
    def value(self) -> bytes | None: ...
    @property
    def key(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class RawRecord:
    partition: int
    offset: int
    timestamp: float  # broker/producer timestamp, epoch seconds
    value: bytes | None
    key: bytes | None = None


# The ``events`` and ``rates`` rows, the bulk of what a worker writes, travel as tuples in these
# column orders and go to ClickHouse column-wise through Arrow (``rows_table``): no dict per row,
# no JSON built in Python. The Arrow types are the tables' own (sinks/schema.py), DateTime as
# UInt32 epoch seconds, so both back ends store exactly what the dict rows stored.
EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("kind", pa.string()),
        ("occurred_at", pa.uint32()),
        ("serial", pa.string()),
        ("model", pa.string()),
        ("batch", pa.string()),
        ("failure_mode", pa.string()),
        ("component", pa.string()),
        ("crash", pa.uint8()),
        ("fire", pa.uint8()),
        ("injury", pa.uint8()),
        ("region", pa.string()),
        ("units", pa.uint32()),
        ("src_partition", pa.uint32()),
        ("src_offset", pa.uint64()),
        ("ingested_at", pa.uint32()),
    ]
)
RATE_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("batch", pa.string()),
        ("failure_mode", pa.string()),
        ("bucket_start", pa.uint32()),
        ("bucket_s", pa.uint32()),
        ("window_s", pa.uint32()),
        ("count", pa.uint32()),
        ("window_count", pa.uint32()),
        ("units_in_field", pa.uint64()),
        ("exposure_unit_days", pa.float64()),
        ("expected", pa.float64()),
        ("rate_per_1000", pa.float64()),
        ("window_rate_per_1000", pa.float64()),
    ]
)
EVENT_COLUMNS = tuple(EVENT_SCHEMA.names)


@dataclass
class BatchResult:
    event_rows: list[tuple[Any, ...]] = field(default_factory=list)  # in EVENT_COLUMNS order
    rate_rows: list[tuple[Any, ...]] = field(default_factory=list)  # in RATE_COLUMNS order
    reject_rows: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[tuple[SourceRecord, str]] = field(default_factory=list)
    touched: dict[str, int] = field(default_factory=dict)  # cell key -> partition
    applied: int = 0
    replayed: int = 0
    # Incidents counted only in their cell's all-modes sub-cell: their failure mode was new to a
    # cell that already watches detection.max_failure_modes modes (cell key -> how many).
    over_mode_cap: dict[str, int] = field(default_factory=dict)


def event_values(event: EventFields, record: SourceRecord, ingested_at: int) -> tuple[Any, ...]:
    """One ``events`` row in EVENT_COLUMNS order."""
    return (
        event.event_id,
        event.kind,
        int(event.occurred_ts),
        event.serial,
        event.model,
        event.batch,
        event.failure_mode,
        event.component,
        int(event.crash),
        int(event.fire),
        int(event.injury),
        event.region,
        event.units,
        record.partition,
        record.offset,
        ingested_at,
    )


def event_row(event: Event | EventFields, record: SourceRecord, ingested_at: float) -> dict[str, Any]:
    """One ``events`` row as a dict (the row-wise form of :func:`event_values`)."""
    fields = EventFields.of(event) if isinstance(event, Event) else event
    return dict(zip(EVENT_COLUMNS, event_values(fields, record, int(ingested_at)), strict=True))


def rows_table(schema: pa.Schema, rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    """Tuples in ``schema``'s column order as an Arrow table, for ``ClickHouseStore.insert_arrow``."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    return pa.Table.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)], schema=schema
    )


def rows_dicts(schema: pa.Schema, rows: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The same rows as dicts: what ``ClickHouseStore.insert`` takes."""
    return [dict(zip(schema.names, row, strict=True)) for row in rows]


def reject_row(topic: str, record: SourceRecord, reason: str, rejected_at: float) -> dict[str, Any]:
    return {
        "reject_id": f"{topic}:{record.partition}:{record.offset}",
        "topic": topic,
        "partition": record.partition,
        "offset": record.offset,
        "reason": reason[:2000],
        "payload": (record.value or b"")[:65536].decode("utf-8", errors="replace"),
        "rejected_at": int(rejected_at),
    }


def dead_letter_headers(topic: str, record: SourceRecord, reason: str) -> dict[str, bytes]:
    """The headers of a rejected message's copy on the dead-letter topic: why, and where it came from.

    Topic, partition and offset name the original (the rejects row's key too), so a consumer of the
    dead-letter topic can find it, and drop the copy a replay after a crash sends again.
    """
    return {
        "reason": reason.encode()[:4000],
        "src_topic": topic.encode(),
        "src_partition": str(record.partition).encode(),
        "src_offset": str(record.offset).encode(),
    }


def alert_row(alert: Alert, created_at: float) -> dict[str, Any]:
    row = alert.to_dict()
    row["opened_at"] = int(alert.opened_at)
    row["detector_params"] = orjson.dumps(alert.detector_params, option=orjson.OPT_SORT_KEYS).decode()
    row["detectors_fired"] = ",".join(alert.detectors_fired)
    row["created_at"] = int(created_at)
    row.pop("trigger_produced_at", None)
    return row


def alert_from_row(row: Mapping[str, Any]) -> Alert:
    """The alert an ``alerts`` row was written from (:func:`alert_row` undone)."""
    data = dict(row)
    data["detector_params"] = orjson.loads(row["detector_params"] or "{}")
    data["detectors_fired"] = [d for d in str(row["detectors_fired"]).split(",") if d]
    return Alert.from_dict(data)


def process_batch(
    records: Sequence[SourceRecord],
    cells: MutableMapping[str, CellState],
    cfg: DetectionConfig,
    topic: str,
    now: float,
) -> BatchResult:
    """Fold a batch into ``cells`` (mutated in place) and return what must be written.

    ``now`` (wall time) only stamps ``ingested_at``/``rejected_at``; detection runs on event time.
    """
    result = BatchResult()
    ingested_at = int(now)
    event_rows, rate_rows, touched = result.event_rows, result.rate_rows, result.touched
    batch_cells: dict[str, CellState] = {}  # this batch's cells, so each is looked up in ``cells`` once
    applied = replayed = 0
    for record in records:
        # The record's own timestamp, not the wall clock: a replay judges each event alike.
        decoded = decode_fields(record.value, record.timestamp, cfg.max_event_lead_s)
        if isinstance(decoded, Rejection):
            result.dead_letters.append((record, decoded.reason))
            result.reject_rows.append(reject_row(topic, record, decoded.reason, now))
            continue
        key = decoded.cell_key
        if record.key != key.encode():
            # A cell's events must share a partition (its state, its replay dedup and its changelog
            # are per partition): keyed otherwise, or not at all, they would split it in two.
            reason = f"the message key must be the event's {key!r} (model|batch), not {record.key!r:.140}"
            result.dead_letters.append((record, reason))
            result.reject_rows.append(reject_row(topic, record, reason, now))
            continue
        # Rows go out for replayed events too: the sink deduplicates, and a crash between the
        # state's changelog write and the sink write must not leave the row missing.
        event_rows.append(event_values(decoded, record, ingested_at))
        state = batch_cells.get(key)
        if state is None:
            state = cells.get(key)
            if state is None:
                state = cells[key] = CellState(decoded.model, decoded.batch)
            batch_cells[key] = state
        partition, offset = record.partition, record.offset
        if state.already_applied(partition, offset):
            replayed += 1
            continue
        outcome = apply_event(state, decoded, cfg, record.timestamp)
        state.mark_applied(partition, offset)
        touched[key] = partition
        applied += 1
        if outcome.rates:
            rate_rows.extend(outcome.rates)  # a RatePoint is a named tuple: already a row
        if outcome.alerts:
            result.alerts.extend(outcome.alerts)
        if outcome.mode_over_cap:
            result.over_mode_cap[key] = result.over_mode_cap.get(key, 0) + 1
    result.applied, result.replayed = applied, replayed
    if result.over_mode_cap:
        # Not a rejection (the events are valid and counted), but per-mode detection misses them.
        log.warning(
            "%d incidents had a failure mode past the cap of %d per cell and count in the all-modes"
            " cell only: %s",
            sum(result.over_mode_cap.values()),
            cfg.max_failure_modes,
            ", ".join(f"{k} ({n})" for k, n in sorted(result.over_mode_cap.items())[:10]),
        )
    return result


def apply_event(
    state: CellState, event: Event | EventFields, cfg: DetectionConfig, produced_at: float
) -> BucketOutcome:
    if event.kind == "shipment":
        return state.apply_shipment(cfg, event.units, event.occurred_ts, event.event_id, produced_at)
    if event.kind == "population":
        return state.apply_population(cfg, event.units, event.occurred_ts, event.event_id, produced_at)
    return state.apply_incident(cfg, event.failure_mode, event.occurred_ts, event.event_id, produced_at)


# The rates table mirrors RatePoint field for field, so a RatePoint is a rates row as it stands.
RATE_COLUMNS = RatePoint._fields
if tuple(RATE_SCHEMA.names) != RATE_COLUMNS:
    raise RuntimeError("RATE_SCHEMA must list RatePoint's fields in order")
