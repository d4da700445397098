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

from streams.broker import running_broker
from streams.producer import ensure_topics

pytestmark = pytest.mark.integration


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
