"""What the ingest agent holds between flushes, what a failed flush leaves for the next one, and
what a flush waits for before it acks."""

from __future__ import annotations

import asyncio
import pickle
from types import SimpleNamespace
from typing import Any

import pytest

from core.cells import CellState
from streams.flushing import (
    DeliveryFailed,
    FaustTableCells,
    Flusher,
    PendingFlush,
    Sent,
    confirm_sent,
    make_durable,
)


def _batch(pending: PendingFlush, tag: str, key: str, sent: list[Sent] | None = None) -> None:
    result = SimpleNamespace(
        event_rows=[(f"{tag}-row",)], rate_rows=[(f"{tag}-rate",)], reject_rows=[{"id": f"{tag}-rej"}],
        touched={key: 0},
    )  # fmt: skip
    pending.add([f"{tag}-1", f"{tag}-2"], result, [{"alert_id": f"{tag}-alert"}], sent or [])


def _confirmed(value: Any = None) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


def test_a_failed_flush_goes_back_in_front_of_what_came_since() -> None:
    a_sent, b_sent = Sent(send=None, confirmation=None), Sent(send=None, confirmation=None)  # type: ignore[arg-type]
    pending = PendingFlush()
    _batch(pending, "a", "KT|B1", [a_sent])
    work = pending.take()
    _batch(pending, "b", "KT|B2", [b_sent])  # processed while the flush was writing

    pending.put_back(work, done=1)  # the flush failed after acking one event
    assert pending.events == ["a-2", "b-1", "b-2"]  # the acked one is done with; order is kept
    assert pending.event_rows == [("a-row",), ("b-row",)]  # rows are written again: keyed, idempotent
    assert pending.rate_rows == [("a-rate",), ("b-rate",)]
    assert [r["id"] for r in pending.reject_rows] == ["a-rej", "b-rej"]
    assert [r["alert_id"] for r in pending.alert_rows] == ["a-alert", "b-alert"]
    assert pending.sent == [a_sent, b_sent]  # their confirmations are awaited again
    assert pending.dirty == {"KT|B1": 0, "KT|B2": 0}  # both cells are persisted by the next flush

    again = pending.take()
    assert again.events == ["a-2", "b-1", "b-2"] and pending.events == [] and pending.sent == []


class Steps:
    """Records the order of a flush's steps; snapshot confirmations are held until released."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.held: list[asyncio.Future[Any]] = []

    async def write_rows(self, work: PendingFlush) -> None:
        self.log.append(f"rows {len(work.event_rows)}")

    async def persist(self, key: str, partition: int, snapshot: bytes) -> asyncio.Future[Any]:
        self.log.append(f"persist {key}@{partition}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.held.append(future)
        return future


def test_a_flush_is_not_done_until_the_broker_confirms_every_cell_snapshot() -> None:
    # The bug this guards: snapshots queued but not yet on the broker when their events were
    # acked and committed; the cell recovered elsewhere never saw those events.
    async def scenario() -> None:
        steps = Steps()
        pending = PendingFlush()
        _batch(pending, "a", "KT|B1")
        work = pending.take()
        durable = asyncio.ensure_future(
            make_durable(work, {"KT|B1": (0, b"s1"), "KT|B2": (3, b"s2")}, steps.write_rows, steps.persist)
        )
        await asyncio.sleep(0.05)
        assert steps.log == ["rows 1", "persist KT|B1@0", "persist KT|B2@3"]
        steps.held[0].set_result("on disk")
        await asyncio.sleep(0.05)
        assert not durable.done()  # one snapshot still unconfirmed: nothing may be acked yet
        steps.held[1].set_result("on disk")
        await asyncio.wait_for(durable, 1)

    asyncio.run(scenario())


def test_a_refused_cell_snapshot_fails_the_flush() -> None:
    async def scenario() -> None:
        steps = Steps()
        work = PendingFlush()
        durable = asyncio.ensure_future(
            make_durable(work, {"KT|B1": (0, b"s")}, steps.write_rows, steps.persist)
        )
        await asyncio.sleep(0.01)
        steps.held[0].set_exception(ConnectionError("broker gone"))
        with pytest.raises(DeliveryFailed, match="1 of 1 cell snapshots not confirmed"):
            await durable

    asyncio.run(scenario())


def test_the_batch_messages_are_confirmed_before_any_snapshot_is_sent() -> None:
    async def scenario() -> None:
        steps = Steps()
        alert_confirmed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def send() -> asyncio.Future[Any]:
            return alert_confirmed

        work = PendingFlush(sent=[await Sent.of(send)])
        durable = asyncio.ensure_future(
            make_durable(work, {"KT|B1": (0, b"s")}, steps.write_rows, steps.persist)
        )
        await asyncio.sleep(0.05)
        assert steps.log == ["rows 0"]  # the alert is not confirmed: the cell is not persisted yet
        alert_confirmed.set_result("on disk")
        await asyncio.sleep(0.05)
        assert steps.log == ["rows 0", "persist KT|B1@0"]
        steps.held[0].set_result("on disk")
        await asyncio.wait_for(durable, 1)

    asyncio.run(scenario())


def test_a_message_the_broker_refused_is_sent_again_and_confirmed_by_the_next_flush() -> None:
    async def scenario() -> None:
        sends: list[str] = []
        outcomes = iter([ConnectionError("leader moved"), "on disk"])

        async def send() -> asyncio.Future[Any]:
            sends.append("alert")
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            outcome = next(outcomes)
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
            return future

        good = Sent(send=send, confirmation=_confirmed())
        flaky = await Sent.of(send)
        with pytest.raises(DeliveryFailed, match=r"1 of 2 messages not confirmed.*leader moved"):
            await confirm_sent([good, flaky])
        assert sends == ["alert", "alert"]  # sent once, refused, sent again
        await confirm_sent([good, flaky])  # the next flush finds both confirmed
        assert sends == ["alert", "alert"]

    asyncio.run(scenario())


class Topic:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, **kwargs: Any) -> str:
        self.sent.append(kwargs)
        return "confirmation"


def _table() -> SimpleNamespace:
    return SimpleNamespace(
        data={}, changelog_topic=Topic(), key_serializer="raw", value_serializer="raw",
        _on_changelog_sent=lambda fut: None,
    )  # fmt: skip


def test_snapshots_leave_out_cells_whose_partition_went_to_another_worker() -> None:
    table = _table()
    cells = FaustTableCells(table)
    cells["KT|B1"] = CellState("KT", "B1")
    table.data["KT|B3"] = pickle.dumps(CellState("KT", "B3"))  # as recovery left it
    # KT|B2 was dirty, but Faust dropped it when its partition was revoked.
    cells["KT|B4"] = CellState("KT", "B4")  # made here, but its partition 3 went to another worker
    snapshots = cells.snapshots({"KT|B1": 0, "KT|B2": 1, "KT|B3": 2, "KT|B4": 3}, lambda p: p != 3)
    assert set(snapshots) == {"KT|B1", "KT|B3"}
    assert snapshots["KT|B3"][0] == 2
    assert pickle.loads(snapshots["KT|B1"][1]).batch == "B1"


def test_a_cell_goes_to_its_events_partition_and_its_confirmation_is_handed_back() -> None:
    table = _table()
    confirmation = asyncio.run(FaustTableCells(table).persist("KT|B1", 3, b"snap"))
    assert confirmation == "confirmation"
    (sent,) = table.changelog_topic.sent
    assert (sent["key"], sent["value"], sent["partition"]) == ("KT|B1", b"snap", 3)
    assert sent["force"] is True  # never deferred to commit time


def test_a_send_that_raises_is_sent_again_by_the_next_confirmation() -> None:
    async def scenario() -> None:
        attempts = iter([TimeoutError("producer buffer full"), "on disk"])

        async def send() -> asyncio.Future[Any]:
            outcome = next(attempts)
            if isinstance(outcome, Exception):
                raise outcome
            return _confirmed(outcome)

        message = await Sent.of(send)  # does not raise in the middle of a batch
        with pytest.raises(DeliveryFailed, match="producer buffer full"):
            await confirm_sent([message])
        await confirm_sent([message])

    asyncio.run(scenario())


def test_a_message_the_broker_will_never_take_is_let_go_not_retried_forever() -> None:
    class TooLarge(Exception):
        retriable = False

    async def scenario() -> None:
        sends: list[str] = []

        async def send() -> asyncio.Future[Any]:
            sends.append("dead letter")
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_exception(TooLarge("MessageSizeTooLarge"))
            return future

        await confirm_sent([await Sent.of(send)])  # logged, not raised: later events are not held
        assert sends == ["dead letter"]

    asyncio.run(scenario())


class Message(SimpleNamespace):
    pass


class Stream:
    def __init__(self) -> None:
        self.acked: list[int] = []

    async def ack(self, event: Any) -> None:
        self.acked.append(event.message.offset)


def _flusher(owned: Any = lambda p: True, write_rows: Any = None) -> tuple[Flusher, SimpleNamespace]:
    table = _table()

    async def send(**kwargs: Any) -> asyncio.Future[Any]:
        table.changelog_topic.sent.append(kwargs)
        return _confirmed()

    table.changelog_topic.send = send

    async def no_rows(work: PendingFlush) -> None:
        return None

    flusher = Flusher(FaustTableCells(table), write_rows or no_rows, owned)
    flusher.pending.stream = Stream()
    return flusher, table


def _fold(flusher: Flusher, partition: int, offsets: list[int], batch: str) -> None:
    key = f"KT|{batch}"
    flusher.cells[key] = CellState("KT", batch)
    events = [SimpleNamespace(message=Message(partition=partition, offset=o)) for o in offsets]
    result = SimpleNamespace(event_rows=[], rate_rows=[], reject_rows=[], touched={key: partition})
    flusher.pending.add(events, result, [], [])


def test_a_flush_acks_its_events_and_persists_their_cells() -> None:
    flusher, table = _flusher()
    _fold(flusher, 0, [5, 6], "B1")
    asyncio.run(flusher.flush())
    assert flusher.pending.stream.acked == [5, 6] and flusher.pending.events == []
    assert [(m["key"], m["partition"]) for m in table.changelog_topic.sent] == [("KT|B1", 0)]


def test_events_of_a_partition_given_away_are_let_go_neither_acked_nor_persisted() -> None:
    # Acked late, they would sit in Faust's acked offsets and could let a commit pass events of
    # the partition's next turn here; persisted late, their cell could undo the new owner's.
    flusher, table = _flusher(owned=lambda partition: partition == 0)
    _fold(flusher, 0, [5], "B1")
    _fold(flusher, 1, [7, 8], "B2")
    asyncio.run(flusher.flush())
    assert flusher.pending.stream.acked == [5]
    assert [m["key"] for m in table.changelog_topic.sent] == ["KT|B1"]
    assert flusher.pending.events == []  # not put back either: the new owner reads them again


def test_a_flush_cancelled_midway_puts_its_work_back() -> None:
    async def scenario() -> None:
        started = asyncio.Event()

        async def slow_rows(work: PendingFlush) -> None:
            started.set()
            await asyncio.sleep(60)

        flusher, _ = _flusher(write_rows=slow_rows)
        _fold(flusher, 0, [5, 6], "B1")
        running = asyncio.ensure_future(flusher.flush())
        await started.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert flusher.pending.stream.acked == []
        assert [e.message.offset for e in flusher.pending.events] == [5, 6]
        assert flusher.pending.dirty == {"KT|B1": 0}

    asyncio.run(scenario())


def test_a_failed_row_write_acks_nothing_and_the_next_flush_does_it_all() -> None:
    failures = iter([ConnectionError("ClickHouse away"), None])

    async def flaky_rows(work: PendingFlush) -> None:
        failure = next(failures)
        if failure:
            raise failure

    flusher, table = _flusher(write_rows=flaky_rows)
    _fold(flusher, 0, [5], "B1")
    with pytest.raises(ConnectionError):
        asyncio.run(flusher.flush())
    assert flusher.pending.stream.acked == [] and table.changelog_topic.sent == []
    asyncio.run(flusher.flush())
    assert flusher.pending.stream.acked == [5] and len(table.changelog_topic.sent) == 1
