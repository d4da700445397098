"""A ClickHouse outage delays delivery and drops nothing: a real server is stopped mid-stream.

While the server is down the stream carries malformed messages and the injected defect's alarm,
so rejects, alerts, rates and the alarm's case all meet the outage, not only the events. A relay
in front of the server also drops the connection exactly at the first rates, rejects and alerts
insert it sees, as a server dying between two inserts of a flush would: each of those writes
fails at least once, whatever the timing of the stop.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import threading
import time
from collections import Counter

import pytest

from sinks.clickhouse import ClickHouseError, ClickHouseUnavailable, open_store
from streams.broker import running_broker
from streams.producer import ensure_topics, make_producer, send_event
from streams.records import Event
from streams.simulator import SimulationConfig, Simulator
from tests.clickhouse_server import ServerProcess
from tests.e2e.processes import cli_env, start_cli, stop, wait_for, with_closing_shipments
from tests.slack_fake import SlackFake

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.server]

DEFECT = SimulationConfig.default_defect(25)  # KT-200-B04 heating_element; alarms in the second half
BAD = [b"{not json", b'{"event_id": "x", "kind": "complaint"}']
WEEK_S = 604_800  # the smallest rates window, the one test_kill9 reads
# The queries the relay fails once each (the driver quotes identifiers with backticks).
FAIL_ONCE = (b"INSERT INTO `rates`", b"INSERT INTO `rejects`", b"INSERT INTO `alerts`")


class FlakyLink:
    """A TCP relay to a ClickHouse server that drops the connection carrying the first query with
    each armed pattern (the query never reaches the server). With the server down, every
    connection it accepts is closed at once, as the server's own port would refuse it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.armed: set[bytes] = set()
        self.dropped: list[bytes] = []
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database: str) -> str:
        return f"clickhouse://127.0.0.1:{self.port}/{database}"

    def fail_once(self, *patterns: bytes) -> None:
        with self.lock:
            self.armed.update(patterns)

    def close(self) -> None:
        self.closed = True
        with self.lock:
            for s in list(self.open):
                self._kill(s)
        self.listener.close()

    def _kill(self, s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
        self.open.discard(s)

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self.lock:
            self.open.update((client, upstream))
        threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()
        self._pipe(client, upstream, True)

    def _pipe(self, src: socket.socket, dst: socket.socket, inspect: bool) -> None:
        tail = b""
        try:
            while chunk := src.recv(65536):
                if inspect:
                    seen = tail + chunk
                    with self.lock:
                        hit = next((p for p in self.armed if p in seen), None)
                        if hit is not None:
                            self.armed.discard(hit)
                            self.dropped.append(hit)
                            self._kill(src)
                            self._kill(dst)
                            return
                    tail = seen[-64:]
                dst.sendall(chunk)
        except OSError:
            pass
        with self.lock:
            self._kill(src)
            self._kill(dst)


def count(url: str, tmp) -> int:
    """Deduplicated events in ClickHouse; -1 while the worker has not created the schema yet."""
    store = open_store(url, tmp)
    try:
        return int(store.query("SELECT count() AS n FROM events FINAL")[0]["n"])
    except (ClickHouseError, ClickHouseUnavailable):
        return -1
    finally:
        store.close()


def simulated_events() -> list[Event]:
    sim = Simulator(SimulationConfig(seed=8, days=40, defect=DEFECT))
    return with_closing_shipments([e for _, day in sim.run() for e in day])


def test_worker_waits_out_a_clickhouse_outage_and_loses_nothing(tmp_path):
    if shutil.which("clickhouse-server") is None:
        pytest.skip("clickhouse-server is not installed")
    server = ServerProcess(tmp_path / "ch")
    server.start()
    url = server.url("outage")
    link = FlakyLink(server.tcp_port)
    events = simulated_events()
    half = len(events) // 2
    incidents = Counter((e.model, e.batch) for e in events if e.kind != "shipment")
    with running_broker() as broker, SlackFake(token="xoxb-e2e") as slack:
        ensure_topics(broker.bootstrap, ["rw.events", "rw.events.dlq", "rw.alerts"], 2)
        env = cli_env(
            RW_KAFKA__URL=broker.url,
            RW_KAFKA__PARTITIONS="2",
            RW_CLICKHOUSE__URL=link.url("outage"),
            RW_CLICKHOUSE__RETRY_MAX_S="1",
            RW_SLACK__TOKEN="xoxb-e2e",
            RW_SLACK__BASE_URL=slack.base_url,
            RW_WORKER__DATA_DIR=str(tmp_path / "w"),
        )
        worker = start_cli(["worker"], env, tmp_path, tmp_path / "worker.log")
        producer = make_producer(broker.bootstrap)
        store = open_store(url, tmp_path)
        try:
            for e in events[:half]:
                send_event(producer, "rw.events", e)
            producer.flush()
            wait_for(lambda: count(url, tmp_path) >= half, 60, "the first half to be written")
            assert count(url, tmp_path) == half
            # The defect has not alarmed yet: its alarm falls in the outage.
            assert store.query("SELECT count() AS n FROM alerts FINAL")[0]["n"] == 0
            link.fail_once(*FAIL_ONCE)
            server.stop()
            # Malformed messages alone, so a flush of nothing but rejects meets the outage.
            for payload in BAD:
                producer.send("rw.events", key=b"KT-100|KT-100-B00", value=payload)
            producer.flush()
            time.sleep(1.5)  # three flush intervals
            # The second half holds the defect's alarm: alert, rates and case all meet the outage.
            for e in events[half:]:
                send_event(producer, "rw.events", e)
            producer.flush()
            time.sleep(4)  # the worker processes and keeps retrying its writes meanwhile
            assert worker.poll() is None, "the worker must not crash on an outage"
            server.start()
            wait_for(lambda: count(url, tmp_path) >= len(events), 60, "every event to be written")
            assert count(url, tmp_path) == len(events)

            def rates() -> dict[tuple[str, str], int]:
                rows = store.query(
                    "SELECT model, batch, sum(count) AS n FROM rates FINAL WHERE failure_mode = '*'"
                    f" AND window_s = {WEEK_S} GROUP BY model, batch"
                )
                return {(r["model"], r["batch"]): int(r["n"]) for r in rows}

            def rates_off() -> str:
                got = rates()
                off = {c: (got.get(c, 0), n) for c, n in incidents.items() if got.get(c, 0) != n}
                return f"(rates, incidents) per cell that differ: {off}"

            # Every cell's incidents reached its rates, whichever flush the outage met.
            wait_for(lambda: rates() == incidents, 30, "the rates", rates_off)
            rejects = store.query("SELECT reason FROM rejects FINAL")
            assert len(rejects) == len(BAD) and all(r["reason"] for r in rejects)
            alerts = store.query("SELECT model, batch, failure_mode FROM alerts FINAL")
            assert (DEFECT.model, *DEFECT.batches, DEFECT.failure_mode) in {
                (a["model"], a["batch"], a["failure_mode"]) for a in alerts
            }
            # The alarm's case was opened and its thread started in Slack once ClickHouse was back.
            title = f"{DEFECT.model} batch {DEFECT.batches[0]}, {DEFECT.failure_mode}"

            def roots() -> set[str]:
                return {
                    c.body["blocks"][0]["text"]["text"]
                    for c in slack.delivered
                    if c.method == "chat.postMessage" and not c.body.get("thread_ts")
                }

            wait_for(lambda: title in roots(), 30, "the case's Slack root", lambda: str(roots()))
            opened = store.query("SELECT data FROM case_events FINAL WHERE action = 'open'")
            assert any(DEFECT.batches[0] in r["data"] for r in opened)
            # Each of those inserts really failed once and was retried.
            assert sorted(link.dropped) == sorted(FAIL_ONCE)
            log_text = (tmp_path / "worker.log").read_text(errors="replace")
            assert re.search(r"ClickHouse insert into \w+ failed .*; retrying", log_text)
        finally:
            producer.close()
            stop(worker)
            store.close()
            link.close()
            server.stop()
