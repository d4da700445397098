"""Serial splitting and range compression: the pure rules the registry's SQL must agree with."""

from __future__ import annotations

import random

import pytest

from registry.serials import SerialRange, compress_serials, format_serial, runs, split_serial


def ranges(serials: list[str]) -> list[tuple[str, str, str, int]]:
    return [(r.prefix, r.first, r.last, r.count) for r in compress_serials(serials)]


def test_contiguous_serials_are_one_range() -> None:
    serials = [f"KT-{i:06d}" for i in range(100, 200)]
    assert ranges(serials) == [("KT-", "KT-000100", "KT-000199", 100)]


def test_gaps_split_ranges_and_order_does_not_matter() -> None:
    serials = [f"KT-{i:06d}" for i in (5, 1, 2, 3, 9, 10, 7)]
    assert ranges(serials) == [
        ("KT-", "KT-000001", "KT-000003", 3),
        ("KT-", "KT-000005", "KT-000005", 1),
        ("KT-", "KT-000007", "KT-000007", 1),
        ("KT-", "KT-000009", "KT-000010", 2),
    ]


def test_prefixes_never_merge_and_sort_by_prefix() -> None:
    assert ranges(["B-01", "A-02", "A-01", "B-02"]) == [("A-", "A-01", "A-02", 2), ("B-", "B-01", "B-02", 2)]


def test_width_change_starts_a_new_range() -> None:
    # "A-9" and "A-10" are consecutive numbers but not one printed series.
    assert ranges(["A-8", "A-9", "A-10", "A-11"]) == [("A-", "A-8", "A-9", 2), ("A-", "A-10", "A-11", 2)]


def test_opaque_serials_are_listed_one_by_one_after_numeric_ranges() -> None:
    assert ranges(["ZULU", "X-1", "ALPHA", "X-2"]) == [
        ("X-", "X-1", "X-2", 2),
        ("", "ALPHA", "ALPHA", 1),
        ("", "ZULU", "ZULU", 1),
    ]


def test_single_unit_and_duplicates_and_empty() -> None:
    assert ranges(["SN-42"]) == [("SN-", "SN-42", "SN-42", 1)]
    assert ranges(["SN-42", "SN-42"]) == [("SN-", "SN-42", "SN-42", 1)]
    assert compress_serials([]) == []


@pytest.mark.parametrize(
    ("serial", "parts"),
    [
        ("SN-000123", ("SN-", 123, 6)),
        ("12345", ("", 12345, 5)),
        ("AB12CD", ("AB12CD", 0, 0)),
        ("AB12CD7", ("AB12CD", 7, 1)),
        ("X" + "9" * 25, ("X" + "9" * 7, 10**18 - 1, 18)),
        ("", ("", 0, 0)),
        # Only ASCII digits, up to the very end, as the store's SQL split reads them.
        ("SN-\u0661\u0662\u0663", ("SN-\u0661\u0662\u0663", 0, 0)),
        ("FW-\uff11\uff12\uff13", ("FW-\uff11\uff12\uff13", 0, 0)),
        ("A-12\n", ("A-12\n", 0, 0)),
    ],
)
def test_split_serial(serial: str, parts: tuple[str, int, int]) -> None:
    got = split_serial(serial)
    assert (got.prefix, got.seq, got.width) == parts
    if got.width:
        assert format_serial(got.prefix, got.seq, got.width) == serial


def test_serials_with_other_digits_are_opaque_and_no_range_names_a_serial_that_is_not_there() -> None:
    # "١٢٣" (Arabic-Indic digits) read as 123 merged with "SN-123", and "１２３" (full-width) was
    # printed back as "FW-123": two units counted as one range of three, one serial invented.
    serials = ["SN-123", "SN-\u0661\u0662\u0663", "FW-\uff11\uff12\uff13"]
    ranges = compress_serials(serials)
    assert sum(r.count for r in ranges) == 3
    assert {r.first for r in ranges} | {r.last for r in ranges} == set(serials)


def test_compression_round_trips_random_sets() -> None:
    rng = random.Random(5)
    for _ in range(50):
        serials = {f"{rng.choice('AB')}-{rng.randrange(0, 300):0{rng.choice((3, 4))}d}" for _ in range(80)}
        expanded = set()
        for r in compress_serials(serials):
            first, last = split_serial(r.first), split_serial(r.last)
            assert r.count == last.seq - first.seq + 1
            expanded |= {format_serial(r.prefix, s, first.width) for s in range(first.seq, last.seq + 1)}
        assert expanded == serials


def test_runs() -> None:
    assert runs([]) == []
    assert runs([4]) == [(4, 4)]
    assert SerialRange("A", "A1", "A2", 2).as_dict()["count"] == 2
