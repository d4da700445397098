"""Versioned, idempotent schema migrations shared by the chdb (26.9) and server (18.16) back ends.

The SQL is the common subset of both engines: DateTime in seconds (Float64 epoch seconds where sub-second
matters), no LowCardinality, no TTL, ``ReplacingMergeTree()`` so a replay after a crash collapses onto the
ORDER BY key. Readers must use ``FINAL`` (or argMax) to see the deduplicated rows.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from sinks.clickhouse import ClickHouseError

if TYPE_CHECKING:
    from sinks.clickhouse import ClickHouseStore

TABLES = (
    "events",
    "rates",
    "alerts",
    "rejects",
    "alert_deliveries",
    "units",
    "case_events",
    "case_command_results",
    "case_threads",
)


class SpeedOnly(str):
    """A statement that only makes queries faster (a data-skipping index). An engine that lacks the
    feature (the 18.16 server has no skipping indices) skips it: results are the same either way."""


class AddColumn(str):
    """``ALTER TABLE <table> ADD COLUMN <definition>`` when the column is missing. The 18.16 server
    has no ``ADD COLUMN IF NOT EXISTS``, so the check is a look at ``system.columns``: a crash
    between applying and recording a migration must leave it safe to run again."""

    def __new__(cls, table: str, name: str, definition: str) -> AddColumn:
        made = super().__new__(cls, f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
        made.table, made.name = table, name
        return made

    table: str
    name: str


_VERSIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version UInt32, description String, applied_at DateTime) ENGINE = MergeTree() ORDER BY version"
)

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "events, rates, alerts, rejects, alert_deliveries",
        [
            """CREATE TABLE IF NOT EXISTS events (
                event_id String, kind String, occurred_at DateTime, serial String, model String,
                batch String, failure_mode String, component String, crash UInt8, fire UInt8, injury UInt8,
                region String, units UInt32, src_partition UInt32, src_offset UInt64, ingested_at DateTime
            ) ENGINE = ReplacingMergeTree()
            PARTITION BY toYYYYMM(occurred_at)
            ORDER BY (model, batch, event_id)""",
            # failure_mode '*' is the all-modes row.
            """CREATE TABLE IF NOT EXISTS rates (
                model String, batch String, failure_mode String, bucket_start DateTime, bucket_s UInt32,
                window_s UInt32, count UInt32, window_count UInt32, units_in_field UInt64,
                exposure_unit_days Float64, expected Float64, rate_per_1000 Float64,
                window_rate_per_1000 Float64
            ) ENGINE = ReplacingMergeTree()
            ORDER BY (model, batch, failure_mode, window_s, bucket_start)""",
            """CREATE TABLE IF NOT EXISTS alerts (
                alert_id String, opened_at DateTime, model String, batch String, failure_mode String,
                detector String, detector_params String, config_version String, score Float64,
                count UInt32, expected Float64, units_in_field UInt64, rate_per_1000 Float64,
                expected_rate_per_1000 Float64, window_s UInt32, trigger_event_id String,
                detectors_fired String, created_at DateTime
            ) ENGINE = ReplacingMergeTree()
            ORDER BY alert_id""",
            # `partition` and `offset` are keywords elsewhere in the grammar: quoted to be safe.
            """CREATE TABLE IF NOT EXISTS rejects (
                reject_id String, topic String, `partition` UInt32, `offset` UInt64, reason String,
                payload String, rejected_at DateTime
            ) ENGINE = ReplacingMergeTree()
            ORDER BY reject_id""",
            """CREATE TABLE IF NOT EXISTS alert_deliveries (
                alert_id String, channel String, status String, detail String, delivered_at Float64
            ) ENGINE = ReplacingMergeTree()
            ORDER BY (alert_id, channel)""",
        ],
    ),
    (
        2,
        "traceability registry: units",
        [
            # Times are epoch seconds, 0 = not yet / unknown. Supplier lots are two parallel arrays
            # (component, lot): the 18.16 server has no Map type. `version` orders updates: the
            # highest wins, so re-importing a unit replaces it and never duplicates it.
            """CREATE TABLE IF NOT EXISTS units (
                serial String, serial_prefix String, serial_seq UInt64, serial_width UInt8,
                model String, batch String, line String, plant String, produced_at DateTime,
                lot_components Array(String), lot_ids Array(String),
                shipped_at DateTime, channel String, distributor String, retailer String, store String,
                region String, city String, sold_at DateTime,
                customer_id String, customer_phone String, customer_email String, member_id String,
                contact_consent UInt8, source String, updated_at DateTime, version UInt64
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY serial
            SETTINGS index_granularity = 1024""",
            # One file per part instead of one per column: a serial lookup reads 27 columns, and
            # opening 27 files cost more than the reading (measured 4.9 -> 3.5 ms per lookup).
            SpeedOnly(
                "ALTER TABLE units MODIFY SETTING min_rows_for_wide_part = 1000000000,"
                " min_bytes_for_wide_part = 100000000000"
            ),
            # Serials are assigned in production order, so model, batch, line and dates are nearly
            # sorted along the key: min/max per granule lets a scope skip almost everything.
            SpeedOnly("ALTER TABLE units ADD INDEX IF NOT EXISTS ix_model model TYPE minmax GRANULARITY 1"),
            SpeedOnly("ALTER TABLE units ADD INDEX IF NOT EXISTS ix_batch batch TYPE minmax GRANULARITY 1"),
            SpeedOnly("ALTER TABLE units ADD INDEX IF NOT EXISTS ix_line line TYPE set(64) GRANULARITY 1"),
            SpeedOnly("ALTER TABLE units ADD INDEX IF NOT EXISTS ix_plant plant TYPE set(64) GRANULARITY 1"),
            SpeedOnly(
                "ALTER TABLE units ADD INDEX IF NOT EXISTS ix_produced produced_at TYPE minmax GRANULARITY 1"
            ),
            SpeedOnly(
                "ALTER TABLE units ADD INDEX IF NOT EXISTS ix_shipped shipped_at TYPE minmax GRANULARITY 1"
            ),
            # A supplier lot feeds consecutive production, so a bloom filter per granule finds a lot's
            # units across models without reading the rest.
            SpeedOnly(
                "ALTER TABLE units ADD INDEX IF NOT EXISTS ix_lots lot_ids TYPE bloom_filter GRANULARITY 1"
            ),
        ],
    ),
    (
        3,
        "recall cases: case_events, case_command_results, case_threads",
        [
            # The case log, append-only: (case_id, seq) is an event's identity, so writing an event
            # again after a crash collapses onto the first copy. The state is never stored; it is
            # the fold of the log (cases.lifecycle.Case.replay). `data` is the event's JSON payload.
            """CREATE TABLE IF NOT EXISTS case_events (
                case_id String, seq UInt32, at Float64, actor String, action String, from_state String,
                to_state String, reason String, data String, identity String, command_id String,
                recorded_at Float64
            ) ENGINE = ReplacingMergeTree()
            ORDER BY (case_id, seq)""",
            # What became of each command (ok with the events' seqs, or refused with why): the API
            # waits on this row to answer a caller whose command the worker carried out.
            """CREATE TABLE IF NOT EXISTS case_command_results (
                command_id String, case_id String, status String, detail String, seqs Array(UInt32),
                recorded_at Float64
            ) ENGINE = ReplacingMergeTree()
            ORDER BY command_id""",
            # Where a case's Slack thread is and how far it got: the highest seq wins, so a restart
            # resumes after the last event posted instead of posting the thread again.
            """CREATE TABLE IF NOT EXISTS case_threads (
                case_id String, channel String, ts String, posted_seq UInt32, updated_at Float64
            ) ENGINE = ReplacingMergeTree(posted_seq)
            ORDER BY case_id""",
        ],
    ),
    (
        4,
        "units: a supplier-lot index that skips what it should",
        [
            # Migration 2's ix_lots (bloom_filter at its default 2.5 % false positives) sizes each
            # granule's filter by its few distinct lots, a couple of dozen bits, and some lot names
            # collide with many: at 10 M units BAT-0067 kept 1,768 granules of 9,770 for the 98 that
            # hold it (a 300 ms scope). At 0.1 % it keeps 98-147 (17-27 ms); inserts cost the same.
            SpeedOnly(
                "ALTER TABLE units ADD INDEX IF NOT EXISTS ix_lot_ids lot_ids"
                " TYPE bloom_filter(0.001) GRANULARITY 1"
            ),
            # Parts written before this migration get the index by a background mutation (~40 s of
            # one core at 10 M units); until then a lot scope reads those parts whole.
            SpeedOnly("ALTER TABLE units MATERIALIZE INDEX ix_lot_ids"),
            SpeedOnly("ALTER TABLE units DROP INDEX IF EXISTS ix_lots"),
        ],
    ),
    (
        5,
        "units: whether the customer is reachable, stored",
        [
            # A scope counts reachable customers; from the phone and email strings that read cost
            # ~16 % of a 1 % scope's read at 10 M units (60 -> 50 ms). Computed by every insert,
            # whatever writes it; registry.units.Unit.reachable is the same rule in Python.
            AddColumn(
                "units",
                "reachable",
                "UInt8 MATERIALIZED toUInt8(contact_consent = 1"
                " AND (customer_phone != '' OR customer_email != ''))",
            ),
            # Parts written before this migration compute it on read until this rewrites them.
            SpeedOnly("ALTER TABLE units MATERIALIZE COLUMN reachable"),
        ],
    ),
]


def applied_versions(store: ClickHouseStore) -> set[int]:
    store.query(_VERSIONS_DDL)
    return {int(r["version"]) for r in store.query("SELECT DISTINCT version FROM schema_migrations")}


def migrate(store: ClickHouseStore) -> int:
    """Apply the migrations not yet recorded, in order; return the latest schema version.

    Each statement is ``IF NOT EXISTS``, so a crash between applying and recording (or two processes
    migrating at once) only re-runs harmless statements; a duplicate version row is ignored by DISTINCT.
    """
    done = applied_versions(store)
    for version, description, statements in MIGRATIONS:
        if version in done:
            continue
        for sql in statements:
            apply_statement(store, sql)
        store.insert(
            "schema_migrations",
            [{"version": version, "description": description, "applied_at": int(time.time())}],
        )
        done.add(version)
    return max(done)  # may exceed ours if newer code already migrated this database


def apply_statement(store: ClickHouseStore, sql: str) -> None:
    """Run one migration statement; safe to run again (a crash may repeat a migration)."""
    if isinstance(sql, AddColumn):
        if not _has_column(store, sql.table, sql.name):
            store.query(sql)
    elif isinstance(sql, SpeedOnly):
        with contextlib.suppress(ClickHouseError):
            store.query(sql)
    else:
        store.query(sql)


def _has_column(store: ClickHouseStore, table: str, name: str) -> bool:
    rows = store.query(
        "SELECT count() AS n FROM system.columns"
        " WHERE database = currentDatabase() AND table = {t} AND name = {c}",
        {"t": table, "c": name},
    )
    return int(rows[0]["n"]) > 0


def row_counts(store: ClickHouseStore) -> dict[str, int]:
    """Deduplicated row count per table (FINAL collapses replays that have not been merged yet)."""
    return {t: int(store.query(f"SELECT count() AS n FROM {t} FINAL")[0]["n"]) for t in TABLES}
