"""Kafka edges that are not Faust: topic creation and the simulator's producer (kafka-python)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.records import Event, encode_event
from streams.simulator import Simulator

log = logging.getLogger("recallwatch.producer")


def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    """Create the topics the system uses, with the partition count the worker expects."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="recallwatch-admin")
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names if n not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(wanted)
    finally:
        admin.close()


def make_producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5, batch_size=256 * 1024)


def send_event(producer: KafkaProducer, topic: str, event: Event) -> None:
    producer.send(topic, key=event.cell_key.encode(), value=encode_event(event))


@dataclass
class SimulationRun:
    """What the simulator did, in wall-clock terms the demo summary needs."""

    started_wall: float = 0.0
    produced: int = 0
    day: int = -1
    defect_onset_wall: float | None = None
    finished: bool = False


def produce_simulation(
    producer: KafkaProducer,
    topic: str,
    simulator: Simulator,
    speed: float,
    stop: threading.Event,
    run: SimulationRun,
    clock: Callable[[], float] = time.time,
) -> SimulationRun:
    """Produce each simulated day at ``day / speed`` seconds after the start (wall clock)."""
    run.started_wall = clock()
    defect = simulator.config.defect
    for day, events in simulator.run():
        due = run.started_wall + day / speed
        while not stop.is_set() and clock() < due:
            stop.wait(min(0.05, max(0.0, due - clock())))
        if stop.is_set():
            break
        if defect is not None and run.defect_onset_wall is None and day >= defect.onset_day:
            run.defect_onset_wall = clock()
        for event in events:
            send_event(producer, topic, event)
        producer.flush()
        run.produced += len(events)
        run.day = day
    run.finished = True
    return run
