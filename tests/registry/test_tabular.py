"""Column-wise import checks: each rule, its message, and the line it reports."""

from __future__ import annotations

import pyarrow as pa
import pytest

from registry.tabular import FileColumnsError, check_columns, validate_batch


def check(**columns: list[str]) -> tuple[list[dict], list[tuple[int, str]]]:
    result = validate_batch(pa.table(columns), first_line=2)
    return result.rows.to_pylist(), result.rejects


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("serial", "", "serial is empty"),
        ("serial", "x" * 129, "serial is longer than 128 characters"),
        ("serial", "a\tb", "serial contains control characters"),
        ("serial", "a\x7fb", "serial contains control characters"),  # DEL
        ("serial", "a\u0085b", "serial contains control characters"),  # C1: bytes c2 85 in UTF-8
        ("batch", "B\u009f", "batch contains control characters"),
        ("model", "M|1", "model contains '|'"),
        ("produced_at", "2024-02-30", "produced_at is not a date"),
        ("produced_at", "2024-05-01T10:00:00", "produced_at is not a date"),  # no zone: refused, not guessed
        ("produced_at", "1980-01-01", "produced_at is outside 1990..2100"),
        ("shipped_at", "yesterday", "shipped_at is not a date"),
        ("customer_email", "not-an-email", "customer_email is not an email address"),
        ("customer_phone", "call me", "customer_phone is not a phone number"),
        ("contact_consent", "maybe", "contact_consent must be true or false"),
        ("supplier_lots", "battery", "supplier_lots must be component=lot pairs"),
        ("supplier_lots", "battery=;motor=M1", "supplier_lots must be component=lot pairs"),
        ("city", "x" * 200, "city is longer than 128 characters"),
    ],
)
def test_each_rule_rejects_with_its_reason_and_line(column: str, value: str, reason: str) -> None:
    cols = {"serial": ["SN-0", "SN-1" if column != "serial" else value]}
    if column != "serial":
        ok_value = {"produced_at": "2024-01-01", "shipped_at": "2024-01-01", "contact_consent": "no"}.get(
            column, ""
        )
        cols[column] = [ok_value, value]
    rows, rejects = check(**cols)
    assert [r["serial"] for r in rows] == ["SN-0"]
    assert len(rejects) == 1 and rejects[0][0] == 3 and rejects[0][1].startswith(reason), rejects
    # The first row passes: one bad cell never takes its neighbours with it.


def test_latin_and_other_scripts_are_not_control_characters() -> None:
    # U+00A0..U+00FF share the lead byte c2/c3 with C1 controls; only c2 80..9f is one.
    names = ["Zürich", "SN-°1", "N\u00a0B", "Ωμέγα", "東京", "A\u2028B"]
    rows, rejects = check(serial=names, model=names, batch=names)
    assert rejects == [] and [r["serial"] for r in rows] == names


def test_good_rows_are_typed() -> None:
    rows, rejects = check(
        serial=["SN-1", "SN-2"],
        produced_at=["2024-05-01", "2024-05-01T10:00:00+02:00"],
        shipped_at=["", "2024-05-02T00:00:00Z"],
        supplier_lots=["battery=B-1; motor = M-2", ""],
        contact_consent=["Yes", ""],
    )
    assert rejects == []
    assert rows[0]["produced_at"] == 1_714_521_600 and rows[1]["produced_at"] == 1_714_550_400
    assert rows[0]["shipped_at"] == 0
    assert (rows[0]["lot_components"], rows[0]["lot_ids"]) == (["battery", "motor"], ["B-1", "M-2"])
    assert (rows[1]["lot_components"], rows[1]["lot_ids"]) == ([], [])
    assert [r["contact_consent"] for r in rows] == [1, 0]


def test_fractions_of_a_second_are_dropped() -> None:
    """Exports often carry milliseconds (JavaScript's toISOString): kept to the second."""
    rows, rejects = check(
        serial=["SN-1", "SN-2"],
        produced_at=["2024-05-01T10:00:00.999Z", "2024-05-01T12:00:00.5+02:00"],
    )
    assert rejects == []
    assert [r["produced_at"] for r in rows] == [1_714_557_600, 1_714_557_600]


def test_order_of_dates_is_checked_within_a_row() -> None:
    _, rejects = check(serial=["SN-1"], produced_at=["2024-05-02"], shipped_at=["2024-05-01"])
    assert rejects == [(2, "shipped_at is before produced_at")]
    _, rejects = check(serial=["SN-1"], shipped_at=["2024-05-02"], sold_at=["2024-05-01"])
    assert rejects == [(2, "sold_at is before shipped_at")]


def test_first_failing_rule_is_the_one_reported() -> None:
    _, rejects = check(serial=[""], produced_at=["garbage"])
    assert rejects == [(2, "serial is empty")]


def test_parquet_timestamps_and_nulls() -> None:
    table = pa.table(
        {
            "serial": ["SN-1", None],
            "produced_at": pa.array([1_714_521_600, None], pa.timestamp("s", tz="UTC")),
        }
    )
    result = validate_batch(table, first_line=1)
    assert result.rows.to_pylist()[0]["produced_at"] == 1_714_521_600
    assert result.rejects == [(2, "serial is empty")]


def test_file_columns() -> None:
    assert check_columns(["customer_email", "serial"]) == ("serial", "customer_email")
    with pytest.raises(FileColumnsError, match="unknown columns"):
        check_columns(["serial", "colour"])
    with pytest.raises(FileColumnsError, match="no serial column"):
        check_columns(["model"])
    with pytest.raises(FileColumnsError, match="more than once"):
        check_columns(["serial", "model", "model"])


def test_byte_level_prechecks_see_only_the_batch_and_every_form() -> None:
    # A slice shares its parent's buffers: bad bytes outside it must not reject (or hide) rows in it.
    parent = pa.table({"serial": ["a\tb", "S-1", "S-2", "x|y"], "model": ["M|1", "M", "M", "M\n"]})
    inside = validate_batch(parent.slice(1, 2), first_line=2)
    assert inside.rejects == [] and inside.rows.column("serial").to_pylist() == ["S-1", "S-2"]
    whole = validate_batch(parent, first_line=2)
    assert [line for line, _ in whole.rejects] == [2, 5]
    # Dates, times and blanks mixed in one column still take the general path.
    rows, rejects = check(serial=["a", "b", "c"], produced_at=["2024-01-02", "2024-01-02T03:00:00Z", ""])
    assert rejects == [] and [r["produced_at"] for r in rows] == [1704153600, 1704164400, 0]


def test_float_columns_hold_whole_numbers_written_as_integers() -> None:
    # pandas turns an int column with a null into float64: 678901234567 must not be stored as
    # '6.78901234567e+11', and a value that is not a whole number is refused, naming its column.
    table = pa.table(
        {
            "serial": pa.array([1.0, 2.5, 3.0, 4.0, 5.0, 6.0], pa.float64()),
            "model": ["M"] * 6,
            "customer_id": pa.array([678901234567.0, 1.0, None, float("nan"), float("inf"), 2.0**60]),
            "customer_phone": pa.array([None, None, 16_777_216.0, None, None, None], pa.float32()),
        }
    )
    result = validate_batch(table, first_line=2)
    assert result.rejects == [
        (3, "serial is not a whole number (a floating-point column)"),
        (5, "customer_id is not a whole number (a floating-point column)"),  # NaN
        (6, "customer_id is not a whole number (a floating-point column)"),  # infinity
        (7, "customer_id is not a whole number (a floating-point column)"),  # past 2**53: maybe rounded
    ]
    # In float32 4712345678 is past 2**24 and was already rounded (to 4712345600): refused too.
    phone = pa.table({"serial": ["S-1"], "customer_phone": pa.array([4712345678.0], pa.float32())})
    assert validate_batch(phone, first_line=2).rejects == [
        (2, "customer_phone is not a whole number (a floating-point column)")
    ]
    rows = result.rows.to_pylist()
    assert [(r["serial"], r["customer_id"]) for r in rows] == [("1", "678901234567"), ("3", "")]
    assert rows[1]["customer_phone"] == "16777216"  # 2**24: float32 still holds every integer up to here


def test_parquet_timestamps_without_a_timezone_are_refused() -> None:
    # As in a CSV, a time without a zone is refused rather than guessed to be UTC; a date is a day.
    table = pa.table(
        {
            "serial": ["SN-1", "SN-2"],
            "produced_at": pa.array([1_714_521_600_000, None], pa.timestamp("ms")),
            "shipped_at": pa.array([19_845, 19_846], pa.date32()),
        }
    )
    result = validate_batch(table, first_line=2)
    assert result.rejects == [(2, "produced_at is a timestamp without a timezone (refused, not guessed)")]
    assert result.rows.to_pylist()[0]["produced_at"] == 0  # a null is an empty cell, not a guess
    assert result.rows.to_pylist()[0]["shipped_at"] == 19_846 * 86_400
