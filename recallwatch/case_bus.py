"""How the API hands a case command to the case's one writer, and learns what became of it.

``KafkaCommandBus`` sends the command on the alerts topic, keyed by case id, so the worker that owns
the case carries it out in order with the case's alerts; the API then waits a little for the result
row the worker records. A command not carried out within the wait is still queued, not lost: the
caller gets its id and can poll. ``DirectCommandBus`` runs the desk in-process (single-process
tools and API tests that need no worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from kafka.errors import KafkaError

from cases.commands import Command
from recallwatch.case_desk import CaseDesk
from sinks.case_store import CaseStore, CommandResult
from sinks.clickhouse import ClickHouseError, ClickHouseUnavailable

COMMAND_TYPE = "case_command"


def command_message(cmd: Command) -> bytes:
    """The alerts-topic message of a command (alerts themselves carry no ``type``)."""
    return orjson.dumps({"type": COMMAND_TYPE, "command": cmd.to_dict()})


class CommandNotSent(Exception):
    """The broker did not confirm a command in time: it may or may not be queued.

    Sending it again under the same id is safe (the case's writer carries out an id once), so the
    caller is told to retry with the same Idempotency-Key.
    """

    def __init__(self, command_id: str, cause: Exception) -> None:
        super().__init__(f"command {command_id} was not confirmed by Kafka ({type(cause).__name__}: {cause})")
        self.command_id = command_id


class CommandBus(Protocol):
    def submit(self, cmd: Command) -> CommandResult | None:
        """The command's result, or None if it is queued but not carried out yet."""


class DirectCommandBus:
    def __init__(self, desk: CaseDesk) -> None:
        self.desk = desk

    def submit(self, cmd: Command) -> CommandResult | None:
        return self.desk.run(cmd)[0]


class KafkaCommandBus:
    def __init__(
        self,
        producer: Any,  # kafka.KafkaProducer
        topic: str,
        cases: CaseStore,
        wait_s: float = 5.0,
        poll_s: float = 0.05,
        send_timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.producer, self.topic, self.cases = producer, topic, cases
        self.wait_s, self.poll_s, self._sleep, self._clock = wait_s, poll_s, sleep, clock
        self.send_timeout_s = send_timeout_s

    def submit(self, cmd: Command) -> CommandResult | None:
        """Send the command and wait a little for its result; None means queued, not yet known.

        ClickHouse being down must not refuse or repeat a command that Kafka can queue: reads of
        the result only spare a resend or tell the outcome sooner. Sending a retried request again
        is safe (the case's writer carries out a command id once), and a command already sent is
        reported as queued rather than failed, so a client never resends it under a new id.
        """
        try:
            done = self.cases.result(cmd.command_id)
        except (ClickHouseUnavailable, ClickHouseError):
            done = None  # unknown: send anyway
        if done is not None:  # a retried request: answer as the first time, send nothing
            return done
        try:
            sent = self.producer.send(self.topic, key=cmd.case_id.encode(), value=command_message(cmd))
            sent.get(timeout=self.send_timeout_s)
        except KafkaError as exc:
            raise CommandNotSent(cmd.command_id, exc) from exc
        deadline = self._clock() + self.wait_s
        while self._clock() < deadline:
            self._sleep(self.poll_s)
            try:
                result = self.cases.result(cmd.command_id)
            except (ClickHouseUnavailable, ClickHouseError):  # refused or down: either way, unknown
                return None  # queued; the caller polls for the outcome once ClickHouse is back
            if result is not None:
                return result
        return None
