"""retry_until_done: a sink failure is waited out, never given up on; cancellation goes through."""

from __future__ import annotations

import asyncio

import pytest

from sinks.clickhouse import ClickHouseError, ClickHouseUnavailable
from streams import app as app_module
from streams.app import retry_until_done


def flaky(failures: list[Exception], value: object):
    """An action that raises each of ``failures`` in turn, then returns ``value``; counts calls."""
    calls = []

    async def action() -> object:
        calls.append(len(calls))
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return value

    return action, calls


def test_keeps_retrying_through_clickhouse_failures_and_returns_the_value():
    failures = [
        ClickHouseUnavailable("connection refused"),
        ClickHouseError("Code: 252. Too many parts"),
        ClickHouseUnavailable("Unexpected EOF"),
        ClickHouseUnavailable("connection refused"),
    ]
    action, calls = flaky(failures, {"rows": 3})
    result = asyncio.run(retry_until_done("insert into rates", action, 0.001, 0.002))
    assert result == {"rows": 3}
    assert len(calls) == len(failures) + 1


def test_backs_off_doubling_up_to_the_maximum(monkeypatch):
    delays: list[float] = []

    async def no_sleep(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr(app_module.asyncio, "sleep", no_sleep)
    action, _ = flaky([ClickHouseUnavailable("down")] * 5, 7)
    assert asyncio.run(retry_until_done("insert", action, 0.25, 1.0)) == 7
    assert delays == [0.25, 0.5, 1.0, 1.0, 1.0]


def test_cancellation_from_the_action_is_not_retried():
    action, calls = flaky([asyncio.CancelledError()], None)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(retry_until_done("insert", action, 0.001, 0.002))
    assert len(calls) == 1


def test_a_task_cancelled_while_backing_off_stops_retrying():
    action, calls = flaky([ClickHouseUnavailable("down")] * 100, None)

    async def scenario() -> None:
        task = asyncio.ensure_future(retry_until_done("insert", action, 30, 30))
        while not calls:
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)  # now in its 30 s backoff
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert len(calls) == 1
