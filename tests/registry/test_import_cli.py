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


def test_files_of_one_command_apply_in_command_line_order(registry: RegistryStore, tmp_path: Path) -> None:
    # One ``now`` per command and versions of ``now << 32 | line`` let U-9 of line 10 in the first
    # file beat its fix on line 2 of the second: each later file must win, whatever its lines.
    jan = tmp_path / "erp_jan.csv"
    jan.write_text("serial,model,batch,store\n" + "".join(f"U-{i},M,B,S-JAN\n" for i in range(1, 10)))
    fix = tmp_path / "erp_fix.csv"
    fix.write_text("serial,store\nU-9,S-FIXED\n")
    report = import_files([jan, fix], registry, now=NOW, progress=False)
    assert (report.loaded, report.rejected) == (10, 0)
    stores = {u["serial"]: u["store"] for u in registry.store.query("SELECT serial, store FROM units FINAL")}
    assert stores["U-9"] == "S-FIXED" and stores["U-8"] == "S-JAN"
    # And in the other order the January file, now the later one, wins again.
    import_files([fix, jan], registry, now=NOW + 60, progress=False)
    stores = {u["serial"]: u["store"] for u in registry.store.query("SELECT serial, store FROM units FINAL")}
    assert stores["U-9"] == "S-JAN"


def test_a_parquet_file_that_is_not_parquet_is_reported_and_the_next_file_loads(
    registry: RegistryStore, tmp_path: Path
) -> None:
    not_parquet = tmp_path / "export.parquet"
    not_parquet.write_text("serial,model,batch\nA-1,M,B\n")
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"serial": ["A-1"], "model": ["M"], "batch": ["B"]}), whole)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(whole.read_bytes()[:-20])
    good = tmp_path / "good.csv"
    good.write_text("serial,model,batch\nA-2,M,B\n")
    report = import_files([not_parquet, empty, truncated, good], registry, now=NOW, progress=False)
    assert [bool(f.error) for f in report.files] == [True, True, True, False]
    assert "not a parquet file" in report.files[0].error
    assert report.loaded == 1

    done = run_import(tmp_path, str(not_parquet), str(good), "--json", "--quiet")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{not_parquet}: not imported: " in done.stderr
    assert [f["loaded"] for f in json.loads(done.stdout)["files"]] == [0, 1]


@pytest.mark.parametrize("block_bytes", [64, 100, 256])
def test_quoted_newlines_across_csv_block_boundaries(block_bytes: int, tmp_path: Path) -> None:
    # Every third record has a value over two lines; with small blocks many of them straddle a block
    # boundary. Each must stay one record, and the lines after it keep their numbers.
    rows = [
        f'S-{i},M,B,"L{i}\nsecond",P,2024-01-01,' if i % 3 == 0 else f"S-{i},M,B,L{i},P,2024-01-01,"
        for i in range(2, 80)
    ]
    path = tmp_path / "multi.csv"
    path.write_text(MES_HEADER + "\n".join(rows) + "\n")
    got, skipped = [], []
    for batch in read_batches(path, csv_block_bytes=block_bytes):
        checked = validate_batch(batch.rows, batch.first_line, batch.lines)
        assert checked.rejects == []
        got += zip(
            checked.rows.column("source_line").to_pylist(),
            checked.rows.column("serial").to_pylist(),
            checked.rows.column("line").to_pylist(),
            strict=True,
        )
        skipped += batch.skipped
    assert skipped == []
    assert got == [(i, f"S-{i}", f"L{i}\nsecond" if i % 3 == 0 else f"L{i}") for i in range(2, 80)]


@pytest.mark.parametrize("block_bytes", [40, 64 << 20])
def test_blank_csv_lines_count_as_lines(
    block_bytes: int, registry: RegistryStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reported lines must be the file's lines: an editor's "go to line" must land on the bad row.
    monkeypatch.setattr("recallwatch.registry_import.CSV_BLOCK_BYTES", block_bytes)
    path = tmp_path / "blank.csv"
    path.write_text(
        "serial,model,batch,produced_at\n"  # 1
        "\n\n"  # 2, 3: blank
        "A-1,M,B,2024-01-01\n"  # 4
        "A-2,M\n"  # 5: 2 fields
        ",,,\n"  # 6: every cell empty, like a blank line
        "\n"  # 7
        "A-3,M,B,2024-13-01\n"  # 8: bad date
        "A-4,M,B,2024-01-02\n"  # 9
        "\n\n"  # 10, 11: blank lines at the end
    )
    report = import_files([path], registry, now=NOW, progress=False)
    assert report.files[0].error == ""
    assert (report.loaded, report.rejected) == (2, 2)
    assert report.files[0].rejects == [
        (5, "expected 4 fields, found 2"),
        (8, "produced_at is not a date (YYYY-MM-DD, or ISO 8601 with a timezone)"),
    ]
    lines = registry.store.query(
        "SELECT serial, version % 4294967296 AS line FROM units FINAL ORDER BY serial"
    )
    assert [(u["serial"], u["line"]) for u in lines] == [("A-1", 4), ("A-4", 9)]
