"""The traceability registry on ClickHouse: import merges, unit lookups and scope resolution.

One SQL dialect for both back ends (chdb 26.9 and the 18.16 server): no CTEs, no window functions,
no Map type, right-hand join columns renamed (``o_*``) instead of table-qualified. Rows are read with
``FINAL`` so an update that is not merged yet still hides the row it replaced.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from registry.scope import Scope
from registry.serials import SerialRange, range_of
from registry.units import CONTACT_FIELDS, TIME_FIELDS
from sinks.clickhouse import ClickHouseStore, literal_chunks, sql_literal

STORED_FIELDS = (
    "model", "batch", "line", "plant", "produced_at", "lot_components", "lot_ids",
    "shipped_at", "channel", "distributor", "retailer", "store", "region", "city", "sold_at",
    "customer_id", "customer_phone", "customer_email", "member_id", "contact_consent",
)  # fmt: skip
SERIAL_PARTS = ("serial_prefix", "serial_seq", "serial_width")
# registry.serials.split_serial in SQL (same on both engines; a test holds them to the same answers).
_DIGITS = "extract(serial, '[0-9]{1,18}$')"
SERIAL_PARTS_SQL = (
    f"substring(serial, 1, length(serial) - length({_DIGITS}))",
    f"toUInt64OrZero({_DIGITS})",
    f"toUInt8(length({_DIGITS}))",
)
IDENTITY = ("model", "batch")
_STAGING_TYPES = {
    "lot_components": "Array(String)",
    "lot_ids": "Array(String)",
    "contact_consent": "UInt8",
    "source_line": "UInt64",
    **{t: "DateTime" for t in TIME_FIELDS},
}
# Column a version's low 32 bits carry: later lines of one import win over earlier ones.
_VERSION_SHIFT = 1 << 32


NEEDS_IDENTITY = "unknown serial: a new unit needs model and batch"


@dataclass(frozen=True)
class MergeResult:
    loaded: int
    rejects: list[tuple[int, str]]


def version_base(now: int) -> int:
    """Versions are ``now << 32 | line``: newer imports win; within one, the later line wins."""
    return int(now) * _VERSION_SHIFT


class RegistryStore:
    def __init__(self, store: ClickHouseStore) -> None:
        self.store = store

    # --- writing -----------------------------------------------------------------------------------

    def merge(self, rows: pa.Table, *, source: str, now: int) -> MergeResult:
        """Upsert validated rows (from :func:`registry.tabular.validate_batch`).

        Columns the file has replace the stored values; columns it lacks keep them, so an ERP, an MES
        and a CRM export can each be imported on their own. Empty model/batch keep the stored value,
        and a serial the registry has never seen needs both (else the row is rejected). A serial's
        rows are folded first (:func:`_fold_repeats`): the result is the rows' one at a time, in line
        order, however the rows were split into calls.
        """
        if rows.num_rows == 0:
            return MergeResult(0, [])
        span = pc.min_max(rows.column("serial")).as_py()
        stored = self.store.query(
            "SELECT count() AS n FROM units WHERE serial >= {lo} AND serial <= {hi}",
            {"lo": span["min"], "hi": span["max"]},
        )
        any_stored = int(stored[0]["n"]) > 0
        rows, early, lines = _fold_repeats(rows, self._stored_serials if any_stored else lambda s: set())
        if rows.num_rows == 0:
            return MergeResult(0, early)
        if not any_stored:
            result = self._insert_new(rows, source, now)
        else:
            result = self._merge_staged(rows, source, now)
        return _unfold(result, early, lines)

    def _stored_serials(self, serials: Sequence[str]) -> set[str]:
        return set(self.units_by_serial(serials))

    def _merge_staged(self, rows: pa.Table, source: str, now: int) -> MergeResult:
        staging = f"units_staging_{uuid.uuid4().hex[:12]}"
        cols = rows.schema.names
        ddl = ", ".join(f"`{c}` {_STAGING_TYPES.get(c, 'String')}" for c in cols)
        self.store.query(f"CREATE TABLE {staging} ({ddl}) ENGINE = Memory")
        try:
            self.store.insert_arrow(staging, rows)
            return self._merge_from(staging, set(cols), source, now)
        finally:
            self.store.query(f"DROP TABLE IF EXISTS {staging}")

    def _insert_new(self, rows: pa.Table, source: str, now: int) -> MergeResult:
        """No stored unit falls inside the batch's serial range (a first import, or new production):
        nothing to merge, so the rows go straight in. Primary key only: costs a millisecond."""
        cols = set(rows.schema.names)
        if {"model", "batch"} <= cols:
            complete = pc.and_(pc.not_equal(rows.column("model"), ""), pc.not_equal(rows.column("batch"), ""))
        else:
            complete = pa.array([False] * rows.num_rows)
        if pc.all(complete).as_py():  # the usual case: filtering would copy every column for nothing
            missing, good = [], rows
        else:
            missing = rows.filter(pc.invert(complete)).column("source_line").to_pylist()
            good = rows.filter(complete)
        select = {"serial": "serial", **dict(zip(SERIAL_PARTS, SERIAL_PARTS_SQL, strict=True))}
        select.update({c: c for c in STORED_FIELDS if c in cols})
        select.update(
            source=sql_literal(source),
            updated_at=f"toDateTime({int(now)})",
            version=f"{version_base(now)} + toUInt64(source_line)",
        )
        self.store.insert_arrow("units", good, select=select)
        return MergeResult(good.num_rows, [(int(line), NEEDS_IDENTITY) for line in missing])

    def _merge_from(self, staging: str, cols: set[str], source: str, now: int) -> MergeResult:
        """Merge staged rows with the stored units they update (columns renamed ``o_*``)."""
        params = {"source": source, "now": int(now), "base": version_base(now)}
        old = ", ".join(f"{c} AS o_{c}" for c in STORED_FIELDS)
        joined = (
            f"{staging} ANY LEFT JOIN (SELECT serial, {old} FROM units FINAL"
            f" WHERE serial IN (SELECT serial FROM {staging})) AS old USING serial"
        )
        expr = {c: _merged(c, cols) for c in STORED_FIELDS}
        complete = f"({expr['model']}) != '' AND ({expr['batch']}) != ''"
        rejects: list[tuple[int, str]] = []
        if self._may_lack_identity(staging, cols):
            missing = self.store.query(
                f"SELECT source_line FROM {joined} WHERE NOT ({complete}) ORDER BY source_line"
            )
            rejects = [(int(r["source_line"]), NEEDS_IDENTITY) for r in missing]
        names = ", ".join(["serial", *SERIAL_PARTS, *STORED_FIELDS, "source", "updated_at", "version"])
        select = ", ".join(
            ["serial", *SERIAL_PARTS_SQL, *(expr[c] for c in STORED_FIELDS),
             "{source}", "toDateTime({now})", "{base} + source_line"]
        )  # fmt: skip
        self.store.query(
            f"INSERT INTO units ({names}) SELECT {select} FROM {joined} WHERE {complete}", params
        )
        total = int(self.store.query(f"SELECT count() AS n FROM {staging}")[0]["n"])
        return MergeResult(total - len(rejects), rejects)

    def _may_lack_identity(self, staging: str, cols: set[str]) -> bool:
        if IDENTITY[0] not in cols or IDENTITY[1] not in cols:
            return True
        row = self.store.query(f"SELECT count() AS n FROM {staging} WHERE model = '' OR batch = ''")
        return int(row[0]["n"]) > 0

    # --- reading -----------------------------------------------------------------------------------

    def units_by_serial(self, serials: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored units of any number of serials, read in queries of bounded size."""
        out: dict[str, dict[str, Any]] = {}
        for chunk in literal_chunks(serials):
            rows = self.store.query(
                f"SELECT serial, {', '.join((*SERIAL_PARTS, *STORED_FIELDS))} FROM units FINAL"
                " WHERE has({serials}, serial)",
                {"serials": chunk},
            )
            out.update((r["serial"], r) for r in rows)
        return out

    def unit(self, serial: str) -> dict[str, Any] | None:
        rows = self.store.query(
            f"SELECT serial, {', '.join(STORED_FIELDS)}, updated_at FROM units FINAL WHERE serial = {{s}}",
            {"s": serial},
        )
        return rows[0] if rows else None

    def history(self, model: str, batch: str, serial: str) -> list[dict[str, Any]]:
        """A unit's own complaint/repair/return events, oldest first, read by the events' primary key.

        (As a subquery of ``unit`` it cost more, not less: the subquery must look the unit up again,
        and a point lookup in ``units`` is the expensive part, 3.8 ms against 1.3 ms for this. Joined
        into one statement, by scalar subquery or UNION ALL, the two cost 5-6.5 ms against 5.1 ms.)
        A unit has a handful of events, so they are sorted here: an ORDER BY costs the engine 0.2 ms.
        (Python orders str by code point, which is ClickHouse's byte order for UTF-8.)
        """
        rows = self.store.query(
            "SELECT event_id, kind, occurred_at, failure_mode, component, crash, fire, injury"
            " FROM events FINAL WHERE model = {m} AND batch = {b} AND serial = {s}",
            {"m": model, "b": batch, "s": serial},
        )
        rows.sort(key=lambda r: (r["occurred_at"], r["event_id"]))
        return rows

    def resolve(self, scope: Scope, *, max_ranges: int = 1000) -> dict[str, Any]:
        """Size, serial ranges, breakdowns and reachable customers of a scope.

        The scope is read once (FINAL, skipping granules by index) into a small in-memory table of
        just the columns the answers need; counting it four ways and finding its runs then costs
        little. (Five passes over ``units`` took 90-160 ms at 10 M units; one takes 12-26 ms.)
        """
        where, params = scope_sql(scope)
        picked = f"scope_{uuid.uuid4().hex[:12]}"
        self.store.query(
            f"CREATE TABLE {picked} ENGINE = Memory AS SELECT serial_prefix AS p, serial_width AS w,"
            " serial_seq AS q, region, channel, store, reachable"
            f" FROM units FINAL WHERE {where}",
            params,
        )
        try:
            # One statement, five answers: its branches run side by side (two cores save ~4 ms of
            # ~15), and one round trip is one query's fixed cost. (The 18.16 server's sumMap takes
            # numeric keys only.)
            parts = [
                f"SELECT '{dim}' AS dim, groupArray(k) AS keys, groupArray(n) AS counts FROM"
                f" (SELECT {dim} AS k, count() AS n FROM {picked} GROUP BY k)"
                for dim in ("region", "channel", "store")
            ]
            parts.append(
                "SELECT 'total' AS dim, ['units', 'reachable'] AS keys,"
                f" [count(), sum(toUInt64(reachable))] AS counts FROM {picked}"
            )
            parts.append(_ranges_sql(picked))
            answer: dict[str, dict[str, int]] = {}
            runs: list[tuple[str, int, int, int]] = []
            for r in self.store.query(" UNION ALL ".join(parts), {"limit": max_ranges + 1}):
                if r["dim"] == "ranges":  # keys [prefix, width], counts [first, last]
                    runs.append((r["keys"][0], int(r["keys"][1]), int(r["counts"][0]), int(r["counts"][1])))
                else:
                    answer[r["dim"]] = _counts(r["keys"], r["counts"])
        finally:
            self.store.query(f"DROP TABLE IF EXISTS {picked}")
        ranges = _serial_ranges(runs)
        return {
            "units": answer["total"]["units"],
            "reachable_customers": answer["total"]["reachable"],
            "ranges": [r.as_dict() for r in ranges[:max_ranges]],
            "ranges_truncated": len(ranges) > max_ranges,
            "by_region": answer["region"],
            "by_channel": answer["channel"],
            "by_store": answer["store"],
        }

    def iter_units(
        self, scope: Scope, *, contacts: bool, page: int = 50_000
    ) -> Iterator[list[dict[str, Any]]]:
        """Every unit of a scope, in serial order, a page at a time (keyset paging: any size)."""
        where, params = scope_sql(scope)
        fields = [f for f in STORED_FIELDS if contacts or f not in CONTACT_FIELDS]
        after = ""
        while True:
            rows = self.store.query(
                f"SELECT serial, {', '.join(fields)} FROM units FINAL WHERE {where} AND serial > {{after}}"
                " ORDER BY serial LIMIT {page}",
                {**params, "after": after, "page": page},
            )
            if not rows:
                return
            yield rows
            if len(rows) < page:
                return
            after = rows[-1]["serial"]

    def field_population(self, cell: tuple[str, str] | None = None) -> list[dict[str, Any]]:
        """Per (model, batch), or for one: units shipped so far and when the latest one shipped."""
        where, params = "", None
        if cell is not None:
            where, params = " AND model = {m} AND batch = {b}", {"m": cell[0], "b": cell[1]}
        return self.store.query(
            "SELECT model, batch, max(shipped_at) AS at, count() AS units FROM units FINAL"
            f" WHERE shipped_at > 0{where} GROUP BY model, batch ORDER BY model, batch",
            params,
        )

    def cell_population(self, model: str, batch: str) -> tuple[int, int]:
        """A (model, batch)'s latest shipment time and its units shipped by then (all shipped units).

        Counted up to the cell's own latest shipment, not the latest in whatever batch of changes
        prompted the count: a back-dated shipment would otherwise send a count as of its own date
        and set the cell's denominator back to fewer units than are in the field.
        """
        rows = self.field_population((model, batch))
        return (int(rows[0]["at"]), int(rows[0]["units"])) if rows else (0, 0)


def _fold_repeats(
    rows: pa.Table, stored: Callable[[Sequence[str]], set[str]]
) -> tuple[pa.Table, list[tuple[int, str]], dict[int, list[int]]]:
    """One row per serial, giving the same unit as the serial's rows applied one at a time in line order.

    Merging joins every row to the unit as stored before the batch, so two rows of one serial would
    each be merged on their own: a later row's empty model/batch would keep the *stored* value (undoing
    the earlier row's move) or be refused as an unknown serial although the earlier row created it, and
    the answer would hang on where a batch happens to split. Folded: a later row's columns replace the
    earlier ones, except an empty model/batch, which keeps the earlier row's value.

    A serial not stored yet takes only the rows from its first one naming both model and batch (the
    ones before it are refused, as they would be one at a time); ``stored`` is asked only for serials
    whose first row lacks either. Returns the folded rows, the rows refused here, and for each folded
    row's line (its last) the lines it stands for.
    """
    serials, n = rows.column("serial"), rows.num_rows
    # Exports usually come sorted by serial, and strictly increasing serials show there is no repeat
    # in a few milliseconds per million rows; counting distinct values takes ~0.1 s per million on
    # the core that sets an import's pace, so it is only the fallback.
    if n < 2 or pc.all(pc.less(serials.slice(0, n - 1), serials.slice(1))).as_py():
        return rows, [], {}
    if pc.count_distinct(serials).as_py() == n:
        return rows, [], {}
    counts = pc.value_counts(serials).to_pylist()
    repeated = pa.array([c["values"] for c in counts if c["counts"] > 1], type=serials.type)
    mask = pc.is_in(serials, value_set=repeated)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows.filter(mask).to_pylist(), key=lambda r: r["source_line"]):
        groups.setdefault(row["serial"], []).append(row)

    def complete(row: dict[str, Any]) -> bool:
        return all(row.get(c) for c in IDENTITY)

    unsure = [s for s, group in groups.items() if not complete(group[0])]
    known = stored(unsure) if unsure else set()
    early: list[tuple[int, str]] = []
    lines: dict[int, list[int]] = {}
    folded: list[dict[str, Any]] = []
    for serial, group in groups.items():
        if serial in unsure and serial not in known:
            first = next((i for i, row in enumerate(group) if complete(row)), len(group))
            early += [(int(row["source_line"]), NEEDS_IDENTITY) for row in group[:first]]
            group = group[first:]
            if not group:
                continue
        out = dict(group[0])
        for row in group[1:]:
            for col, value in row.items():
                if col not in IDENTITY or value:
                    out[col] = value
        lines[int(out["source_line"])] = [int(row["source_line"]) for row in group]
        folded.append(out)
    single = rows.filter(pc.invert(mask))
    return pa.concat_tables([single, pa.Table.from_pylist(folded, schema=rows.schema)]), early, lines


def _unfold(result: MergeResult, early: list[tuple[int, str]], lines: dict[int, list[int]]) -> MergeResult:
    """A merge of folded rows in terms of the rows given: a refused folded row refuses every line it
    stands for, an accepted one loads them all."""
    rejects = list(early)
    for line, reason in result.rejects:
        rejects += [(each, reason) for each in lines.get(line, [line])]
    loaded = result.loaded + sum(len(group) - 1 for line, group in lines.items())
    loaded -= sum(len(lines.get(line, [line])) - 1 for line, _ in result.rejects)
    return MergeResult(loaded, sorted(rejects))


def _merged(col: str, present: set[str]) -> str:
    if col not in present:
        return f"o_{col}"
    if col in IDENTITY:
        return f"if({col} != '', {col}, o_{col})"
    return col


def _counts(keys: list[Any], values: list[Any]) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(zip(keys, values, strict=True), key=lambda kv: -int(kv[1]))}


def _ranges_sql(picked: str) -> str:
    """Runs of consecutive serials in a scope table, at most ``{limit}``, as breakdown-shaped rows.

    Per (prefix, width), the sorted sequence numbers: a run starts where the step from the one before
    is not 1 and ends where the step to the next is not 1. (FINAL made the serials unique, so no
    groupUniqArray; array filters instead of a second GROUP BY over every unit: 7 ms instead of 11 ms
    for 100,000 units.)
    """
    return (
        "SELECT 'ranges' AS dim, [p, toString(w)] AS keys, [first, last] AS counts FROM ("
        " SELECT p, w, first, last FROM ("
        "  SELECT p, w, arraySort(groupArray(q)) AS s, arrayDifference(s) AS d,"
        "   arrayFilter((x, e) -> e != 1, s, d) AS firsts,"
        "   arrayFilter((x, e) -> e != 1, s, arrayPushBack(arrayPopFront(d), 0)) AS lasts"
        f"  FROM {picked} GROUP BY p, w"
        " ) ARRAY JOIN firsts AS first, lasts AS last ORDER BY w = 0, p, w, first LIMIT {limit}"
        ")"
    )


def _serial_ranges(runs: list[tuple[str, int, int, int]]) -> list[SerialRange]:
    """(prefix, width, first, last) runs as ranges, numeric ones first, in the SQL's order (Python
    orders str by code point, which is ClickHouse's byte order for UTF-8)."""
    out = []
    for prefix, width, first, last in sorted(runs, key=lambda r: (r[1] == 0, r[0], r[1], r[2])):
        if width == 0:  # opaque: listed one by one under its full serial
            out.append(SerialRange("", prefix, prefix, 1))
        else:
            out.append(range_of(prefix, width, first, last))
    return out


def scope_sql(scope: Scope) -> tuple[str, dict[str, Any]]:
    """The WHERE clause (over ``units``) and its parameters for a scope.

    Every value goes into the query's text, so this relies on what :class:`Scope` refuses: names
    past ``MAX_LIST_BYTES`` would exceed ClickHouse's max_query_size, and bounds outside DateTime's
    range would be wrapped by the 18.16 server (1960 read as 2096) but saturated by chdb.
    """
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for field, column in (
        ("models", "model"), ("batches", "batch"), ("lines", "line"), ("plants", "plant"),
        ("regions", "region"), ("channels", "channel"), ("stores", "store"),
    ):  # fmt: skip
        values = getattr(scope, field)
        if values is not None:
            params[field] = list(values)
            clauses.append(f"has({{{field}}}, {column})")
    if scope.supplier_lots is not None:
        params["lots"] = list(scope.supplier_lots)
        clauses.append("hasAny(lot_ids, {lots})")
    for low, high, column in (
        ("produced_from", "produced_to", "produced_at"),
        ("shipped_from", "shipped_to", "shipped_at"),
    ):
        lo, hi = scope.bounds(low, high)
        if lo is not None:
            params[low] = lo
            clauses.append(f"{column} >= toDateTime({{{low}}})")
        if hi is not None:
            params[high] = hi
            clauses.append(f"{column} < toDateTime({{{high}}})")
            if column == "shipped_at":
                clauses.append("shipped_at > 0")  # 0 = not shipped, never "shipped long ago"
    return " AND ".join(clauses), params
