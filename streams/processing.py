"""One batch of raw messages in, everything the worker must make durable out. No Faust here.

The agent hands a batch of (partition, offset, timestamp, value) records to :func:`process_batch`
with the cell states it holds; this module decodes, rejects, folds events into cells (skipping
any a cell already applied) and returns the rows, alerts and dead letters to write. The agent
writes those first and only then persists the touched cells and acks, so a crash anywhere
replays into the same outputs, which every sink deduplicates by key.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from core.alerts import Alert
from core.cells import BucketOutcome, CellState, RatePoint
from core.config import DetectionConfig
from streams.records import Event, Rejection, decode_event


@dataclass(frozen=True, slots=True)
class RawRecord:
    partition: int
    offset: int
    timestamp: float  # broker/producer timestamp, epoch seconds
    value: bytes | None


@dataclass
class BatchResult:
    event_rows: list[dict[str, Any]] = field(default_factory=list)
    rate_rows: list[dict[str, Any]] = field(default_factory=list)
    reject_rows: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[tuple[RawRecord, str]] = field(default_factory=list)
    touched: dict[str, int] = field(default_factory=dict)  # cell key -> partition
    applied: int = 0
    replayed: int = 0


def event_row(event: Event, record: RawRecord, ingested_at: float) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "kind": event.kind,
        "occurred_at": int(event.occurred_ts),
        "serial": event.serial,
        "model": event.model,
        "batch": event.batch,
        "failure_mode": event.failure_mode,
        "component": event.component,
        "crash": int(event.severity.crash),
        "fire": int(event.severity.fire),
        "injury": int(event.severity.injury),
        "region": event.region,
        "units": event.units,
        "src_partition": record.partition,
        "src_offset": record.offset,
        "ingested_at": int(ingested_at),
    }


def reject_row(topic: str, record: RawRecord, reason: str, rejected_at: float) -> dict[str, Any]:
    return {
        "reject_id": f"{topic}:{record.partition}:{record.offset}",
        "topic": topic,
        "partition": record.partition,
        "offset": record.offset,
        "reason": reason[:2000],
        "payload": (record.value or b"")[:65536].decode("utf-8", errors="replace"),
        "rejected_at": int(rejected_at),
    }


def alert_row(alert: Alert, created_at: float) -> dict[str, Any]:
    row = alert.to_dict()
    row["opened_at"] = int(alert.opened_at)
    row["detector_params"] = orjson.dumps(alert.detector_params, option=orjson.OPT_SORT_KEYS).decode()
    row["detectors_fired"] = ",".join(alert.detectors_fired)
    row["created_at"] = int(created_at)
    row.pop("trigger_produced_at", None)
    return row


def process_batch(
    records: Sequence[RawRecord],
    cells: MutableMapping[str, CellState],
    cfg: DetectionConfig,
    topic: str,
    now: float,
) -> BatchResult:
    """Fold a batch into ``cells`` (mutated in place) and return what must be written.

    ``now`` (wall time) only stamps ``ingested_at``/``rejected_at``; detection runs on event time.
    """
    result = BatchResult()
    for record in records:
        decoded = decode_event(record.value)
        if isinstance(decoded, Rejection):
            result.dead_letters.append((record, decoded.reason))
            result.reject_rows.append(reject_row(topic, record, decoded.reason, now))
            continue
        # Rows go out for replayed events too: the sink deduplicates, and a crash between the
        # state's changelog write and the sink write must not leave the row missing.
        result.event_rows.append(event_row(decoded, record, now))
        key = decoded.cell_key
        state = cells.get(key)
        if state is None:
            state = cells[key] = CellState(decoded.model, decoded.batch)
        if state.already_applied(record.partition, record.offset):
            result.replayed += 1
            continue
        outcome = apply_event(state, decoded, cfg, record.timestamp)
        state.mark_applied(record.partition, record.offset)
        result.touched[key] = record.partition
        result.applied += 1
        result.rate_rows.extend(_rate_row(p) for p in outcome.rates)
        result.alerts.extend(outcome.alerts)
    return result


def apply_event(state: CellState, event: Event, cfg: DetectionConfig, produced_at: float) -> BucketOutcome:
    if event.kind == "shipment":
        return state.apply_shipment(cfg, event.units, event.occurred_ts, event.event_id, produced_at)
    if event.kind == "population":
        return state.apply_population(cfg, event.units, event.occurred_ts, event.event_id, produced_at)
    return state.apply_incident(cfg, event.failure_mode, event.occurred_ts, event.event_id, produced_at)


RATE_COLUMNS = tuple(f.name for f in fields(RatePoint))


def _rate_row(point: RatePoint) -> dict[str, Any]:
    # The rates table mirrors RatePoint field for field; no asdict(), which deep-copies per row.
    return {name: getattr(point, name) for name in RATE_COLUMNS}
