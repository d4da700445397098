"""``recallwatch registry import``: ERP/MES/CRM exports (CSV or Parquet) into the registry.

Files are read a batch at a time (memory stays flat for any file size), checked column-wise, and
merged into ``units``; each bad row is reported with its file, line and reason and kept in the
``rejects`` table (topic ``import``), so nothing a user handed in disappears silently.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from registry.tabular import ValidatedBatch, check_columns, validate_batch
from sinks.registry_store import RegistryStore

BATCH_ROWS = 1_000_000


@dataclass
class FileReport:
    path: str
    loaded: int = 0
    rejected: int = 0
    rejects: list[tuple[int, str]] = field(default_factory=list)  # first few, for the terminal
    error: str = ""


@dataclass
class ImportReport:
    files: list[FileReport]
    seconds: float

    @property
    def loaded(self) -> int:
        return sum(f.loaded for f in self.files)

    @property
    def rejected(self) -> int:
        return sum(f.rejected for f in self.files)

    def as_dict(self) -> dict[str, object]:
        return {
            "loaded": self.loaded,
            "rejected": self.rejected,
            "seconds": round(self.seconds, 3),
            "units_per_s": round(self.loaded / self.seconds) if self.seconds > 0 else None,
            "files": [
                {"path": f.path, "loaded": f.loaded, "rejected": f.rejected, "error": f.error or None}
                for f in self.files
            ],
        }


def read_batches(path: Path, batch_rows: int = BATCH_ROWS) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Batches of a file with the line number of each batch's first row.

    CSV lines count the header as line 1; Parquet has no lines, so its "line" is the 1-based row.
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        parquet = pq.ParquetFile(path)
        check_columns(parquet.schema_arrow.names)
        line = 1
        for batch in parquet.iter_batches(batch_size=batch_rows):
            yield batch, line
            line += batch.num_rows
    elif suffix == ".csv":
        with path.open("rb") as f:
            header = f.readline().decode("utf-8-sig")
        if not header.strip():
            raise ValueError(f"{path}: empty file (a CSV needs a header line)")
        columns = pacsv.read_csv(pa.py_buffer(header.encode())).schema.names
        check_columns(columns)
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=64 << 20),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(columns, pa.string()), strings_can_be_null=False
            ),
        )
        line = 2
        for batch in reader:
            yield batch, line
            line += batch.num_rows
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (expected .csv or .parquet)")


def import_files(
    paths: list[Path], registry: RegistryStore, *, now: int, progress: bool = True
) -> ImportReport:
    from tqdm import tqdm

    started = time.perf_counter()
    reports = []
    for path in paths:
        report = FileReport(str(path))
        reports.append(report)
        total = pq.ParquetFile(path).metadata.num_rows if path.suffix.lower() == ".parquet" else None
        bar = tqdm(total=total, unit=" units", desc=path.name, disable=not progress, file=sys.stderr)
        try:
            for batch, first_line, checked in _checked_ahead(read_batches(path)):
                merged = registry.merge(checked.rows, source=str(path), now=now)
                rejects = sorted(checked.rejects + merged.rejects)
                report.loaded += merged.loaded
                report.rejected += len(rejects)
                report.rejects.extend(rejects[: max(0, 20 - len(report.rejects))])
                if rejects:
                    _keep_rejects(registry, path, batch, first_line, rejects, now)
                bar.update(batch.num_rows)
        except (OSError, ValueError, pa.ArrowException) as exc:
            report.error = str(exc)
        finally:
            bar.close()
    return ImportReport(reports, time.perf_counter() - started)


def _checked_ahead(
    batches: Iterator[tuple[pa.RecordBatch, int]],
) -> Iterator[tuple[pa.RecordBatch, int, ValidatedBatch]]:
    """Read and check the next batch on a thread while the caller merges this one: Arrow and
    ClickHouse both release the GIL, so the two overlap on separate cores."""

    def read_and_check() -> tuple[pa.RecordBatch, int, ValidatedBatch] | None:
        item = next(batches, None)
        if item is None:
            return None
        return item[0], item[1], validate_batch(item[0], item[1])

    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(read_and_check)
        while (current := ahead.result()) is not None:
            ahead = pool.submit(read_and_check)
            yield current


def _keep_rejects(
    registry: RegistryStore,
    path: Path,
    batch: pa.RecordBatch,
    first_line: int,
    rejects: list[tuple[int, str]],
    now: int,
) -> None:
    rows = batch.take(pa.array([line - first_line for line, _ in rejects])).to_pylist()
    registry.store.insert(
        "rejects",
        [
            {
                # Same file, line and reason -> same id: re-importing a file does not pile up copies.
                "reject_id": hashlib.sha256(f"{path}\0{line}\0{reason}".encode()).hexdigest()[:32],
                "topic": "import",
                "partition": 0,
                "offset": line,
                "reason": f"{path}:{line}: {reason}",
                "payload": orjson.dumps(row, default=str).decode(),
                "rejected_at": now,
            }
            for (line, reason), row in zip(rejects, rows, strict=True)
        ],
    )
