"""What the ingest agent holds between flushes, and what a failed flush leaves for the next one."""

from __future__ import annotations

from types import SimpleNamespace

from streams.app import PendingFlush


def _batch(pending: PendingFlush, tag: str, key: str) -> None:
    result = SimpleNamespace(
        event_rows=[(f"{tag}-row",)], rate_rows=[(f"{tag}-rate",)], reject_rows=[{"id": f"{tag}-rej"}],
        touched={key: 0},
    )  # fmt: skip
    pending.add([f"{tag}-1", f"{tag}-2"], result, [{"alert_id": f"{tag}-alert"}])


def test_a_failed_flush_goes_back_in_front_of_what_came_since() -> None:
    pending = PendingFlush()
    _batch(pending, "a", "KT|B1")
    work = pending.take()
    _batch(pending, "b", "KT|B2")  # processed while the flush was writing

    pending.put_back(work, acked=1)  # the flush failed after acking one event
    assert pending.events == ["a-2", "b-1", "b-2"]  # the acked one is done with; order is kept
    assert pending.event_rows == [("a-row",), ("b-row",)]  # rows are written again: keyed, idempotent
    assert pending.rate_rows == [("a-rate",), ("b-rate",)]
    assert [r["id"] for r in pending.reject_rows] == ["a-rej", "b-rej"]
    assert [r["alert_id"] for r in pending.alert_rows] == ["a-alert", "b-alert"]
    assert pending.dirty == {"KT|B1": 0, "KT|B2": 0}  # both cells are persisted by the next flush

    again = pending.take()
    assert again.events == ["a-2", "b-1", "b-2"] and pending.events == []
