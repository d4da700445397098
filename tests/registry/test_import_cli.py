"""`recallwatch registry import` as a user runs it: summary, rejects with file and line, exit codes,
Parquet as well as CSV, and --publish sending denominators to the worker's topic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recallwatch.registry_import import import_files, read_batches
from registry.tabular import validate_batch
from sinks.clickhouse import ClickHouseStore
from sinks.registry_store import RegistryStore
from streams.broker import running_broker
from streams.producer import ensure_topics

pytestmark = pytest.mark.integration
NOW = 1_760_000_000


def run_import(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        "RW_CLICKHOUSE__DATA_DIR": str(tmp_path / "ch"),
        "RW_LOG_LEVEL": "WARNING",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [sys.executable, "-m", "recallwatch.cli", "registry", "import", *args],
        env={**base, **(env or {})},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_csv_and_parquet_with_rejects_and_exit_codes(tmp_path: Path) -> None:
    csv_file = tmp_path / "mes.csv"
    csv_file.write_text("serial,model,batch,produced_at\nA-1,M,B1,2024-01-01\nA-2,M,B1,2024-13-01\n")
    parquet_file = tmp_path / "erp.parquet"
    pq.write_table(
        pa.table({"serial": ["A-1", "A-3", ""], "shipped_at": ["2024-02-01", "2024-02-01", "2024-02-01"]}),
        parquet_file,
    )
    done = run_import(tmp_path, str(csv_file), str(parquet_file), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["loaded"], summary["rejected"]) == (2, 3)
    assert f"{csv_file}:3: rejected: produced_at is not a date" in done.stderr
    assert f"{parquet_file}:2: rejected: unknown serial" in done.stderr  # A-3 was never produced
    assert f"{parquet_file}:3: rejected: serial is empty" in done.stderr
    assert "it/s" in done.stderr or "units/s" in done.stderr  # the progress bar

    again = run_import(tmp_path, str(csv_file), "--quiet")
    assert again.returncode == 0 and again.stdout.startswith("loaded 1 units, rejected 1 rows")

    bad = tmp_path / "bad.csv"
    bad.write_text("serial,colour\nA-1,red\n")
    failed = run_import(tmp_path, str(bad), "--quiet")
    assert failed.returncode == 1 and "unknown columns ['colour']" in failed.stderr
    assert run_import(tmp_path, str(tmp_path / "nope.csv")).returncode == 2


def test_publish_sends_absolute_units_in_field_per_cell(tmp_path: Path) -> None:
    from kafka import KafkaConsumer

    units = tmp_path / "units.csv"
    rows = [
        f"K-{i},KT,B{i % 2},2024-01-01,{'2024-02-0' + str(1 + i % 3) if i < 7 else ''}" for i in range(10)
    ]
    units.write_text("serial,model,batch,produced_at,shipped_at\n" + "\n".join(rows) + "\n")
    with running_broker() as broker:
        ensure_topics(broker.bootstrap, ["rw.events"], 1)
        done = run_import(tmp_path, str(units), "--publish", "--json", env={"RW_KAFKA__URL": broker.url})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["populations_sent"] == 2
        consumer = KafkaConsumer(
            "rw.events",
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=5000,
        )
        events = [orjson.loads(m.value) for m in consumer]
        consumer.close()
    assert sorted((e["batch"], e["units"], e["kind"]) for e in events) == [
        ("B0", 4, "population"),  # K-0, 2, 4, 6 shipped
        ("B1", 3, "population"),  # K-1, 3, 5
    ]
    assert run_import(tmp_path, str(units), "--publish").returncode == 2  # no broker configured


MES_HEADER = "serial,model,batch,line,plant,produced_at,supplier_lots\n"
BROKEN_CSV = (
    MES_HEADER
    + "A-1,M,B1,L1,P1,2024-01-01,battery=B-1\n"  # line 2
    + "A-2,M,B1,L1,Hall 2, East,2024-01-01,\n"  # line 3: unquoted comma, 8 fields
    + "A-3,M,B1,L1,P1,2024-01-02,\n"  # line 4
    + "A-4,M,B1,L1,2024-01-01,\n"  # line 5: 6 fields
    + 'A-5,M,B1,"L1\nsecond",P1,2024-01-03,\n'  # line 6: a quoted value over two lines is one line
    + "A-6,M,B1,L1,P1,2024-01-04,\n"  # line 7
    + "A-7,M,B1,L1,P1,2024-13-01,\n"  # line 8: bad date, rejected after the parser
    + "A-8,M,B1,L"  # line 9: truncated last line, 4 fields
)


@pytest.fixture
def registry(store: ClickHouseStore) -> RegistryStore:
    return RegistryStore(store)


def test_lines_with_the_wrong_number_of_fields_are_rejected_rows(
    registry: RegistryStore, tmp_path: Path
) -> None:
    path = tmp_path / "mes.csv"
    path.write_text(BROKEN_CSV)
    report = import_files([path], registry, now=NOW, progress=False)
    assert report.files[0].error == ""
    assert (report.loaded, report.rejected) == (4, 4)
    assert report.files[0].rejects == [
        (3, "expected 7 fields, found 8"),
        (5, "expected 7 fields, found 6"),
        (8, "produced_at is not a date (YYYY-MM-DD, or ISO 8601 with a timezone)"),
        (9, "expected 7 fields, found 4"),
    ]
    units = registry.store.query("SELECT serial, line FROM units FINAL ORDER BY serial")
    assert [(u["serial"], u["line"]) for u in units] == [
        ("A-1", "L1"),
        ("A-3", "L1"),
        ("A-5", "L1\nsecond"),
        ("A-6", "L1"),
    ]
    kept = registry.store.query(
        "SELECT offset, reason, payload FROM rejects FINAL WHERE topic = 'import' ORDER BY offset"
    )
    assert [(r["offset"], r["reason"]) for r in kept] == [
        (3, f"{path}:3: expected 7 fields, found 8"),
        (5, f"{path}:5: expected 7 fields, found 6"),
        (8, f"{path}:8: produced_at is not a date (YYYY-MM-DD, or ISO 8601 with a timezone)"),
        (9, f"{path}:9: expected 7 fields, found 4"),
    ]
    assert [r["payload"] for r in kept if r["offset"] != 8] == [
        "A-2,M,B1,L1,Hall 2, East,2024-01-01,",
        "A-4,M,B1,L1,2024-01-01,",
        "A-8,M,B1,L",
    ]
    assert orjson.loads(kept[2]["payload"])["serial"] == "A-7"

    again = import_files([path], registry, now=NOW + 60, progress=False)
    assert (again.loaded, again.rejected) == (4, 4)
    assert registry.store.query("SELECT count() AS n FROM rejects FINAL")[0]["n"] == 4
    assert registry.store.query("SELECT count() AS n FROM units FINAL")[0]["n"] == 4


@pytest.mark.parametrize("block_bytes", [64, 200, 64 << 20])
def test_lines_stay_right_across_csv_blocks(
    block_bytes: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small blocks split the file into many batches: a row's line must count the skipped lines before
    # it, whichever batch they fell in, and a file ending in bad lines still reports them.
    monkeypatch.setattr("recallwatch.registry_import.CSV_BLOCK_BYTES", block_bytes)
    rows = [f"S-{i},M,B,L,P,2024-01-01," if i % 5 else f"S-{i},M,B" for i in range(2, 60)]
    path = tmp_path / "many.csv"
    path.write_text(MES_HEADER + "\n".join(rows) + "\nS-60,M\n")
    lines, skipped, batches = [], [], 0
    for batch in read_batches(path):
        checked = validate_batch(batch.rows, batch.first_line, batch.lines)
        assert checked.rejects == []
        batch_lines = checked.rows.column("source_line").to_pylist()
        assert checked.rows.column("serial").to_pylist() == [f"S-{line}" for line in batch_lines]
        lines += batch_lines
        batches += 1
        skipped += [(line, reason) for line, reason, _ in batch.skipped]
    assert lines == [i for i in range(2, 60) if i % 5]
    assert skipped == [(i, "expected 7 fields, found 3") for i in range(5, 60, 5)] + [
        (60, "expected 7 fields, found 2")
    ]
    assert batches > 5 or block_bytes > 1000
