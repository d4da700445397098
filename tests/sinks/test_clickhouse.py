"""ClickHouse store: migrations, round trips, replay dedupe, back-end parity, escaping, URLs, errors."""

from __future__ import annotations

import math
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sinks.clickhouse import (
    ChdbStore,
    ClickHouseError,
    ClickHouseStore,
    ClickHouseUnavailable,
    ServerStore,
    open_store,
    render_sql,
    sql_literal,
)
from sinks.schema import MIGRATIONS, TABLES, apply_statement, row_counts

T0 = 1_700_000_000  # DateTime values go in and come out as int epoch seconds

UNIT_ROWS = [
    {
        "serial": f"SN-{i:04d}", "serial_prefix": "SN-", "serial_seq": i, "serial_width": 4, "model": "M",
        "batch": "B", "line": "L1", "plant": "P", "produced_at": T0, "lot_components": ["battery"],
        "lot_ids": [f"LOT-{i}"], "shipped_at": 0, "channel": "", "distributor": "", "retailer": "",
        "store": "", "region": "EU", "city": "", "sold_at": 0, "customer_id": "", "customer_phone": "",
        "customer_email": "", "member_id": "", "contact_consent": 0, "source": "t", "updated_at": T0,
        "version": 1,
    }
    for i in range(2)
]  # fmt: skip
SAMPLE_ROWS: dict[str, list[dict[str, Any]]] = {
    "events": [
        {
            "event_id": f"e{i}",
            "kind": "claim",
            "occurred_at": T0 + i,
            "serial": f"S{i}",
            "model": "M1",
            "batch": "B1",
            "failure_mode": "brake",
            "component": "caliper",
            "crash": i % 2,
            "fire": 0,
            "injury": 1,
            "region": "EU",
            "units": 1,
            "src_partition": 3,
            "src_offset": 2**40 + i,
            "ingested_at": T0 + 60,
        }
        for i in range(3)
    ],
    "rates": [
        {
            "model": "M1",
            "batch": "B1",
            "failure_mode": "*",
            "bucket_start": T0,
            "bucket_s": 3600,
            "window_s": 86400,
            "count": 4,
            "window_count": 9,
            "units_in_field": 2**33,
            "exposure_unit_days": 1.0,
            "expected": 0.1,
            "rate_per_1000": 2.5,
            "window_rate_per_1000": 1e-9,
        }
    ],
    "alerts": [
        {
            "alert_id": "a1",
            "opened_at": T0,
            "model": "M1",
            "batch": "B1",
            "failure_mode": "brake",
            "detector": "cusum",
            "detector_params": '{"k": 0.5}',
            "config_version": "v3",
            "score": 7.25,
            "count": 12,
            "expected": 3.0,
            "units_in_field": 5000,
            "rate_per_1000": 2.4,
            "expected_rate_per_1000": 0.6,
            "window_s": 604800,
            "trigger_event_id": "e2",
            "detectors_fired": "cusum,poisson",
            "created_at": T0 + 1,
        }
    ],
    "rejects": [
        {
            "reject_id": "r1",
            "topic": "claims",
            "partition": 2,
            "offset": 99,
            "reason": "bad json",
            "payload": "{not json",
            "rejected_at": T0,
        }
    ],
    "alert_deliveries": [
        {"alert_id": "a1", "channel": "slack", "status": "sent", "detail": "", "delivered_at": T0 + 0.25}
    ],
    "units": UNIT_ROWS,
    "case_events": [
        {
            "case_id": "case-1",
            "seq": i,
            "at": T0 + i + 0.5,
            "actor": "ana",
            "action": "evidence",
            "from_state": "open",
            "to_state": "open",
            "reason": f"step {i}",
            "data": '{"k": 1}',
            "identity": "cell/M1/B1/brake",
            "command_id": "",
            "recorded_at": T0 + 0.25,
        }
        for i in (1, 2)
    ],
    "case_command_results": [
        {
            "command_id": "c1",
            "case_id": "case-1",
            "status": "ok",
            "detail": "",
            "seqs": [2, 3],
            "recorded_at": T0 + 0.5,
        }
    ],
    "case_threads": [
        {
            "case_id": "case-1",
            "channel": "C1",
            "ts": "1700000000.000100",
            "posted_seq": 2,
            "updated_at": T0 + 0.5,
        }
    ],
}
ORDER = {
    "events": "event_id",
    "rates": "bucket_start",
    "alerts": "alert_id",
    "rejects": "reject_id",
    "alert_deliveries": "channel",
    "units": "serial",
    "case_events": "seq",
    "case_command_results": "command_id",
    "case_threads": "case_id",
}

HOSTILE = [
    "x' OR 1=1 --",
    "\\' OR 1=1 --",
    "'; DROP TABLE events; --",
    "trailing backslash \\",
    "\\",
    "{other}",
    "multi\nline\ttab",
    'quote " and `backtick`',
    "snow ☃ 雪",
    "\x00' OR 1=1 --",
    "\r\n\x1b",
]

# One expression per Python type the rules promise; 1.0 checks chdb's JSON doesn't turn floats into ints.
TYPED_QUERY = """
SELECT toUInt8(1) AS u8, toUInt64(18446744073709551615) AS u64, toInt64(-9223372036854775808) AS i64,
       toFloat64(1) AS f_whole, toFloat64(0.1) AS f, nan AS f_nan, -inf AS f_ninf,
       'it''s' AS s, toDateTime({t}) AS dt, toDate('2024-01-02') AS d, [1.0, 2.5] AS arr,
       CAST(NULL AS Nullable(Float64)) AS nul, CAST(2 AS Nullable(Float64)) AS nullable_f
"""
TYPED_EXPECTED = {
    "u8": 1,
    "u64": 2**64 - 1,
    "i64": -(2**63),
    "f_whole": 1.0,
    "f": 0.1,
    "f_ninf": -math.inf,
    "s": "it's",
    "dt": T0,
    "d": "2024-01-02",
    "arr": [1.0, 2.5],
    "nul": None,
    "nullable_f": 2.0,
}


def _types(value: Any) -> Any:
    return [_types(v) for v in value] if isinstance(value, list) else type(value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


# --- schema ------------------------------------------------------------------------------------------


def test_migrate_is_idempotent(store: ClickHouseStore) -> None:
    latest = MIGRATIONS[-1][0]
    assert store.migrate() == latest  # the fixture already migrated once
    assert store.migrate() == latest
    tables = {
        r["name"] for r in store.query("SELECT name FROM system.tables WHERE database = currentDatabase()")
    }
    assert {*TABLES, "schema_migrations"} <= tables
    recorded = store.query("SELECT version, description FROM schema_migrations ORDER BY version")
    assert recorded == [{"version": v, "description": d} for v, d, _ in MIGRATIONS]


def test_every_migration_statement_can_run_again(store: ClickHouseStore) -> None:
    # A crash between applying a migration and recording it runs it again on the next start.
    for _, _, statements in MIGRATIONS:
        for sql in statements:
            apply_statement(store, sql)
    columns = store.query(
        "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 'units'"
        " AND name = 'reachable'"
    )
    assert len(columns) == 1


# --- round trips and replay --------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
def test_insert_query_round_trip(store: ClickHouseStore, table: str) -> None:
    rows = SAMPLE_ROWS[table]
    assert store.insert(table, rows) == len(rows)
    cols = ", ".join(f"`{c}`" for c in rows[0])
    got = store.query(f"SELECT {cols} FROM {table} FINAL ORDER BY {ORDER[table]}")
    assert got == rows
    assert [_types(list(r.values())) for r in got] == [_types(list(r.values())) for r in rows]


def test_replay_leaves_deduplicated_counts_unchanged(store: ClickHouseStore) -> None:
    for table, rows in SAMPLE_ROWS.items():
        store.insert(table, rows)
    first = row_counts(store)
    assert first == {t: len(SAMPLE_ROWS[t]) for t in TABLES}
    for table, rows in SAMPLE_ROWS.items():  # a crash replay sends the very same rows again
        store.insert(table, rows)
    assert row_counts(store) == first
    # Raw counts prove the duplicates really exist until a merge, i.e. FINAL is doing the work.
    assert store.query("SELECT count() AS n FROM events")[0]["n"] in (3, 6)


def test_later_row_replaces_earlier_on_same_key(store: ClickHouseStore) -> None:
    row = dict(SAMPLE_ROWS["alert_deliveries"][0], status="pending")
    store.insert("alert_deliveries", [row])
    store.insert("alert_deliveries", [dict(row, status="sent")])
    assert store.query("SELECT status FROM alert_deliveries FINAL") == [{"status": "sent"}]


def test_insert_accepts_aware_datetime_and_bool(store: ClickHouseStore) -> None:
    row = dict(SAMPLE_ROWS["events"][0], occurred_at=datetime.fromtimestamp(T0, UTC), crash=True)
    store.insert("events", [row])
    assert store.query("SELECT occurred_at, crash FROM events FINAL") == [{"occurred_at": T0, "crash": 1}]


def test_insert_empty_is_noop_and_bad_rows_rejected(store: ClickHouseStore) -> None:
    assert store.insert("events", []) == 0
    with pytest.raises(ValueError, match="keys"):
        store.insert("rejects", [SAMPLE_ROWS["rejects"][0], {"reject_id": "r2"}])
    with pytest.raises(ValueError, match="identifier"):
        store.insert("events; DROP TABLE events", SAMPLE_ROWS["events"])


def test_a_query_failing_midway_leaves_the_next_answer_intact(store: ClickHouseStore) -> None:
    # chdb kept the failed query's first rows and put them in front of the next query's answer.
    with pytest.raises(ClickHouseError, match="throwIf"):
        store.query(
            "SELECT number, throwIf(number = 300000) AS x FROM numbers(1000000)"
            " SETTINGS max_block_size = 1000"
        )
    assert store.query("SELECT 1 AS one") == [{"one": 1}]


def test_backend_errors_are_wrapped(store: ClickHouseStore) -> None:
    with pytest.raises(ClickHouseError):
        store.query("SELEC 1")
    with pytest.raises(ClickHouseError):
        store.query("SELECT * FROM no_such_table")


# --- value types and parity --------------------------------------------------------------------------


def test_result_types(store: ClickHouseStore) -> None:
    (row,) = store.query(TYPED_QUERY, {"t": T0})
    assert math.isnan(row.pop("f_nan"))
    assert row == TYPED_EXPECTED
    assert {k: _types(v) for k, v in row.items()} == {k: _types(v) for k, v in TYPED_EXPECTED.items()}


@pytest.mark.server
@pytest.mark.integration
def test_backends_return_identical_values(tmp_path: Path, server_url: str) -> None:
    chdb_store, server_store = open_store(None, tmp_path / "chdb"), open_store(server_url, tmp_path)
    try:
        results = []
        for s in (chdb_store, server_store):
            s.migrate()
            for table, rows in SAMPLE_ROWS.items():
                s.insert(table, rows)
            results.append(
                [
                    s.query(TYPED_QUERY, {"t": T0}),
                    s.query(
                        "SELECT * FROM events FINAL WHERE has({ids}, event_id) AND occurred_at >= {t} "
                        "ORDER BY event_id",
                        {"ids": ["e1", "e2"], "t": T0 + 1},
                    ),
                    s.query(
                        "SELECT model, argMax(window_count, bucket_start) AS wc, max(bucket_start) AS last, "
                        "sum(exposure_unit_days) AS exp FROM rates FINAL GROUP BY model"
                    ),
                    s.query("SELECT * FROM alerts FINAL"),
                ]
            )
        chdb_res, server_res = (repr(r) for r in results)  # repr: nan != nan, and types must match too
        assert chdb_res == server_res
        assert results[0][1][0]["src_offset"] == 2**40 + 1
    finally:
        chdb_store.close()
        server_store.query(f"DROP DATABASE IF EXISTS {server_store.database}")  # type: ignore[attr-defined]
        server_store.close()


# --- parameters and injection ------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_parameters_do_not_inject(store: ClickHouseStore, hostile: str) -> None:
    store.insert("events", SAMPLE_ROWS["events"])
    store.insert("rejects", [dict(SAMPLE_ROWS["rejects"][0], payload=hostile)])
    # Round-trips byte for byte as a literal and as stored data...
    assert store.query("SELECT {s} AS s, length({s}) AS n", {"s": hostile}) == [
        {"s": hostile, "n": len(hostile.encode())}
    ]
    assert store.query("SELECT payload FROM rejects FINAL WHERE payload = {p}", {"p": hostile}) == [
        {"payload": hostile}
    ]
    # ...and as a filter it matches nothing instead of widening or ending the statement.
    assert store.query("SELECT event_id FROM events FINAL WHERE event_id = {id}", {"id": hostile}) == []
    assert row_counts(store)["events"] == 3


def test_render_sql_literals() -> None:
    sql = "SELECT {s}, {i}, {f}, {b}, {n}, {a}, {dt}, {other}"
    params = {
        "s": "a'b\\c",
        "i": -3,
        "f": 0.5,
        "b": True,
        "n": None,
        "a": ("x", 1),
        "dt": datetime.fromtimestamp(T0, UTC),
        "other": "{s}",
    }
    assert render_sql(sql, params) == f"SELECT 'a\\'b\\\\c', -3, 0.5, 1, NULL, ['x', 1], {T0}, '{{s}}'"
    assert render_sql("SELECT {x:UInt8}, '{json}'", None) == "SELECT {x:UInt8}, '{json}'"
    assert sql_literal(math.inf) == "inf" and sql_literal(math.nan) == "nan"


def test_render_sql_rejects_unknown_names_and_types() -> None:
    with pytest.raises(KeyError, match="missing"):
        render_sql("SELECT {missing}", {"present": 1})
    with pytest.raises(TypeError):
        sql_literal(object())
    with pytest.raises(ValueError, match="naive"):
        sql_literal(datetime(2024, 1, 1))


# --- URLs and availability ---------------------------------------------------------------------------


def test_open_store_embedded_for_empty_url(tmp_path: Path) -> None:
    for url in (None, ""):
        s = open_store(url, tmp_path / "nested" / "dir")
        try:
            assert isinstance(s, ChdbStore) and s.backend == "chdb"
            assert (tmp_path / "nested" / "dir").is_dir()
        finally:
            s.close()


def test_second_chdb_dir_in_one_process_is_a_clear_error(tmp_path: Path) -> None:
    first = open_store(None, tmp_path / "a")
    try:
        with pytest.raises(ClickHouseError, match="cannot open chdb data dir"):
            open_store(None, tmp_path / "b")
    finally:
        first.close()


def test_chdb_queries_from_other_threads_do_not_wait_for_each_other(tmp_path: Path) -> None:
    # Embedded mode shares one store between the worker and the API: a lookup must not queue
    # behind a long insert or scope on another thread.
    import threading

    store = open_store(None, tmp_path / "chdb")
    try:
        slow = threading.Thread(target=store.query, args=("SELECT sleepEachRow(1) FROM numbers(3)",))
        slow.start()
        time.sleep(0.3)  # the slow query is under way
        assert store.query("SELECT 1 AS one") == [{"one": 1}]
        assert slow.is_alive()  # answered while the 3-second query still ran
        slow.join()
    finally:
        store.close()
    with pytest.raises(ClickHouseError, match="closed"):
        store.query("SELECT 1")


def test_open_store_parses_server_urls(tmp_path: Path) -> None:
    s = open_store("clickhouse://alice:p%40ss@db.example:9440/recall", tmp_path)
    assert isinstance(s, ServerStore) and s.backend == "server"
    assert (s.host, s.port, s.user, s.database) == ("db.example", 9440, "alice", "recall")
    s = open_store("clickhouse://localhost", tmp_path)  # nothing connects until first use
    assert isinstance(s, ServerStore)
    assert (s.host, s.port, s.user, s.database) == ("localhost", 9000, "default", "default")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost:8123/db", "unsupported ClickHouse URL scheme 'http'"),
        ("postgres://localhost/db", "unsupported"),
        ("clickhouse:///db", "no host"),
        ("clickhouse://localhost:notaport/db", "invalid port"),
        ("clickhouse://localhost/bad-name", "identifier"),
    ],
)
def test_open_store_rejects_bad_urls(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_store(url, tmp_path)


def test_closed_port_raises_unavailable(tmp_path: Path) -> None:
    s = open_store(f"clickhouse://127.0.0.1:{_closed_port()}/db", tmp_path)
    try:
        for attempt in (
            s.migrate,
            lambda: s.query("SELECT 1"),
            lambda: s.insert("events", SAMPLE_ROWS["events"]),
        ):
            with pytest.raises(ClickHouseUnavailable):
                attempt()
    finally:
        s.close()


# --- the worker's column-wise path -------------------------------------------------------------------


def _worker_rows() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The events and rates rows a worker writes for a stretch of simulated events, plus edge values."""
    from config.settings import load_settings
    from streams.processing import RATE_SCHEMA, RawRecord, process_batch
    from streams.records import encode_event
    from streams.simulator import SimulationConfig, Simulator

    events = [e for _, batch in Simulator(SimulationConfig(seed=4, days=45)).run() for e in batch]
    records = [
        RawRecord(5, 2**40 + i, 0.0, encode_event(e), e.cell_key.encode()) for i, e in enumerate(events)
    ]
    result = process_batch(records, {}, load_settings().detection.to_core(), "rw.events", now=T0)
    edge = dict(SAMPLE_ROWS["rates"][0], units_in_field=2**64 - 1, window_rate_per_1000=1e-300)
    assert list(edge) == RATE_SCHEMA.names  # so its values are a row in column order
    edges = [tuple(dict(edge, expected=x, failure_mode=f"edge{i}").values()) for i, x in enumerate(
        (math.nan, math.inf, -math.inf, 0.1 + 0.2, -0.0, 5e-324, 1.7976931348623157e308)
    )]  # fmt: skip
    return result.event_rows, [*result.rate_rows, *edges]


RATES_KEY = ("model", "batch", "failure_mode", "window_s", "bucket_start")


def test_arrow_rows_store_exactly_what_dict_rows_store(store: ClickHouseStore) -> None:
    """The worker writes events and rates column-wise: same rows, values and types as row-wise."""
    from streams.processing import EVENT_SCHEMA, RATE_SCHEMA, rows_dicts, rows_table

    event_rows, rate_rows = _worker_rows()
    assert len(event_rows) > 1000 and len(rate_rows) > 1000
    stored = []
    for write in ("dicts", "arrow"):
        for table, schema, rows in (("events", EVENT_SCHEMA, event_rows), ("rates", RATE_SCHEMA, rate_rows)):
            store.query(f"TRUNCATE TABLE {table}")
            if write == "dicts":
                assert store.insert(table, rows_dicts(schema, rows)) == len(rows)
            else:
                assert store.insert_arrow(table, rows_table(schema, rows)) == len(rows)
        stored.append(
            repr(
                [
                    store.query("SELECT * FROM events ORDER BY event_id"),
                    store.query(f"SELECT * FROM rates ORDER BY {', '.join(RATES_KEY)}"),
                    store.query("SELECT name, type FROM system.columns WHERE database = currentDatabase() "
                                "AND table IN ('events', 'rates') ORDER BY table, name"),
                ]
            )
        )  # fmt: skip
    assert stored[0] == stored[1]
    assert store.insert_arrow("events", rows_table(EVENT_SCHEMA, [])) == 0
