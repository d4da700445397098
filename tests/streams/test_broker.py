"""The embedded broker starts and stops, and the high-water marks Faust recovery relies on are exact."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaConsumer, TopicPartition

from streams.broker import bootstrap_of, running_broker, wait_for_port
from streams.producer import ensure_topics

pytestmark = [pytest.mark.integration]


def test_broker_runs_as_a_child_and_stops():
    with running_broker() as broker:
        wait_for_port(broker.port, timeout_s=1)
        assert broker.process.poll() is None
        assert bootstrap_of(broker.url) == broker.bootstrap
    assert broker.process.poll() is not None
    with pytest.raises(TimeoutError):
        wait_for_port(broker.port, timeout_s=0.3)


def test_one_record_per_batch_keeps_high_water_marks_exact():
    """Faust's table recovery reads a changelog up to its high-water mark. Tansu 0.6 reports the
    mark of a multi-record batch as the batch's base offset + 1, so the worker produces one record
    per batch (``kafka.one_record_per_batch``); this checks that premise on the real broker."""

    async def produce(bootstrap: str, n: int) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=1, linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send("changelog-like", b"x" * 500) for _ in range(n)]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    with running_broker() as broker:
        ensure_topics(broker.bootstrap, ["changelog-like"], 1)
        asyncio.run(produce(broker.bootstrap, 300))
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
        try:
            tp = TopicPartition("changelog-like", 0)
            assert consumer.end_offsets([tp])[tp] == 300
        finally:
            consumer.close()
