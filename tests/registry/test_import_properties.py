"""Properties of the column-wise import checks, over tables of arbitrary text.

:func:`registry.tabular.validate_batch` must never raise, must account for every row exactly once
(accepted, or rejected once with a reason and its line), and must accept only rows that the rules of
docs/registry.md section 2 (and :mod:`registry.units`) allow. Pure: no ClickHouse.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.tabular import MAX_EPOCH, MIN_EPOCH, validate_batch
from registry.units import CONTROL_CHARS, MAX_TEXT, TIME_FIELDS, UNIT_FIELDS, parse_lots

CONTROL = f"[{CONTROL_CHARS}]"

FIRST_LINE = 2
_TRUE = ("true", "1", "yes", "y")
_FALSE = ("false", "0", "no", "n", "")


def _date_texts() -> st.SearchStrategy[str]:
    """Dates and times, well-formed or nearly so: odd years, days, hours, offsets and separators."""
    year = st.sampled_from([0, 1, 1969, 1970, 1989, 1990, 2024, 2099, 2100, 2101, 9999])
    month = st.integers(0, 13)
    day = st.integers(0, 32)
    clock = st.tuples(st.integers(0, 25), st.integers(0, 61), st.integers(0, 61))
    zone = st.sampled_from(["Z", "z", "", "+00:00", "-00:00", "+02:00", "-14:00", "+25:00", "+0530", "+05"])
    sep = st.sampled_from(["T", " ", "t", "_"])
    frac = st.sampled_from(["", ".5", ".000", ".123456789"])
    pad = st.sampled_from(["", " ", "\t", "\u00a0", "\n"])
    day_text = st.builds(lambda y, m, d: f"{y:04d}-{m:02d}-{d:02d}", year, month, day)
    time_text = st.builds(
        lambda d, s, c, f, z: f"{d}{s}{c[0]:02d}:{c[1]:02d}:{c[2]:02d}{f}{z}",
        day_text,
        sep,
        clock,
        frac,
        zone,
    )
    return st.one_of(
        day_text,
        time_text,
        st.builds(lambda p, t, q: p + t + q, pad, st.one_of(day_text, time_text), pad),
        st.sampled_from(["1970-01-01", "1970-01-01T00:00:00Z", "2100-01-01", "2099-12-31T23:59:59Z"]),
    )


def _lots_texts() -> st.SearchStrategy[str]:
    name = st.one_of(
        st.sampled_from(["battery", "motor", " b ", "", "x" * 129, "a=b", "\x1f", "\u00a0", "é"]),
        st.text(max_size=6),
    )
    pair = st.one_of(st.builds(lambda c, lot: f"{c}={lot}", name, name), name)
    return st.one_of(
        st.lists(pair, max_size=4).map(";".join),
        st.integers(60, 70).map(lambda n: ";".join(f"c{i}=L{i}" for i in range(n))),
        st.sampled_from([";", "=", "a=b;", ";a=b", "a=b;a=c", "a==b", " ; ", "a=b; a =c"]),
    )


TEXT = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(max_codepoint=0x9F), max_size=12),  # ASCII, controls, C1
    st.sampled_from(["", " ", "|", "M|1", "x" * 128, "é" * 128, "é" * 129, "x" * 129, "\u2028", "\x7f"]),
    st.text(min_size=120, max_size=140),
)
CELL = {
    **dict.fromkeys(TIME_FIELDS, st.one_of(_date_texts(), TEXT)),
    "supplier_lots": st.one_of(_lots_texts(), TEXT),
    "contact_consent": st.one_of(
        st.sampled_from(["TRUE", " yes ", "Y", "n", "No", "0", "1", "", "maybe", "\u00a0yes", "ｙｅｓ", "İ"]),
        TEXT,
    ),
    "customer_phone": st.one_of(st.sampled_from(["+49 30 1234567", "12345", "+1 (555) 010-9999"]), TEXT),
    "customer_email": st.one_of(st.sampled_from(["a@b.co", "a@b", "a b@c.de", "@b.c"]), TEXT),
}


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    others = draw(st.lists(st.sampled_from(UNIT_FIELDS[1:]), unique=True))
    columns = ["serial", *others]
    n = draw(st.integers(0, 6))
    cells = {
        c: draw(
            st.lists(
                st.one_of(st.none(), CELL.get(c, TEXT)) if c != "serial" else TEXT, min_size=n, max_size=n
            )
        )
        for c in columns
    }
    return pa.table({c: pa.array(v, pa.string()) for c, v in cells.items()})


def _epoch(text: str) -> int | None:
    """The documented time forms, parsed by Python: a date (midnight UTC), or ISO 8601 with a zone."""
    text = text.strip()
    if not text:
        return 0
    try:
        if len(text) == 10:
            return int(datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC).timestamp())
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None
    return int(parsed.timestamp()) if parsed.tzinfo is not None else None


def _check_accepted(row: dict, given_row: dict) -> None:
    """An accepted row obeys every documented rule."""
    serial = given_row["serial"] or ""
    assert serial and len(serial) <= MAX_TEXT and not re.search(CONTROL, serial), serial
    for name, value in given_row.items():
        value = value or ""
        assert len(value) <= MAX_TEXT or name == "supplier_lots", (name, value)
        if name in ("model", "batch"):
            assert "|" not in value and not re.search(CONTROL, value), (name, value)
        if name == "customer_phone" and value:
            assert re.fullmatch(r"\+?[0-9][0-9 ()./-]{4,31}", value), value
        if name == "customer_email" and value:
            assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value), value
        if name in TIME_FIELDS:
            epoch = row[name]
            assert epoch == 0 or MIN_EPOCH <= epoch < MAX_EPOCH, (name, value, epoch)
            assert (epoch == 0) == (value.strip() == ""), (name, value, epoch)
            python = _epoch(value)
            assert python is None or python == epoch, (name, value, epoch, python)
        if name == "contact_consent":
            word = value.strip().lower()
            assert word in _TRUE + _FALSE, value
            assert row[name] == (word in _TRUE), value
        if name == "supplier_lots":
            lots = parse_lots(value)  # the pure rule accepts it too (raises otherwise)
            assert dict(zip(row["lot_components"], row["lot_ids"], strict=True)) == lots, value
            assert len(row["lot_components"]) == len(lots), value
    for earlier, later in (("produced_at", "shipped_at"), ("shipped_at", "sold_at")):
        if earlier in row and later in row and row[earlier] and row[later]:
            assert row[later] >= row[earlier], (earlier, later, row)


@settings(max_examples=400)
@given(tables())
def test_every_row_is_accepted_by_the_rules_or_rejected_once(table: pa.Table) -> None:
    result = validate_batch(table, FIRST_LINE)
    given_rows = table.to_pylist()
    accepted = result.rows.to_pylist()
    lines = [r["source_line"] for r in accepted] + [line for line, _ in result.rejects]
    assert sorted(lines) == list(range(FIRST_LINE, FIRST_LINE + table.num_rows))
    assert all(reason for _, reason in result.rejects)
    for row in accepted:
        _check_accepted(row, given_rows[row["source_line"] - FIRST_LINE])


@settings(max_examples=300)
@given(st.lists(st.one_of(_lots_texts(), TEXT), min_size=1, max_size=5))
def test_supplier_lots_get_the_verdicts_of_parse_lots(texts: list[str]) -> None:
    result = validate_batch(
        pa.table({"serial": [f"S-{i}" for i in range(len(texts))], "supplier_lots": texts}), 0
    )
    rejected = {line for line, _ in result.rejects}
    for i, text in enumerate(texts):
        try:
            parse_lots(text)
        except ValueError:
            assert i in rejected, text
        else:
            assert i not in rejected, text


@settings(max_examples=200)
@given(st.lists(_date_texts(), min_size=1, max_size=5), st.sampled_from(TIME_FIELDS))
def test_times_are_read_as_documented(texts: list[str], name: str) -> None:
    result = validate_batch(pa.table({"serial": [f"S-{i}" for i in range(len(texts))], name: texts}), 0)
    epochs = {row["source_line"]: row[name] for row in result.rows.to_pylist()}
    for i, text in enumerate(texts):
        python = _epoch(text)
        if not text.strip() or (python is not None and MIN_EPOCH <= python < MAX_EPOCH):
            assert epochs.get(i, python) == python, text  # accepted as Python reads it (or refused)
        else:
            assert i not in epochs, text  # not a documented form, or outside 1990..2100


PARQUET_TIME = st.sampled_from(
    [
        pa.timestamp("s", tz="UTC"),
        pa.timestamp("ms", tz="Europe/Berlin"),
        pa.timestamp("us", tz="UTC"),
        pa.timestamp("ns", tz="+02:00"),
        pa.timestamp("s"),  # no zone: every non-null value is refused
        pa.timestamp("ns"),
    ]
)


@settings(max_examples=200)
@given(
    st.lists(st.one_of(st.none(), st.integers(-(2**33), 2**33)), min_size=1, max_size=6),
    PARQUET_TIME,
    st.sampled_from(TIME_FIELDS),
)
def test_parquet_times_of_any_unit_are_read_to_the_second(
    values: list[int | None], unit: pa.TimestampType, name: str
) -> None:
    scale = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit.unit]
    ticks = [None if v is None else v * scale + (v % scale) for v in values]  # odd sub-second parts
    table = pa.table({"serial": [f"S-{i}" for i in range(len(values))], name: pa.array(ticks, unit)})
    result = validate_batch(table, 0)
    accepted = {row["source_line"]: row[name] for row in result.rows.to_pylist()}
    assert len(accepted) + len(result.rejects) == len(values)
    for i, v in enumerate(values):
        if v is None:
            assert accepted[i] == 0
        elif unit.tz is None:
            assert (i, f"{name} is a timestamp without a timezone (refused, not guessed)") in result.rejects
        elif MIN_EPOCH <= v < MAX_EPOCH:
            assert accepted[i] == v
        else:
            assert (i, f"{name} is outside 1990..2100") in result.rejects
