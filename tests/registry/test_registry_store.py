"""The registry on both ClickHouse back ends: import merges, rejects, lookups and scope resolution."""

from __future__ import annotations

import csv
import random
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from recallwatch.registry_import import import_files
from registry.scope import MAX_LIST_BYTES, Scope
from registry.serials import compress_serials
from sinks.case_store import CaseStore, ConcernIndex
from sinks.clickhouse import MAX_LITERAL_BYTES, ClickHouseStore, literal_chunks, sql_literal
from sinks.registry_store import NEEDS_IDENTITY, RegistryStore, _fold_repeats

pytestmark = pytest.mark.integration
NOW = 1_760_000_000

MES_COLUMNS = ["serial", "model", "batch", "line", "plant", "produced_at", "supplier_lots"]


def write_csv(path: Path, columns: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)
    return path


def mes_rows() -> list[list[str]]:
    """Model A: batch A1 = A-000001..A-000010, batch A2 = A-000011..A-000020 except a gap at 15.
    Model B shares battery lot BAT-7 with A's batch A2. Two opaque serials in model C."""
    rows = []
    for i in range(1, 21):
        if i == 15:
            continue
        batch, lot = ("A1", "BAT-1") if i <= 10 else ("A2", "BAT-7")
        rows.append(
            [f"A-{i:06d}", "A", batch, "L1", "P1", f"2024-01-{i:02d}", f"battery={lot};motor=M-{i % 2}"]
        )
    for i in range(1, 6):
        rows.append([f"B-{i:04d}", "B", "B1", "L2", "P2", f"2024-02-{i:02d}T08:00:00Z", "battery=BAT-7"])
    rows.append(["C-ALPHA", "C", "C1", "L3", "P1", "2024-03-01", ""])
    rows.append(["C-BRAVO", "C", "C1", "L3", "P1", "2024-03-02", ""])
    return rows


@pytest.fixture
def registry(store: ClickHouseStore) -> RegistryStore:
    return RegistryStore(store)


def test_import_merge_rejects_and_reimport(registry: RegistryStore, tmp_path: Path) -> None:
    rows = mes_rows()
    rows.append(["", "A", "A1", "L1", "P1", "2024-01-01", ""])  # line 28: no serial
    rows.append(["A-000099", "A", "A1", "L1", "P1", "2024-02-30", ""])  # line 29: no such day
    rows.append(["A-000098", "A", "A1", "L1", "P1", "2024-01-01", "battery"])  # line 30: bad lots
    mes = write_csv(tmp_path / "mes.csv", MES_COLUMNS, rows)
    report = import_files([mes], registry, now=NOW, progress=False)
    assert (report.loaded, report.rejected) == (26, 3)
    assert [line for line, _ in report.files[0].rejects] == [28, 29, 30]
    assert "serial is empty" in report.files[0].rejects[0][1]
    kept = registry.store.query(
        "SELECT offset, reason FROM rejects FINAL WHERE topic = 'import' ORDER BY offset"
    )
    assert [r["offset"] for r in kept] == [28, 29, 30]
    assert kept[1]["reason"].startswith(f"{mes}:29: produced_at")

    # Same file again: updated in place, never duplicated (and rejects not piled up either).
    import_files([mes], registry, now=NOW + 60, progress=False)
    assert registry.store.query("SELECT count() AS n FROM units FINAL")[0]["n"] == 26
    assert registry.store.query("SELECT count() AS n FROM rejects FINAL")[0]["n"] == 3

    # A CRM export touches only its columns; an unknown serial cannot be created from it.
    crm = write_csv(
        tmp_path / "crm.csv",
        ["serial", "customer_id", "customer_email", "contact_consent"],
        [["A-000003", "C-9", "ann@example.com", "yes"], ["Z-000001", "C-10", "", "no"]],
    )
    report = import_files([crm], registry, now=NOW + 120, progress=False)
    assert (report.loaded, report.rejected) == (1, 1)
    assert report.files[0].rejects == [(3, "unknown serial: a new unit needs model and batch")]
    unit = registry.unit("A-000003")
    assert unit is not None
    assert (unit["model"], unit["batch"], unit["plant"]) == ("A", "A1", "P1")
    assert unit["lot_ids"] == ["BAT-1", "M-1"]
    assert (unit["customer_email"], unit["contact_consent"]) == ("ann@example.com", 1)


def test_resolved_ranges_are_those_of_compress_serials(registry: RegistryStore, tmp_path: Path) -> None:
    """Runs found in SQL match the Python reference on gaps, lone units, widths and opaque serials."""
    rng = random.Random(7)
    serials = [f"K-{i:05d}" for i in range(1, 400) if rng.random() < 0.7]
    serials += [f"K-{i}" for i in range(5, 30) if rng.random() < 0.5]  # other width: other runs
    serials += [f"Q{i:03d}" for i in (1, 3, 4, 5, 9)] + ["OPAQUE-X", "OPAQUE-A"]
    rows = [[s, "R", "R1", "L1", "P1", "2024-01-01", ""] for s in serials]
    import_files([write_csv(tmp_path / "r.csv", MES_COLUMNS, rows)], registry, now=NOW, progress=False)
    got = registry.resolve(Scope(models=["R"]), max_ranges=100_000)
    assert got["units"] == len(serials)
    assert got["ranges"] == [r.as_dict() for r in compress_serials(serials)]


def test_resolve_ranges_breakdowns_and_lots(registry: RegistryStore, tmp_path: Path) -> None:
    import_files(
        [write_csv(tmp_path / "mes.csv", MES_COLUMNS, mes_rows())], registry, now=NOW, progress=False
    )
    erp = write_csv(
        tmp_path / "erp.csv",
        ["serial", "shipped_at", "channel", "store", "region"],
        [
            [
                f"A-{i:06d}",
                "2024-04-01",
                "retail" if i % 2 else "online",
                f"S{i % 3}",
                "EU" if i < 12 else "US",
            ]
            for i in range(11, 21)
            if i != 15
        ],
    )
    import_files([erp], registry, now=NOW + 1, progress=False)

    lot = registry.resolve(Scope(supplier_lots=["BAT-7"]))
    assert lot["units"] == 9 + 5  # A2 without the gap, and all of model B: across models
    assert lot["ranges"] == [
        {"prefix": "A-", "first": "A-000011", "last": "A-000014", "count": 4},
        {"prefix": "A-", "first": "A-000016", "last": "A-000020", "count": 5},
        {"prefix": "B-", "first": "B-0001", "last": "B-0005", "count": 5},
    ]
    serials = [f"A-{i:06d}" for i in range(11, 21) if i != 15] + [f"B-{i:04d}" for i in range(1, 6)]
    assert lot["ranges"] == [r.as_dict() for r in compress_serials(serials)]
    assert lot["by_region"] == {"US": 8, "": 5, "EU": 1}
    assert lot["by_channel"] == {"": 5, "online": 5, "retail": 4}

    opaque = registry.resolve(Scope(models=["C"]))
    assert opaque["ranges"] == [
        {"prefix": "", "first": "C-ALPHA", "last": "C-ALPHA", "count": 1},
        {"prefix": "", "first": "C-BRAVO", "last": "C-BRAVO", "count": 1},
    ]
    dated = registry.resolve(Scope(models=["A"], produced_from="2024-01-05", produced_to="2024-01-12"))
    assert dated["units"] == 8
    shipped = registry.resolve(Scope(shipped_from="2024-04-01", shipped_to="2024-04-01", regions=["EU"]))
    assert shipped["units"] == 1
    assert registry.resolve(Scope(batches=["nope"]))["units"] == 0
    truncated = registry.resolve(Scope(models=["A"]), max_ranges=1)
    assert truncated["ranges_truncated"] and len(truncated["ranges"]) == 1

    pages = list(registry.iter_units(Scope(models=["A", "B"]), contacts=False, page=7))
    assert [len(p) for p in pages] == [7, 7, 7, 3]
    assert "customer_email" not in pages[0][0]
    assert registry.cell_population("A", "A2")[1] == 9


def test_a_cells_population_counts_every_shipped_unit_up_to_its_latest_shipment(
    registry: RegistryStore, tmp_path: Path
) -> None:
    """A shipment recorded late with an earlier date adds a unit; the count keeps the latest time."""
    columns = ["serial", "model", "batch", "shipped_at"]
    first = [["P-01", "P", "P1", "2024-03-10"], ["P-02", "P", "P1", ""], ["P-03", "P", "P2", "2024-03-01"]]
    import_files([write_csv(tmp_path / "a.csv", columns, first)], registry, now=NOW, progress=False)
    march_10 = int(datetime(2024, 3, 10, tzinfo=UTC).timestamp())
    assert registry.cell_population("P", "P1") == (march_10, 1)
    late = [["P-02", "P", "P1", "2024-03-05"]]
    import_files([write_csv(tmp_path / "b.csv", columns, late)], registry, now=NOW + 60, progress=False)
    assert registry.cell_population("P", "P1") == (march_10, 2)
    assert registry.cell_population("P", "nope") == (0, 0)


TRICKY_SERIALS = ["SN-000123", "12345", "AB12CD", "AB12CD7", "X" + "9" * 25, "Ünï-007", "a b 5", "0"]


def test_sql_serial_split_agrees_with_the_pure_rule(registry: RegistryStore, tmp_path: Path) -> None:
    from registry.serials import split_serial

    path = write_csv(
        tmp_path / "t.csv", ["serial", "model", "batch"], [[s, "M", "B"] for s in TRICKY_SERIALS]
    )
    assert import_files([path], registry, now=NOW, progress=False).loaded == len(TRICKY_SERIALS)
    stored = registry.units_by_serial(TRICKY_SERIALS)
    for serial in TRICKY_SERIALS:
        parts = split_serial(serial)
        row = stored[serial]
        assert (row["serial_prefix"], row["serial_seq"], row["serial_width"]) == (
            parts.prefix,
            parts.seq,
            parts.width,
        ), serial


def test_lookup_carries_the_units_own_history_and_the_index_sees_new_alerts(
    registry: RegistryStore, tmp_path: Path
) -> None:
    mes = write_csv(tmp_path / "mes.csv", MES_COLUMNS, mes_rows())
    import_files([mes], registry, now=NOW, progress=False)
    assert registry.history("A", "A1", "A-000001") == []
    event = {"event_id": "e1", "kind": "complaint", "occurred_at": NOW, "serial": "A-000001", "model": "A",
             "batch": "A1", "failure_mode": "fire", "component": "heater", "crash": 0, "fire": 1, "injury": 0,
             "region": "EU", "units": 0, "src_partition": 0, "src_offset": 1, "ingested_at": NOW}  # fmt: skip
    registry.store.insert("events", [event, {**event, "event_id": "e2", "serial": "A-000002"}])
    history = registry.history("A", "A1", "A-000001")
    assert [(e["event_id"], e["kind"], e["fire"]) for e in history] == [("e1", "complaint", 1)]
    # Oldest first, ties by event id, whatever order they were written in.
    registry.store.insert(
        "events",
        [{**event, "event_id": "e9", "occurred_at": NOW - 60}, {**event, "event_id": "e0"},
         {**event, "event_id": "e5", "occurred_at": NOW + 60}],
    )  # fmt: skip
    history = registry.history("A", "A1", "A-000001")
    assert [e["event_id"] for e in history] == ["e9", "e0", "e1", "e5"]

    now = [0.0]
    index = ConcernIndex(CaseStore(registry.store), max_age_s=2.0, clock=lambda: now[0])
    assert index.alerts("A", "A1") == []
    registry.store.insert(
        "alerts",
        [{"alert_id": "al1", "opened_at": NOW, "model": "A", "batch": "A1", "failure_mode": "fire",
          "detector": "cusum", "score": 2.5}],
    )  # fmt: skip
    now[0] = 3.0  # the index is rebuilt once it is older than max_age_s
    assert [a["alert_id"] for a in index.alerts("A", "A1")] == ["al1"] and index.alerts("A", "A2") == []


def test_the_stored_reachable_flag_follows_the_pure_rule_through_updates(
    registry: RegistryStore, tmp_path: Path
) -> None:
    from registry.units import Unit

    combos = [
        (consent, phone, email)
        for consent in ("true", "false")
        for phone in ("", "+15550001")
        for email in ("", "a@example.com")
    ]
    serials = [f"R-{i:03d}" for i in range(len(combos))]
    columns = ["serial", "model", "batch", "contact_consent", "customer_phone", "customer_email"]
    rows = [[s, "M", "B", *combo] for s, combo in zip(serials, combos, strict=True)]
    first = write_csv(tmp_path / "crm1.csv", columns, rows)
    assert import_files([first], registry, now=NOW, progress=False).loaded == len(rows)
    # A later CRM export flips every consent: the merged rows must recompute the flag.
    flipped = [[s, "true" if c == "false" else "false"] for s, (c, _, _) in zip(serials, combos, strict=True)]
    second = write_csv(tmp_path / "crm2.csv", ["serial", "contact_consent"], flipped)
    for path, consents in ((first, [c for c, _, _ in combos]), (second, [r[1] for r in flipped])):
        import_files([path], registry, now=NOW + 10, progress=False)
        stored = {
            r["serial"]: r["reachable"]
            for r in registry.store.query("SELECT serial, reachable FROM units FINAL ORDER BY serial")
        }
        for serial, consent, (_, phone, email) in zip(serials, consents, combos, strict=True):
            unit = Unit(
                serial=serial,
                model="M",
                batch="B",
                contact_consent=consent == "true",
                customer_phone=phone,
                customer_email=email,
            )
            assert stored[serial] == int(unit.reachable), (serial, consent, phone, email)


def test_the_largest_scope_accepted_runs_on_both_back_ends(registry: RegistryStore, tmp_path: Path) -> None:
    # The API refuses a scope whose names outgrow MAX_LIST_BYTES, so anything it takes must fit
    # ClickHouse's max_query_size (256 KiB on chdb and 18.16 alike), however escaped and multibyte.
    write_csv(tmp_path / "mes.csv", MES_COLUMNS, mes_rows())
    import_files([tmp_path / "mes.csv"], registry, now=NOW, progress=False)
    filler = [f"{i:05d}" + ("'\\é日" * 31)[:123] for i in range(10_000)]
    per_name = Scope(models=filler[:1]).list_bytes()
    assert per_name > 128 * 2  # quotes and backslashes escaped, é and 日 two and three bytes
    count = (MAX_LIST_BYTES - 6) // per_name
    scope = Scope(models=["A", *filler[: count // 2]], supplier_lots=filler[count // 2 : count])
    assert MAX_LIST_BYTES - per_name < scope.list_bytes() <= MAX_LIST_BYTES
    assert registry.resolve(scope)["units"] == 0  # model A, but none of A's lots: criteria are ANDed
    wide = Scope(models=["A", *filler[: count - 1]])
    assert registry.resolve(wide)["units"] == 19
    assert sum(len(page) for page in registry.iter_units(wide, contacts=False)) == 19


def test_the_widest_scope_dates_give_the_same_answer_on_both_back_ends(
    registry: RegistryStore, tmp_path: Path
) -> None:
    write_csv(tmp_path / "mes.csv", MES_COLUMNS, mes_rows())
    import_files([tmp_path / "mes.csv"], registry, now=NOW, progress=False)
    widest = Scope(produced_from="1970-01-01", produced_to="2105-12-31")
    assert registry.resolve(widest)["units"] == 26
    instants = Scope(produced_from="1970-01-01T00:00:00Z", produced_to="2106-01-01T00:00:00Z")
    assert registry.resolve(instants)["units"] == 26


def test_a_full_batch_of_the_longest_serials_is_read_in_queries_the_engine_accepts(
    registry: RegistryStore, tmp_path: Path
) -> None:
    """2,000 serials of 128 characters (a default agent batch) in one query exceeded max_query_size
    with an error that never changes: the registry agent retried it forever and its partition stalled."""
    long = [f"{'Q' * 120}{i:08d}" for i in range(2000)]
    long[7] = "'" * 120 + long[7][120:]  # escaped, a quote takes twice the bytes
    columns = ["serial", "model", "batch"]
    stored = [[long[7], "L", "L1"], [long[1999], "L", "L1"]]
    import_files([write_csv(tmp_path / "long.csv", columns, stored)], registry, now=NOW, progress=False)
    found = registry.units_by_serial(long)
    assert sorted(found) == sorted([long[7], long[1999]])
    assert found[long[7]]["batch"] == "L1"
    chunks = list(literal_chunks(long))
    assert [s for c in chunks for s in c] == long and len(chunks) > 1
    assert all(sum(len(sql_literal(s).encode()) + 2 for s in c) <= MAX_LITERAL_BYTES for c in chunks)


def test_a_serial_twice_in_one_file_gives_what_its_rows_give_one_at_a_time(
    registry: RegistryStore, tmp_path: Path
) -> None:
    """Each row used to be merged with the unit as stored before the file: the answer depended on
    where the rows were split into batches, and an empty model/batch undid an earlier move."""
    columns = ["serial", "model", "batch", "line"]
    old = [["S-1", "M1", "B1", "L0"]]
    import_files([write_csv(tmp_path / "old.csv", columns, old)], registry, now=NOW, progress=False)
    rows = [
        ["S-1", "M2", "B2", "L1"],  # a stored unit moved ...
        ["N-1", "M", "B", "L1"],  # a new unit ...
        ["S-1", "", "", "L2"],  # ... then corrected with model/batch left as they are: still moved
        ["N-1", "", "", "L2"],  # ... then corrected the same way: known by now, not refused
        ["N-2", "", "", "L1"],  # unknown and unnamed: refused, as it would be on its own
        ["N-2", "M", "", "L2"],  # still no batch: refused
        ["N-2", "M", "B7", "L3"],  # created
        ["N-2", "", "B8", "L4"],  # moved, keeping its model
    ]
    report = import_files(
        [write_csv(tmp_path / "new.csv", columns, rows)], registry, now=NOW + 60, progress=False
    )
    assert [line for line, _ in report.files[0].rejects] == [6, 7]  # lines count the header as 1
    assert all(reason == NEEDS_IDENTITY for _, reason in report.files[0].rejects)
    assert (report.loaded, report.rejected) == (6, 2)

    def unit(serial: str) -> tuple[str, str, str]:
        u = registry.unit(serial)
        assert u is not None
        return u["model"], u["batch"], u["line"]

    assert unit("S-1") == ("M2", "B2", "L2")
    assert unit("N-1") == ("M", "B", "L2")
    assert unit("N-2") == ("M", "B8", "L4")
    assert registry.store.query("SELECT count() AS n FROM units FINAL")[0]["n"] == 3


def test_a_serial_repeated_in_sorted_rows_is_folded_too() -> None:
    # Sorted rows take a quicker check for repeats (strictly increasing serials have none): equal
    # neighbours must still be found and folded.
    rows = pa.table(
        {
            "serial": ["A-1", "A-1", "A-2"],
            "model": ["M", "", "M"],
            "batch": ["B", "", "B"],
            "line": ["L1", "L2", "L1"],
            "source_line": pa.array([2, 3, 4], pa.int64()),
        }
    )
    folded, early, lines = _fold_repeats(rows, lambda serials: set())
    assert early == [] and lines == {3: [2, 3]}
    by_serial = {r["serial"]: r for r in folded.to_pylist()}
    assert by_serial["A-1"]["model"] == "M" and by_serial["A-1"]["line"] == "L2"
    assert folded.num_rows == 2
