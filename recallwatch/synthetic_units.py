"""Synthetic traceability registry exports (one row per manufactured unit) for benchmarks and tests.

:func:`write_synthetic_units` writes ``n`` units straight to a Parquet or CSV file with embedded
ClickHouse (chdb) over ``numbers(n)``: 10 million rows take seconds, not minutes, and nothing passes
through Python. Everything is deterministic given ``(n, seed, models, batch_units)``.

The returned :class:`SyntheticLayout` knows the production side arithmetically (serials, batches,
lines, plants, production times, supplier lots), so a bench can build scopes and know their sizes
without reading the file. Shipment, sale and customer columns are pseudo-random per unit
(``cityHash64(i, seed, ...)``) and only describable statistically: ~97 % shipped, ~70 % of those sold.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

COLUMNS = (
    "serial", "model", "batch", "line", "plant", "produced_at", "supplier_lots", "shipped_at", "channel",
    "distributor", "retailer", "store", "region", "city", "sold_at", "customer_id", "customer_phone",
    "customer_email", "member_id", "contact_consent",
)  # fmt: skip
PLANTS = ("PLANT-SZ", "PLANT-MTY", "PLANT-BRN")  # lines L1-L2, L3-L4, L5-L6
LINES = ("L1", "L2", "L3", "L4", "L5", "L6")
START = 1_672_531_200  # 2023-01-01T00:00:00Z: seq 0 of every model
SPAN_S = 730 * 86_400  # each model is produced over ~2 years
DAY = 86_400
PRODUCTION_KEYS = ("models", "batches", "lines", "plants", "supplier_lots", "produced_from", "produced_to")
_CITIES = {
    "EU-North": "Stockholm Oslo Copenhagen Helsinki Tallinn Riga Gothenburg",
    "EU-West": "Paris London Amsterdam Brussels Dublin Lyon Rotterdam Manchester",
    "EU-South": "Madrid Rome Lisbon Barcelona Milan Athens Valencia",
    "EU-East": "Warsaw Prague Budapest Bucharest Vienna Krakow Brno Sofia",
    "US-West": "Seattle Portland Denver Phoenix Sacramento Oakland Fresno",
    "US-East": "Boston Atlanta Miami Philadelphia Baltimore Charlotte Pittsburgh Newark",
    "LATAM": "Monterrey Guadalajara Bogota Lima Santiago Quito Medellin",
    "APAC": "Shenzhen Singapore Osaka Seoul Sydney Melbourne Taipei Bangkok",
}
CITIES = tuple(c for cs in _CITIES.values() for c in cs.split())  # 60 cities, 8 regions
CITY_REGIONS = tuple(r for r, cs in _CITIES.items() for _ in cs.split())
DISTRIBUTORS = ("Arrowline", "Bluepath", "Cargonet", "Distrimax", "Eurolog", "Fastfreight", "Globex",
                "Hubway", "Interdis", "Jetstock")  # fmt: skip


def _arr(values: tuple[str, ...]) -> str:
    return "[" + ",".join(f"'{v}'" for v in values) + "]"


def _iso(expr: str) -> str:
    return f"formatDateTime(toDateTime({expr}, 'UTC'), '%Y-%m-%dT%H:%i:%SZ', 'UTC')"


@dataclass(frozen=True)
class SyntheticLayout:
    """What :func:`write_synthetic_units` wrote; unit ``i`` is row ``i`` of the file (0-based).

    Units are split into ``models`` contiguous blocks; within a model, ``seq`` counts from 0 and
    ``batch_units`` consecutive units share a batch, line and plant. Supplier lots are cut over the
    global unit index, so a lot near a model boundary spans two models: lot ``x`` of a component with
    ``L`` units a lot covers units ``[x * L - off, (x + 1) * L - off)`` (the first and last lots are
    partial); battery lots ``BAT-x`` have ``L = n // 100`` (1 % of units), ``off = L // 3``, motor lots
    ``MOT-x`` ``L = n // 500``, ``off = L // 2``. Scope dates are whole days, both ends inclusive.
    """

    path: Path
    fmt: str
    n: int
    seed: int
    models: int
    batch_units: int
    model_names: tuple[str, ...]
    battery_lot_units: int
    motor_lot_units: int
    step_s: int  # seconds between consecutive units of one model

    def lot_span(self, lot: str) -> tuple[int, int]:
        """The units ``[lo, hi)`` of supplier lot ``BAT-nnnn`` or ``MOT-nnnn``."""
        kind, _, num = lot.partition("-")
        if kind not in ("BAT", "MOT") or not num.isdigit():
            raise ValueError(f"unknown supplier lot {lot!r}: expected BAT-nnnn or MOT-nnnn")
        size = self.battery_lot_units if kind == "BAT" else self.motor_lot_units
        lo = int(num) * size - (size // 3 if kind == "BAT" else size // 2)
        return max(0, lo), min(self.n, lo + size)

    def model_start(self, k: int) -> int:
        return (k * self.n + self.models - 1) // self.models

    def model_units(self, k: int) -> int:
        return self.model_start(k + 1) - self.model_start(k)

    @property
    def batch_width(self) -> int:
        return max(4, len(str(max(0, self.model_units(0) - 1) // self.batch_units)))

    def serial_of(self, i: int) -> str:
        if not 0 <= i < self.n:
            raise IndexError(f"unit {i} is outside 0..{self.n - 1}")
        k = i * self.models // self.n
        return f"{self.model_names[k]}-{i - self.model_start(k):09d}"

    def batch_name(self, k: int, b: int) -> str:
        return f"{self.model_names[k]}-B{b:0{self.batch_width}d}"

    def sample_serials(self, k: int, seed: int) -> list[str]:
        """``k`` distinct existing serials (all of them when ``k >= n``), the same for the same seed."""
        return [self.serial_of(i) for i in random.Random(seed).sample(range(self.n), min(k, self.n))]

    def expected_count(self, scope: dict[str, Any]) -> int:
        """Units matching ``scope`` (values OR'ed within a key, keys AND'ed); production keys only."""
        unknown = set(scope) - set(PRODUCTION_KEYS)
        if unknown:
            raise ValueError(f"cannot count {sorted(unknown)} from the layout: they are hash-based")
        ranges: list[tuple[int, int]] | None = None  # global [lo, hi) from supplier lots
        if "supplier_lots" in scope:
            ranges = [self.lot_span(lot) for lot in scope["supplier_lots"]]
        t_lo = _day(scope["produced_from"]) if "produced_from" in scope else None
        t_hi = _day(scope["produced_to"]) + DAY if "produced_to" in scope else None
        total = 0
        for k, name in enumerate(self.model_names):
            if "models" in scope and name not in scope["models"]:
                continue
            start, count = self.model_start(k), self.model_units(k)
            s_lo = 0 if t_lo is None else max(0, -(-(t_lo - START) // self.step_s))
            s_hi = count if t_hi is None else min(count, max(0, -(-(t_hi - START) // self.step_s)))
            for b in range(s_lo // self.batch_units, -(-s_hi // self.batch_units)):
                ln = (b + k) % 6
                if "lines" in scope and LINES[ln] not in scope["lines"]:
                    continue
                if "plants" in scope and PLANTS[ln // 2] not in scope["plants"]:
                    continue
                if "batches" in scope and self.batch_name(k, b) not in scope["batches"]:
                    continue
                lo = start + max(s_lo, b * self.batch_units)
                hi = start + min(s_hi, (b + 1) * self.batch_units)
                for r_lo, r_hi in ranges if ranges is not None else [(lo, hi)]:
                    total += max(0, min(hi, r_hi) - max(lo, r_lo))
        return total

    def scopes_of_one_percent(self, k: int, seed: int) -> list[dict[str, Any]]:
        """``k`` scopes of ~1 % of units each (checked: 0.5-1.5 %), cycling by model + batches, by one
        battery lot, and by model + line(s) + production dates; kinds the layout cannot size are skipped."""
        rng, target = random.Random(seed), self.n / 100
        out: list[dict[str, Any]] = []
        makers = [self._scope_batches, self._scope_lot, self._scope_line_dates]
        for attempt in range(50 * k + 50):
            if len(out) == k:
                return out
            scope = makers[attempt % 3](rng, target)
            if scope and 0.5 * target <= self.expected_count(scope) <= 1.5 * target:
                out.append(scope)
        raise ValueError(f"cannot build scopes of ~1 % for n={self.n}, batch_units={self.batch_units}")

    def _scope_batches(self, rng: random.Random, target: float) -> dict[str, Any] | None:
        m = rng.randrange(self.models)
        full, want = self.model_units(m) // self.batch_units, max(1, round(target / self.batch_units))
        if want > full:
            return None
        batches = sorted(rng.sample(range(full), want))
        return {"models": [self.model_names[m]], "batches": [self.batch_name(m, b) for b in batches]}

    def _scope_lot(self, rng: random.Random, target: float) -> dict[str, Any] | None:
        size = self.battery_lot_units  # whole lots only: the first and last are cut short
        first, last = int(size // 3 > 0), (self.n + size // 3) // size - 1
        return {"supplier_lots": [f"BAT-{rng.randint(first, last):04d}"]} if first <= last else None

    def _scope_line_dates(self, rng: random.Random, target: float) -> dict[str, Any] | None:
        m = rng.randrange(self.models)
        count = self.model_units(m)
        if count == 0:
            return None
        lines = min(6, math.ceil(6 * target / count))
        width = min(count, math.ceil(target * 6 / lines))
        first = rng.randrange(count - width + 1)
        return {
            "models": [self.model_names[m]],
            "lines": sorted(rng.sample(LINES, lines)),
            "produced_from": _date_of(START + first * self.step_s),
            "produced_to": _date_of(START + (first + width - 1) * self.step_s),
        }


def _day(iso: str) -> int:
    return int(datetime.combine(date.fromisoformat(iso), datetime.min.time(), UTC).timestamp())


def _date_of(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).date().isoformat()


def write_synthetic_units(
    path: Path | str,
    n: int,
    *,
    seed: int = 1,
    fmt: str = "parquet",
    models: int = 20,
    batch_units: int = 10_000,
) -> SyntheticLayout:
    """Write ``n`` units to ``path`` (replaced if it exists) as ``"parquet"`` or ``"csv"`` (with header)."""
    formats = {"parquet": "Parquet", "csv": "CSVWithNames"}
    if fmt not in formats:
        raise ValueError(f"fmt must be one of {sorted(formats)}, not {fmt!r}")
    if n < 1 or models < 1 or batch_units < 1:
        raise ValueError("n, models and batch_units must be positive")
    path = Path(path).resolve()
    width = max(2, len(str(models - 1)))
    per_model = -(-n // models)
    layout = SyntheticLayout(
        path=path, fmt=fmt, n=n, seed=seed, models=models, batch_units=batch_units,
        model_names=tuple(f"M{k:0{width}d}" for k in range(models)),
        battery_lot_units=max(1, n // 100), motor_lot_units=max(1, n // 500),
        step_s=max(1, SPAN_S // per_model),
    )  # fmt: skip
    bw, lb, lm = layout.batch_width, layout.battery_lot_units, layout.motor_lot_units
    pad = "leftPad(toString({}), {}, '0')".format
    sql = f"""
INSERT INTO FUNCTION file('{_quote(str(path))}', '{formats[fmt]}')
WITH intDiv(number * {models}, {n}) AS k, number - intDiv(k * {n} + {models - 1}, {models}) AS seq,
  intDiv(seq, {batch_units}) AS b, (b + k) % 6 AS ln, concat('M', {pad("k", width)}) AS mdl,
  {START} + seq * {layout.step_s} AS prod,
  cityHash64(number, {seed}, 1) AS h1, cityHash64(number, {seed}, 2) AS h2,
  cityHash64(number, {seed}, 3) AS h3,
  h1 % 1000 >= 30 AS shipped, shipped AND h3 % 100 < 70 AS sold,
  prod + {DAY} * (3 + intDiv(h1, 1000) % 38) + intDiv(h1, 38000) % {DAY} AS ship,
  ship + {DAY} * (1 + intDiv(h3, 100) % 120) + intDiv(h3, 12000) % {DAY} AS sale,
  h2 % 500 AS st, (st * 7) % {len(CITIES)} + 1 AS ct, intDiv(h2, 500) % 100 AS ch
SELECT concat(mdl, '-', {pad("seq", 9)}) AS serial, mdl AS model, concat(mdl, '-B', {pad("b", bw)}) AS batch,
  concat('L', toString(ln + 1)) AS line, {_arr(PLANTS)}[intDiv(ln, 2) + 1] AS plant,
  {_iso("prod")} AS produced_at,
  concat('battery=BAT-', {pad(f"intDiv(number + {lb // 3}, {lb})", 4)},
         ';motor=MOT-', {pad(f"intDiv(number + {lm // 2}, {lm})", 4)}) AS supplier_lots,
  if(shipped, {_iso("ship")}, '') AS shipped_at,
  if(shipped, multiIf(ch < 55, 'retail', ch < 85, 'online', 'dealer'), '') AS channel,
  if(shipped, {_arr(DISTRIBUTORS)}[intDiv(h2, 50000) % 10 + 1], '') AS distributor,
  if(shipped, concat('RT-', {pad("st % 40 + 1", 2)}), '') AS retailer,
  if(shipped, concat('ST-', {pad("st + 1", 4)}), '') AS store,
  if(shipped, {_arr(CITY_REGIONS)}[ct], '') AS region, if(shipped, {_arr(CITIES)}[ct], '') AS city,
  if(sold, {_iso("sale")}, '') AS sold_at,
  if(sold, concat('C', {pad("number", 10)}), '') AS customer_id,
  if(sold, concat('+1555', {pad("intDiv(h3, 1036800000) % 10000000", 7)}), '') AS customer_phone,
  if(sold, concat('user', toString(number), '@example.com'), '') AS customer_email,
  if(sold AND intDiv(h2, 500000) % 100 < 40, concat('MB-', {pad("intDiv(h2, 50000000) % 100000000", 8)}),
     '') AS member_id,
  if(sold AND intDiv(h1, 3283200000) % 100 < 65, 'true', 'false') AS contact_consent
FROM numbers({n})
SETTINGS engine_file_truncate_on_insert = 1, output_format_parquet_compression_method = 'zstd'
"""
    _run(sql)
    return layout


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _run(sql: str) -> None:
    """Run ``sql`` in a throwaway chdb session; in a child process if this one already has a session
    on another path (chdb allows one data dir per process, e.g. while a ChdbStore is open)."""
    import chdb.session  # imported here: the wheel is large

    with tempfile.TemporaryDirectory(prefix="synthetic-units-") as tmp:
        try:
            session: Any = chdb.session.Session(tmp)  # type: ignore[no-untyped-call]
        except Exception as exc:  # chdb raises a RuntimeError subclass for every failure
            if "already initialized" not in str(exc):
                raise
            code = "import sys, chdb.session as s; x = s.Session(sys.argv[1]); x.query(sys.stdin.read())"
            child = subprocess.run(
                [sys.executable, "-c", code, tmp], input=sql, text=True, capture_output=True
            )
            if child.returncode:
                raise RuntimeError(f"chdb child process failed: {child.stderr.strip()[-2000:]}") from None
            return
        try:
            session.query(sql)
        finally:
            session.close()
