from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from recallwatch.synthetic_units import COLUMNS, SyntheticLayout, write_synthetic_units

N = 2_000
BATCH = 5  # 100 units per model: batches small enough for batch scopes of ~1 %


def read(layout: SyntheticLayout) -> pa.Table:
    if layout.fmt == "parquet":
        return pq.read_table(layout.path)
    types = {name: pa.string() for name in COLUMNS}
    options = pcsv.ConvertOptions(
        column_types=types, strings_can_be_null=False, quoted_strings_can_be_null=False
    )
    return pcsv.read_csv(layout.path, convert_options=options)


@pytest.fixture(scope="module", params=["parquet", "csv"])
def written(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SyntheticLayout, pa.Table]:
    path = tmp_path_factory.mktemp("synthetic") / f"units.{request.param}"
    layout = write_synthetic_units(path, N, seed=3, fmt=request.param, batch_units=BATCH)
    return layout, read(layout)


def matches(table: pa.Table, scope: dict[str, Any]) -> int:
    """Evaluate a scope on the file: values OR'ed within a key, keys AND'ed; dates are whole days."""
    mask = pa.array([True] * table.num_rows)
    for key, column in (("models", "model"), ("batches", "batch"), ("lines", "line"), ("plants", "plant")):
        if key in scope:
            mask = pc.and_(mask, pc.is_in(table[column], pa.array(scope[key])))
    if "supplier_lots" in scope:
        lots = "|".join(scope["supplier_lots"])
        mask = pc.and_(mask, pc.match_substring_regex(table["supplier_lots"], f"=({lots})(;|$)"))
    if "produced_from" in scope:
        mask = pc.and_(mask, pc.greater_equal(table["produced_at"], scope["produced_from"]))
    if "produced_to" in scope:
        mask = pc.and_(mask, pc.less(table["produced_at"], scope["produced_to"] + "U"))  # "T..." < "U"
    return int(pc.sum(mask).as_py())


def test_rows_columns_and_serials(written: tuple[SyntheticLayout, pa.Table]) -> None:
    layout, table = written
    assert table.num_rows == N == layout.n
    assert table.column_names == list(COLUMNS)
    serials = table["serial"].to_pylist()
    assert len(set(serials)) == N
    assert [layout.serial_of(i) for i in range(N)] == serials
    assert set(table["model"].to_pylist()) == set(layout.model_names) == {f"M{k:02d}" for k in range(20)}
    assert set(layout.sample_serials(50, seed=9)) <= set(serials)
    assert layout.sample_serials(50, seed=9) == layout.sample_serials(50, seed=9)
    assert len(set(layout.sample_serials(50, seed=9))) == 50


def test_realism(written: tuple[SyntheticLayout, pa.Table]) -> None:
    layout, table = written
    rows = table.to_pylist()
    assert rows[0]["serial"] == "M00-000000000" and rows[0]["batch"] == "M00-B0000"
    assert rows[0]["produced_at"] == "2023-01-01T00:00:00Z"
    for prev, row in itertools.pairwise(rows):
        if prev["model"] == row["model"]:
            assert prev["produced_at"] < row["produced_at"]
            if prev["batch"] == row["batch"]:
                assert (prev["line"], prev["plant"]) == (row["line"], row["plant"])
    shipped = [r for r in rows if r["shipped_at"]]
    sold = [r for r in shipped if r["sold_at"]]
    assert 0.93 * N < len(shipped) < N and 0.6 * len(shipped) < len(sold) < 0.8 * len(shipped)
    assert all(r["produced_at"] < r["shipped_at"] and r["channel"] and r["city"] for r in shipped)
    assert all(
        not r["channel"] and not r["store"] and not r["customer_id"] for r in rows if not r["shipped_at"]
    )
    assert all(r["shipped_at"] < r["sold_at"] and r["customer_phone"].startswith("+1555") for r in sold)
    assert all(r["customer_email"] == f"user{i}@example.com" for i, r in enumerate(rows) if r["sold_at"])
    assert {r["contact_consent"] for r in rows} == {"true", "false"}
    assert all(r["contact_consent"] == "false" and not r["member_id"] for r in rows if not r["sold_at"])
    assert 0.5 < sum(r["contact_consent"] == "true" for r in sold) / len(sold) < 0.8
    assert 0.3 < sum(bool(r["member_id"]) for r in sold) / len(sold) < 0.5
    battery_lots = [r["supplier_lots"].split(";")[0] for r in rows]
    assert len(set(battery_lots)) == 101  # lots of n // 100 units, offset by a third: two are partial
    assert battery_lots.count("battery=BAT-0000") == 14 and battery_lots.count("battery=BAT-0042") == 20
    # A lot is cut over the global unit index, so one spans the boundary of two models.
    assert {r["model"] for r in rows if r["supplier_lots"].startswith("battery=BAT-0005;")} == {"M00", "M01"}
    assert layout.lot_span("BAT-0005") == (94, 114) and layout.lot_span("MOT-0001") == (2, 6)


def test_scopes_match_about_one_percent(written: tuple[SyntheticLayout, pa.Table]) -> None:
    layout, table = written
    scopes = layout.scopes_of_one_percent(9, seed=5)
    assert len(scopes) == 9 and scopes == layout.scopes_of_one_percent(9, seed=5)
    kinds = {tuple(sorted(s)) for s in scopes}
    assert kinds == {
        ("batches", "models"),
        ("supplier_lots",),
        ("lines", "models", "produced_from", "produced_to"),
    }
    for scope in scopes:
        count = matches(table, scope)
        assert 0.005 * N <= count <= 0.015 * N, scope
        assert layout.expected_count(scope) == count, scope


@pytest.mark.parametrize(
    "scope",
    [
        {"supplier_lots": ["MOT-0007", "BAT-0042"]},
        {"plants": ["PLANT-MTY"], "produced_from": "2023-06-01", "produced_to": "2023-12-31"},
        {"models": ["M04", "M05"], "lines": ["L2"], "supplier_lots": ["BAT-0022"]},
    ],
)
def test_expected_count_is_exact(written: tuple[SyntheticLayout, pa.Table], scope: dict[str, Any]) -> None:
    layout, table = written
    assert layout.expected_count(scope) == matches(table, scope) > 0


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    for fmt in ("parquet", "csv"):
        a = write_synthetic_units(tmp_path / f"a.{fmt}", 500, seed=7, fmt=fmt)
        b = write_synthetic_units(tmp_path / f"b.{fmt}", 500, seed=7, fmt=fmt)
        c = write_synthetic_units(tmp_path / f"c.{fmt}", 500, seed=8, fmt=fmt)
        assert a == b.__class__(**{**b.__dict__, "path": a.path})
        assert a.path.read_bytes() == b.path.read_bytes() != c.path.read_bytes()
    write_synthetic_units(tmp_path / "a.csv", 10, fmt="csv")  # an existing file is replaced, not appended to
    assert len((tmp_path / "a.csv").read_text().splitlines()) == 11


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fmt"):
        write_synthetic_units(tmp_path / "x", 10, fmt="json")
    with pytest.raises(ValueError, match="positive"):
        write_synthetic_units(tmp_path / "x", 0)
    layout = write_synthetic_units(tmp_path / "x.parquet", 10)
    with pytest.raises(IndexError):
        layout.serial_of(10)
    with pytest.raises(ValueError, match="hash-based"):
        layout.expected_count({"regions": ["EU-North"]})


def test_works_while_this_process_holds_another_chdb_session(tmp_path: Path) -> None:
    import chdb.session

    held: Any = chdb.session.Session(str(tmp_path / "held"))  # type: ignore[no-untyped-call]  # a ChdbStore
    try:
        layout = write_synthetic_units(tmp_path / "units.parquet", 300, seed=2)  # runs in a child process
    finally:
        held.close()
    assert pq.read_table(layout.path)["serial"].to_pylist() == [layout.serial_of(i) for i in range(300)]
