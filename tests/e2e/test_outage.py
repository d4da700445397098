"""A ClickHouse outage delays delivery and drops nothing: a real server is stopped mid-stream."""

from __future__ import annotations

import re
import shutil
import time

import pytest

from sinks.clickhouse import ClickHouseError, ClickHouseUnavailable, open_store
from streams.broker import running_broker
from streams.producer import ensure_topics, make_producer, send_event
from streams.simulator import SimulationConfig, Simulator
from tests.clickhouse_server import ServerProcess
from tests.e2e.processes import cli_env, start_cli, stop

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.server]


def count(url: str, tmp) -> int:
    """Deduplicated events in ClickHouse; -1 while the worker has not created the schema yet."""
    store = open_store(url, tmp)
    try:
        return int(store.query("SELECT count() AS n FROM events FINAL")[0]["n"])
    except (ClickHouseError, ClickHouseUnavailable):
        return -1
    finally:
        store.close()


def test_worker_waits_out_a_clickhouse_outage_and_loses_nothing(tmp_path):
    if shutil.which("clickhouse-server") is None:
        pytest.skip("clickhouse-server is not installed")
    server = ServerProcess(tmp_path / "ch")
    server.start()
    url = server.url("outage")
    events = [e for _, day in Simulator(SimulationConfig(seed=8, days=40)).run() for e in day]
    half = len(events) // 2
    with running_broker() as broker:
        ensure_topics(broker.bootstrap, ["rw.events", "rw.events.dlq", "rw.alerts"], 2)
        env = cli_env(
            RW_KAFKA__URL=broker.url,
            RW_KAFKA__PARTITIONS="2",
            RW_CLICKHOUSE__URL=url,
            RW_CLICKHOUSE__RETRY_MAX_S="1",
            RW_WORKER__DATA_DIR=str(tmp_path / "w"),
        )
        worker = start_cli(["worker"], env, tmp_path, tmp_path / "worker.log")
        producer = make_producer(broker.bootstrap)
        try:
            for e in events[:half]:
                send_event(producer, "rw.events", e)
            producer.flush()
            deadline = time.monotonic() + 60
            while count(url, tmp_path) < half and time.monotonic() < deadline:
                time.sleep(0.5)
            assert count(url, tmp_path) == half
            server.stop()
            for e in events[half:]:
                send_event(producer, "rw.events", e)
            producer.flush()
            time.sleep(4)  # the worker processes and keeps retrying its writes meanwhile
            assert worker.poll() is None, "the worker must not crash on an outage"
            server.start()
            deadline = time.monotonic() + 60
            while count(url, tmp_path) < len(events) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert count(url, tmp_path) == len(events)
            # Which insert met the outage depends on where the stop fell in a flush (events, then
            # rates, rejects, alerts): any of them, retried until the server was back.
            log_text = (tmp_path / "worker.log").read_text(errors="replace")
            assert re.search(r"ClickHouse insert into \w+ failed .*; retrying", log_text)
        finally:
            producer.close()
            stop(worker)
            server.stop()
