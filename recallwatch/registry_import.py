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

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from registry.tabular import ValidatedBatch, check_columns, validate_batch
from sinks.registry_store import RegistryStore

BATCH_ROWS = 1_000_000
CSV_BLOCK_BYTES = 64 << 20  # a CSV batch is the rows of one block


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


@dataclass
class Batch:
    """One batch of a file: its rows, the line of each, and the lines the CSV parser had to skip."""

    rows: pa.RecordBatch | pa.Table
    first_line: int
    lines: np.ndarray | None = None  # None: rows are lines first_line, first_line + 1, ...
    skipped: list[tuple[int, str, str]] = field(default_factory=list)  # (line, reason, raw text)

    def index(self, lines: list[int]) -> np.ndarray:
        """Row positions of the given lines (which must be rows of this batch)."""
        if self.lines is None:
            return np.asarray(lines, dtype=np.int64) - self.first_line
        return np.searchsorted(self.lines, lines)


def read_batches(
    path: Path, batch_rows: int = BATCH_ROWS, csv_block_bytes: int | None = None
) -> Iterator[Batch]:
    """Batches of a file with the line number of each row.

    CSV lines count the header as line 1 (a record is one line, even with a quoted value over several,
    and a blank line is a line too); Parquet has no lines, so its "line" is the 1-based row. A CSV line
    with the wrong number of fields is skipped by the parser and handed on in ``skipped`` to be
    rejected like any bad row. ``csv_block_bytes`` (default CSV_BLOCK_BYTES) is the size of a CSV batch.
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        parquet = pq.ParquetFile(path)
        check_columns(parquet.schema_arrow.names)
        line = 1
        for batch in parquet.iter_batches(batch_size=batch_rows):
            yield Batch(batch, line)
            line += batch.num_rows
    elif suffix == ".csv":
        yield from _read_csv(path, csv_block_bytes or CSV_BLOCK_BYTES)
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (expected .csv or .parquet)")


def _read_csv(path: Path, block_bytes: int) -> Iterator[Batch]:
    with path.open("rb") as f:
        header = f.readline().decode("utf-8-sig")
    if not header.strip():
        raise ValueError(f"{path}: empty file (a CSV needs a header line)")
    columns = pacsv.read_csv(pa.py_buffer(header.encode())).schema.names
    check_columns(columns)
    skipped: list[tuple[int, str, str]] = []

    def skip(row: pacsv.InvalidRow) -> str:
        # Called only for bad lines. ``number`` counts records from the header (1), like our lines.
        if row.number is None:
            return "error"
        reason = f"expected {row.expected_columns} fields, found {row.actual_columns}"
        skipped.append((row.number, reason, row.text))
        return "skip"

    reader = pacsv.open_csv(
        path,
        # Serial parsing: the only way the parser knows a skipped line's number (no slower here).
        read_options=pacsv.ReadOptions(block_size=block_bytes, use_threads=False),
        parse_options=pacsv.ParseOptions(
            invalid_row_handler=skip,
            # Without it the reader cuts blocks at any newline, also one inside a quoted value: a
            # record that straddles a block boundary becomes two bad lines and the numbers after
            # it shift. With it, blocks end only between records.
            newlines_in_values=True,
            # Blank lines are kept as rows (every cell empty) so that the parser's record numbers,
            # and so our line numbers, are the file's lines; they are dropped below, after numbering.
            ignore_empty_lines=False,
        ),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(columns, pa.string()), strings_can_be_null=False
        ),
    )
    good = reported = 0  # rows parsed so far (blank ones too), skipped lines handed on so far
    for batch in reader:
        first_line, lines, seen, parsed = 2 + good, None, len(skipped), batch.num_rows
        if seen:
            # Row k is the (good + k)-th good line, moved down by the skipped lines before it;
            # numbered as if no line were skipped, skipped line i (0-based, in order) is at s_i - i.
            numbers = np.sort(np.array([number for number, _, _ in skipped[:seen]], dtype=np.int64))
            at = first_line + np.arange(batch.num_rows, dtype=np.int64)
            lines = at + np.searchsorted(numbers - np.arange(seen), at, side="right")
            first_line = int(lines[0]) if len(lines) else first_line
        blank = _blank_rows(batch)
        if blank is not None:
            # A blank line (or one whose every cell is empty) carries nothing to load or to lose: it
            # is skipped without a reject, as Arrow would by default, but it has kept its line number.
            if lines is None:
                lines = first_line + np.arange(batch.num_rows, dtype=np.int64)
            keep = ~blank
            batch, lines = batch.filter(pa.array(keep)), lines[keep]
            first_line = int(lines[0]) if len(lines) else first_line
        yield Batch(batch, first_line, lines, skipped[reported:seen])
        good, reported = good + parsed, seen  # blank rows included: the parser counted them
    if len(skipped) > reported:  # bad lines after the last row
        yield Batch(reader.schema.empty_table(), 2 + good, np.zeros(0, np.int64), skipped[reported:])


def _blank_rows(batch: pa.RecordBatch) -> np.ndarray | None:
    """Rows whose every cell is empty (blank lines), or None when there are none. The serial is
    checked first: on the files that matter it is never empty, so this costs one pass over it."""
    blank: pa.Array | None = None
    for column in batch.columns:
        empty = pc.equal(pc.binary_length(column), 0)
        blank = empty if blank is None else pc.and_(blank, empty)
        if not pc.any(blank).as_py():
            return None
    return None if blank is None else blank.to_numpy(zero_copy_only=False)


def import_files(
    paths: list[Path], registry: RegistryStore, *, now: int, progress: bool = True
) -> ImportReport:
    from tqdm import tqdm

    started = time.perf_counter()
    reports = []
    for i, path in enumerate(paths):
        report = FileReport(str(path))
        reports.append(report)
        # Versions are ``now << 32 | line``: with one ``now`` for all files, a unit in two files would
        # keep the row with the higher line, not the later file's. Each file gets a later second, so
        # the files of one command apply in command-line order.
        file_now = now + i
        bar = tqdm(total=None, unit=" units", desc=path.name, disable=not progress, file=sys.stderr)
        try:
            if path.suffix.lower() == ".parquet":
                # Inside the try: a file that is not Parquet fails here, and must fail alone.
                bar.total = pq.ParquetFile(path).metadata.num_rows
                bar.refresh()
            for batch, checked in _checked_ahead(read_batches(path)):
                merged = registry.merge(checked.rows, source=str(path), now=file_now)
                skipped = [(line, reason) for line, reason, _ in batch.skipped]
                rejects = sorted(checked.rejects + merged.rejects + skipped)
                report.loaded += merged.loaded
                report.rejected += len(rejects)
                report.rejects.extend(rejects[: max(0, 20 - len(report.rejects))])
                if rejects:
                    _keep_rejects(registry, path, batch, rejects, file_now)
                bar.update(batch.rows.num_rows)
        except (OSError, ValueError, pa.ArrowException) as exc:
            report.error = str(exc)
        finally:
            bar.close()
    return ImportReport(reports, time.perf_counter() - started)


def _checked_ahead(batches: Iterator[Batch]) -> Iterator[tuple[Batch, ValidatedBatch]]:
    """Read and check the next batch on a thread while the caller merges this one: Arrow and
    ClickHouse both release the GIL, so the two overlap on separate cores."""

    def read_and_check() -> tuple[Batch, ValidatedBatch] | None:
        item = next(batches, None)
        if item is None:
            return None
        return item, validate_batch(item.rows, item.first_line, item.lines)

    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(read_and_check)
        while (current := ahead.result()) is not None:
            ahead = pool.submit(read_and_check)
            yield current


def _keep_rejects(
    registry: RegistryStore,
    path: Path,
    batch: Batch,
    rejects: list[tuple[int, str]],
    now: int,
) -> None:
    # A skipped CSV line is kept as the text read; any other rejected row as its cells, as JSON.
    raw = {line: text for line, _, text in batch.skipped}
    in_batch = [line for line, _ in rejects if line not in raw]
    rows = iter(batch.rows.take(pa.array(batch.index(in_batch), pa.int64())).to_pylist())
    payloads = [
        raw[line] if line in raw else orjson.dumps(next(rows), default=str).decode() for line, _ in rejects
    ]
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
                "payload": payload,
                "rejected_at": now,
            }
            for (line, reason), payload in zip(rejects, payloads, strict=True)
        ],
    )
