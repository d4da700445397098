"""Serial numbers and the compressed ranges a recall scope is published as.

A serial is an opaque string. When it ends in digits, those digits (at most 18, so they fit an
unsigned 64-bit column) are its *sequence* and everything before them its *prefix*; the number of
digits is its *width*, so ``"SN-000123"`` is prefix ``"SN-"``, sequence 123, width 6. Two serials
belong to one range only when prefix and width agree and the sequences are consecutive: a change of
width (``"A-9"`` then ``"A-10"``) starts a new range, because a producer who pads does not print
``"A-10"`` after ``"A-09"``. Serials without trailing digits are *opaque* (width 0) and are listed
one by one, each its own range of one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_DIGITS = 18
# ASCII digits to the very end, as the store's SQL split reads them: Python's \d also takes "١٢٣"
# and "１２３", and $ a final newline, which made the Python ranges disagree with the store's.
_TAIL = re.compile(r"(.*?)([0-9]{1,18})\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class SerialParts:
    prefix: str
    seq: int
    width: int  # 0: opaque serial, listed one by one

    @property
    def is_opaque(self) -> bool:
        return self.width == 0


@dataclass(frozen=True, slots=True)
class SerialRange:
    """``count`` units from ``first`` to ``last`` inclusive, all sharing ``prefix``."""

    prefix: str
    first: str
    last: str
    count: int

    def as_dict(self) -> dict[str, object]:
        return {"prefix": self.prefix, "first": self.first, "last": self.last, "count": self.count}


def split_serial(serial: str) -> SerialParts:
    """Split a serial into prefix, sequence and width.

    >>> split_serial("SN-000123")
    SerialParts(prefix='SN-', seq=123, width=6)
    >>> split_serial("X9-ALPHA")
    SerialParts(prefix='X9-ALPHA', seq=0, width=0)
    >>> split_serial("1234567890123456789012").prefix   # only the last 18 digits are the sequence
    '1234'
    """
    m = _TAIL.match(serial)
    if m is None:
        return SerialParts(serial, 0, 0)
    return SerialParts(m.group(1), int(m.group(2)), len(m.group(2)))


def format_serial(prefix: str, seq: int, width: int) -> str:
    """The inverse of :func:`split_serial` for numeric serials.

    >>> format_serial("SN-", 123, 6)
    'SN-000123'
    """
    if width == 0:
        return prefix
    return f"{prefix}{seq:0{width}d}"


def runs(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted, distinct sequence numbers as (first, last) pairs.

    >>> runs([1, 2, 3, 7, 9, 10])
    [(1, 3), (7, 7), (9, 10)]
    """
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def compress_serials(serials: Iterable[str]) -> list[SerialRange]:
    """Compress serials (any order, duplicates ignored) into ranges, sorted by prefix, width, first.

    >>> [r.as_dict() for r in compress_serials(["B-003", "B-001", "B-002", "B-005", "ZX"])]
    ... # doctest: +NORMALIZE_WHITESPACE
    [{'prefix': 'B-', 'first': 'B-001', 'last': 'B-003', 'count': 3},
     {'prefix': 'B-', 'first': 'B-005', 'last': 'B-005', 'count': 1},
     {'prefix': '', 'first': 'ZX', 'last': 'ZX', 'count': 1}]
    """
    groups: dict[tuple[str, int], set[int]] = {}
    opaque: set[str] = set()
    for serial in serials:
        parts = split_serial(serial)
        if parts.is_opaque:
            opaque.add(serial)
        else:
            groups.setdefault((parts.prefix, parts.width), set()).add(parts.seq)
    ranges = [
        range_of(prefix, width, first, last)
        for (prefix, width) in sorted(groups)
        for first, last in runs(sorted(groups[(prefix, width)]))
    ]
    ranges.extend(SerialRange("", s, s, 1) for s in sorted(opaque))
    return ranges


def range_of(prefix: str, width: int, first: int, last: int) -> SerialRange:
    return SerialRange(
        prefix, format_serial(prefix, first, width), format_serial(prefix, last, width), last - first + 1
    )
