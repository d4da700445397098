"""The Kafka command bus while ClickHouse is down: a command is queued, never refused or repeated.

Real parts only: the Tansu broker, and a ClickHouse server address nothing listens on, which is
what an outage looks like to the API (ClickHouseUnavailable from the driver).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from api.app import create_api
from cases.commands import Command
from cases.identity import SignalIdentity, case_id_for
from core.access import AccessPolicy
from recallwatch.case_bus import KafkaCommandBus, command_message
from sinks.case_store import CaseStore
from sinks.clickhouse import ClickHouseError, ClickHouseStore, ClickHouseUnavailable, open_store
from streams.broker import EmbeddedBroker, free_port, running_broker
from streams.producer import make_producer

pytestmark = pytest.mark.integration
TOPIC = "rw.alerts"
CASE = case_id_for(SignalIdentity.from_list(["cell", "KT-100", "B05", "heating_element"]))


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with running_broker() as b:
        yield b


@pytest.fixture
def down_store(tmp_path: Path) -> Iterator[ClickHouseStore]:
    store = open_store(f"clickhouse://127.0.0.1:{free_port()}/default", tmp_path)
    with pytest.raises(ClickHouseUnavailable):  # the outage is real, not assumed
        CaseStore(store).result("c-1")
    yield store
    store.close()


def sent_values(broker: EmbeddedBroker) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, consumer_timeout_ms=2000)
    try:
        parts = [TopicPartition(TOPIC, p) for p in consumer.partitions_for_topic(TOPIC) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        return [record.value for record in consumer]
    finally:
        consumer.close()


def test_a_command_is_queued_while_clickhouse_is_down(
    broker: EmbeddedBroker, down_store: ClickHouseStore
) -> None:
    producer = make_producer(broker.bootstrap)
    bus = KafkaCommandBus(producer, TOPIC, CaseStore(down_store), wait_s=0.5, poll_s=0.05)
    cmd = Command("c-down-1", CASE, "evidence", "ana", time.time(), "lab note", {"note": "burn marks"})
    try:
        started = time.monotonic()
        assert bus.submit(cmd) is None  # queued: the outcome is not known yet
        assert time.monotonic() - started < 5  # no waiting out the poll on a store that is down
    finally:
        producer.close()
    assert command_message(cmd) in sent_values(broker)  # sent once, for the case's worker to carry out


def test_a_command_whose_result_clickhouse_refuses_to_read_is_queued(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    # Not an outage but a refusal (here: no such table, as on a store not migrated yet): after
    # sending, any failure to read the result still means "queued", never a 5xx that invites a resend.
    refusing = open_store(None, tmp_path / "unmigrated")
    with pytest.raises(ClickHouseError):
        CaseStore(refusing).result("c-1")
    producer = make_producer(broker.bootstrap)
    bus = KafkaCommandBus(producer, TOPIC, CaseStore(refusing), wait_s=0.5, poll_s=0.05)
    cmd = Command("c-refused-1", CASE, "evidence", "ana", time.time(), "lab note", {"note": "soot"})
    try:
        assert bus.submit(cmd) is None
    finally:
        producer.close()
        refusing.close()
    assert command_message(cmd) in sent_values(broker)


def post_evidence(store: ClickHouseStore, bus: KafkaCommandBus, idempotency_key: str) -> Response:
    """An evidence command through a real API over ``store`` and ``bus``, as a quality manager."""
    policy = AccessPolicy(keys={"key-qm": "quality_manager"}, anonymous_role=None)
    headers = {"X-API-Key": "key-qm", "Idempotency-Key": idempotency_key}
    body = {"reason": "lab note", "actor": "ana", "args": {"note": "burn marks"}}
    with TestClient(create_api(store, "http://rw.test", policy, case_bus=bus)) as c:
        return c.post(f"/v1/cases/{CASE}/commands/evidence", json=body, headers=headers)


@pytest.mark.parametrize("api_reads", ["up", "down"])
def test_the_api_answers_202_queued_not_503_for_a_command_sent_during_an_outage(
    broker: EmbeddedBroker, down_store: ClickHouseStore, tmp_path: Path, api_reads: str
) -> None:
    # A command Kafka took must be reported as queued (202), not as failed (503): told it failed, a
    # client would send it again under a new id, and it would be carried out twice. "up": the store
    # goes down between the key's check and the bus's polls; "down": the key's check fails too.
    api_store = down_store
    if api_reads == "up":
        api_store = open_store(None, tmp_path / "chdb")
        api_store.migrate()
    producer = make_producer(broker.bootstrap)
    bus = KafkaCommandBus(producer, TOPIC, CaseStore(down_store), wait_s=0.5, poll_s=0.05)
    key = f"k-outage-{api_reads}"
    try:
        r = post_evidence(api_store, bus, key)
    finally:
        producer.close()
        if api_store is not down_store:
            api_store.close()
    assert r.status_code == 202, r.text
    assert r.json() == {"command_id": key, "case_id": CASE, "status": "queued"}
    assert any(f'"{key}"'.encode() in value for value in sent_values(broker))


def test_a_command_kafka_does_not_take_is_a_503_asking_to_resend_with_the_same_key(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    # Any send the producer cannot get confirmed (here one over its request size, refused at
    # once; a broker gone away ends the same way after the send timeout) may or may not have
    # queued the command: a 503 that says to resend under the same key, not a 500.
    store = open_store(None, tmp_path / "chdb")
    store.migrate()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=64)
    bus = KafkaCommandBus(producer, TOPIC, CaseStore(store), wait_s=0.2)
    try:
        r = post_evidence(store, bus, "k-unsent")
    finally:
        producer.close()
        store.close()
    assert r.status_code == 503, r.text
    assert "same Idempotency-Key" in r.json()["detail"]
