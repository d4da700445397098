"""Start the parts in one process: broker (child), ClickHouse, worker, API, optionally the simulator.

In embedded mode only one process may open the chdb directory, so the API runs in a thread of
the worker's process and shares its store. Ctrl-C (SIGINT) or SIGTERM stops the Faust worker;
everything else is then stopped in reverse order, the broker child last.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import faust
import uvicorn

from api.app import create_api
from cases.risk import load_risk_matrix
from config.settings import Settings
from recallwatch.case_bus import KafkaCommandBus
from sinks.case_store import CaseStore
from sinks.clickhouse import ClickHouseStore, open_store
from sinks.slack_threads import make_thread_notifier
from streams.app import WorkerStats, create_app
from streams.broker import EmbeddedBroker, bootstrap_of, start_broker
from streams.producer import SimulationRun, ensure_topics, make_producer, produce_simulation
from streams.simulator import SimulationConfig, Simulator

log = logging.getLogger("recallwatch")


@dataclass
class Stack:
    settings: Settings
    broker_url: str
    store: ClickHouseStore
    broker: EmbeddedBroker | None = None
    stats: WorkerStats = field(default_factory=WorkerStats)
    simulation: SimulationRun | None = None
    stop_simulation: threading.Event = field(default_factory=threading.Event)


def topic_names(settings: Settings) -> list[str]:
    k = settings.kafka
    return [k.events_topic, k.dead_letter_topic, k.alerts_topic, k.registry_topic, k.case_events_topic]


def build_api(settings: Settings, store: ClickHouseStore, broker_url: str | None) -> Any:
    """The API, sending case commands to the worker that owns each case (the log's one writer).

    Without a broker (a read-mostly API on its own, e.g. over an embedded chdb that no worker can
    share) the API carries commands out itself, which is safe only while no worker runs.
    """
    bus = None
    if broker_url:
        bus = KafkaCommandBus(
            make_producer(bootstrap_of(broker_url)),
            settings.kafka.alerts_topic,
            CaseStore(store),
            wait_s=settings.cases.command_wait_s,
        )
    else:
        log.warning("no RW_KAFKA__URL: case commands run in the API process; run no worker beside it")
    secret = settings.slack.signing_secret
    return create_api(
        store,
        settings.api.public_url,
        settings.api.access_policy(),
        case_bus=bus,
        risk_matrix=load_risk_matrix(settings.cases.risk_matrix),
        slack_signing_secret=secret.get_secret_value() if secret else None,
    )


@contextlib.contextmanager
def infrastructure(settings: Settings) -> Iterator[Stack]:
    """The broker (embedded when no URL is set), topics and the migrated ClickHouse store."""
    broker = None
    url = settings.kafka.url
    if not url:
        settings.worker.data_dir.mkdir(parents=True, exist_ok=True)
        broker = start_broker(log_file=settings.worker.data_dir / "broker.log")
        url = broker.url
        log.info("embedded Tansu broker on %s", broker.bootstrap)
    try:
        ensure_topics(bootstrap_of(url), topic_names(settings), settings.kafka.partitions)
        store = open_store(settings.clickhouse.url or None, settings.clickhouse.data_dir)
        try:
            store.migrate()
            yield Stack(settings, url, store, broker)
        finally:
            store.close()
    finally:
        if broker is not None:
            broker.stop()


def serve_api_in_thread(
    settings: Settings, store: ClickHouseStore, broker_url: str
) -> tuple[uvicorn.Server, threading.Thread]:
    api = build_api(settings, store, broker_url)
    server = uvicorn.Server(
        uvicorn.Config(
            api, host=settings.api.host, port=settings.api.port, log_level="warning", lifespan="off"
        )
    )
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    return server, thread


def start_simulation(stack: Stack, defect: str | None, days: int) -> threading.Thread:
    """Produce simulated events in a thread; ``defect`` is "batch", "lot" or None for a clean run."""
    s = stack.settings.simulator
    config = SimulationConfig(
        seed=s.seed,
        days=days,
        defect=SimulationConfig.default_defect(s.defect_onset_day, defect) if defect else None,
    ).ending_by(time.time())  # the clock is read here, at the edge
    stack.simulation = SimulationRun()
    producer = make_producer(bootstrap_of(stack.broker_url))

    def body() -> None:
        try:
            assert stack.simulation is not None
            produce_simulation(
                producer,
                stack.settings.kafka.events_topic,
                Simulator(config),
                s.speed,
                stack.stop_simulation,
                stack.simulation,
            )
        finally:
            producer.close()

    thread = threading.Thread(target=body, name="simulator", daemon=True)
    thread.start()
    return thread


def run_worker(stack: Stack, on_started: Callable[[faust.App], Any] | None = None) -> None:
    """Run the Faust worker in this thread until SIGINT/SIGTERM; returns after a clean stop."""
    settings = stack.settings
    notifier = make_thread_notifier(
        settings.slack.token.get_secret_value() if settings.slack.token else None,
        settings.slack.channel,
        settings.slack.base_url or None,
        settings.api.public_url,
    )
    app = create_app(settings, stack.broker_url, stack.store, notifier, stack.stats)
    if on_started is not None:
        app.task(on_started)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, stdout=sys.stderr, stderr=sys.stderr)
    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()


def stop_self_after(seconds: float) -> Callable[[faust.App], Any]:
    """A Faust task that ends the worker the way SIGTERM does, after ``seconds``."""

    async def stop_later(app: faust.App) -> None:
        import asyncio

        await asyncio.sleep(seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    return stop_later
