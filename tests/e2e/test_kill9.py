"""Two real workers, each killed with SIGKILL mid-stream in turn and restarted: every event counts once."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from kafka import KafkaConsumer, TopicPartition

from sinks.clickhouse import open_store
from streams.broker import running_broker
from streams.producer import ensure_topics, make_producer, send_event
from streams.records import Event
from streams.simulator import SimulationConfig, Simulator
from tests.e2e.processes import cli_env, start_cli, stop, wait_for, with_closing_shipments
from tests.slack_fake import SlackFake

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.server]
TOPICS = {"RW_KAFKA__EVENTS_TOPIC": "rw.events", "RW_KAFKA__PARTITIONS": "4"}


def simulated_events(days: int) -> list[Event]:
    sim = Simulator(SimulationConfig(seed=11, days=days, defect=SimulationConfig.default_defect(25)))
    return with_closing_shipments([e for _, day in sim.run() for e in day])


def test_kill_minus_9_loses_nothing_and_counts_nothing_twice(tmp_path, server_url):
    events = simulated_events(days=90)
    incidents = [e for e in events if e.kind != "shipment"]
    bad = [b"{not json", b'{"event_id": "x", "kind": "complaint"}']
    store = open_store(server_url, tmp_path)
    store.migrate()
    with running_broker() as broker, SlackFake(token="xoxb-e2e") as slack:
        ensure_topics(broker.bootstrap, ["rw.events", "rw.events.dlq", "rw.alerts"], 4)
        env = {
            **TOPICS,
            "RW_KAFKA__URL": broker.url,
            "RW_CLICKHOUSE__URL": server_url,
            "RW_SLACK__TOKEN": "xoxb-e2e",
            "RW_SLACK__BASE_URL": slack.base_url,
            "RW_WORKER__BATCH_MAX": "500",
            "RW_LOG_LEVEL": os.environ.get("RW_TEST_WORKER_LOG_LEVEL", "INFO"),
            # Offsets are committed rarely, so the kill always leaves applied but uncommitted
            # events behind and the replay path really runs.
            "RW_WORKER__COMMIT_INTERVAL_S": "60",
        }
        workers = {
            name: start_cli(
                ["worker"],
                cli_env(**env, RW_WORKER__DATA_DIR=str(tmp_path / name)),
                tmp_path,
                tmp_path / f"{name}.log",
            )
            for name in ("a", "b")
        }
        producer = make_producer(broker.bootstrap)
        done = threading.Event()

        def produce() -> None:
            # Paced over ~25 s so both kills land mid-stream.
            chunk = max(1, len(events) // 100)
            for i in range(0, len(events), chunk):
                for e in events[i : i + chunk]:
                    send_event(producer, "rw.events", e)
                if i == chunk * 10:
                    for payload in bad:
                        producer.send("rw.events", key=b"KT-100|KT-100-B00", value=payload)
                producer.flush()
                time.sleep(0.25)
            done.set()

        def diagnose() -> str:
            seen = store.query(
                "SELECT src_partition AS p, count() AS n, max(src_offset) AS last FROM events FINAL"
                " GROUP BY src_partition ORDER BY p"
            )
            consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
            tps = [TopicPartition("rw.events", p) for p in range(4)]
            ends = {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
            consumer.close()
            # Exact source offsets that reached neither the events nor the rejects table.
            have = store.query("SELECT src_partition AS p, src_offset AS o FROM events FINAL")
            have += store.query("SELECT partition AS p, offset AS o FROM rejects FINAL")
            got = {(r["p"], r["o"]) for r in have}
            missing = [(p, o) for p, end in ends.items() for o in range(end) if (p, o) not in got]
            return (
                f"missing (partition, offset): {missing[:50]}; ClickHouse per partition: {seen};"
                f" topic end offsets: {ends}; logs in {tmp_path}"
            )

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        try:
            count = lambda: store.query("SELECT count() AS n FROM events FINAL")[0]["n"]  # noqa: E731
            wait_for(lambda: count() > len(events) // 5, 60, "the workers to make progress")

            def kill_after_its_flushes_and_replace(name: str, log_name: str, replacement: str) -> None:
                # Killed only once it has persisted state and rows: with offsets committed rarely,
                # its events are then applied but uncommitted, which is what replay must handle.
                log = tmp_path / f"{log_name}.log"
                wait_for(
                    lambda: log.read_text(errors="replace").count("flushed ") >= 2, 60, f"{log_name} to flush"
                )
                assert not done.is_set(), "the stream ended before the kill: pace it slower"
                workers[name].send_signal(signal.SIGKILL)
                workers[name].wait()
                # Replaced once the survivor has taken over (the dead member's session must expire
                # first), so the restart is one clean rebalance rather than two overlapping ones.
                at_kill = count()
                wait_for(lambda: count() > at_kill + 500, 60, f"the survivor to take over from {log_name}")
                workers[name] = start_cli(
                    ["worker"],
                    cli_env(**env, RW_WORKER__DATA_DIR=str(tmp_path / replacement)),
                    tmp_path,
                    tmp_path / f"{replacement}.log",
                )

            kill_after_its_flushes_and_replace("a", "a", "a2")
            # Then the survivor, once a's replacement has joined and flushed: the partitions b took
            # over from a, and its own, move again, each with applied but uncommitted events and
            # cells b persisted, and come back to b's replacement.
            kill_after_its_flushes_and_replace("b", "a2", "b2")
            thread.join(timeout=60)
            assert done.is_set()
            deadline = time.monotonic() + 120
            while count() < len(events) and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(2)  # anything counted twice would show up now
            rate_total = store.query(
                "SELECT sum(count) AS n FROM rates FINAL WHERE failure_mode = '*' AND window_s = 604800"
            )[0]["n"]
            per_cell = store.query(
                "SELECT model, batch, sum(count) AS n FROM rates FINAL WHERE failure_mode = '*'"
                " AND window_s = 604800 GROUP BY model, batch ORDER BY model, batch"
            )
            expected = store.query(
                "SELECT model, batch, count() AS n FROM events FINAL WHERE kind != 'shipment'"
                " GROUP BY model, batch ORDER BY model, batch"
            )
            # Never counted twice: the rates of every cell match its events exactly.
            assert per_cell == expected
            # Nothing lost: every produced event reached the events table once (missing offsets
            # are listed if not). Before streams/faust_tuning.py points 3-5 about 1 run in 12 lost
            # 1-3 events around a rebalance; since then none has, in every run recorded on issue 2.
            lost = len(events) - count()
            assert lost == 0, f"{lost} events lost. {diagnose()}"
            assert rate_total == len(incidents)
            rejects = store.query("SELECT reason FROM rejects FINAL")
            assert len(rejects) == len(bad) and all(r["reason"] for r in rejects)
            alerts = store.query("SELECT alert_id, model, batch, failure_mode FROM alerts FINAL")
            assert [(a["model"], a["batch"], a["failure_mode"]) for a in alerts] == [
                ("KT-200", "KT-200-B04", "heating_element")
            ]
            slack.wait_for_calls(1, timeout=30)
            # One case, one thread root, whatever the kills replayed.
            roots = [
                c for c in slack.delivered if c.method == "chat.postMessage" and not c.body.get("thread_ts")
            ]
            assert {c.body["blocks"][0]["text"]["text"] for c in roots} == {
                "KT-200 batch KT-200-B04, heating_element"
            }
            logs = "".join(f.read_text(errors="replace") for f in tmp_path.glob("*.log"))
            assert "replayed events their cells had already applied" in logs
        finally:
            producer.close()
            for w in workers.values():
                stop(w)
            store.close()
