"""End-to-end throughput of one worker next to bare Faust, and alert latency. Prints one JSON line.

Phase 1 (throughput): N simulated events are produced once to a topic on an embedded Tansu broker.
Then, each in a fresh process and its own consumer group, (a) bare Faust iterates them as JSON,
(b) bare Faust iterates them as raw bytes, and (c) one RecallWatch worker runs the whole pipeline
(decode, validate, rates, detectors, ClickHouse via chdb, state changelog). Each rate is measured
from the first event seen to the last, so group-join time is excluded from all three alike.

Phase 2 (latency): a warmed worker gets events paced like the demo, with defects injected in many
batches; for each alert, latency is the Slack call's arrival at a local Slack Web API server minus
the producer timestamp of the event that closed the alarming bucket.

    python bench/pipeline.py [--events 100000] [--latency-seconds 60] [--repeat 3]

Throughput figures are medians over interleaved repetitions; ``ratio`` is the median of the
per-repetition ratios, each measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def simulated_events(n: int, seed: int = 3):
    from streams.simulator import SimulationConfig, Simulator

    # More models and larger batches give a firehose with the demo's shape.
    models = tuple(f"M{i:02d}" for i in range(12))
    # Ten years, ending by now: the worker dead-letters events dated after their record was sent,
    # and from 2025 on, 100k days would pass today after ~1.2 M events. Ten years give ~4.5 M.
    config = SimulationConfig(seed=seed, days=3650, models=models, batch_units=40_000).ending_by(time.time())
    sim = Simulator(config)
    out = []
    for _, events in sim.run():
        out.extend(events)
        if len(out) >= n:
            return out[:n]
    return out


def role_bare(broker: str, topic: str, n: int, serializer: str) -> dict:
    import faust

    app = faust.App(
        f"bare-{serializer}-{os.getpid()}",
        broker=broker,
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="rw-bench-bare-"),  # not "<app id>-data" in the caller's cwd
        web_enabled=False,
        broker_rebalance_timeout=5,
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(topic, value_serializer=serializer, key_serializer="raw")
    marks: dict[str, float] = {}
    count = 0

    @app.agent(source)
    async def iterate(stream):  # type: ignore[no-untyped-def]
        nonlocal count
        async for _ in stream:
            count += 1
            if count == 1:
                marks["first"] = time.perf_counter()
            if count == n:
                marks["last"] = time.perf_counter()
                os.kill(os.getpid(), 15)

    return _run_worker(app, marks, lambda: count)


def role_pipeline(broker: str, topic: str, n: int, data_dir: str) -> dict:
    import faust  # noqa: F401 - the worker below is Faust's

    from config.settings import load_settings
    from sinks.clickhouse import open_store
    from sinks.slack_threads import ConsoleThreadNotifier
    from streams.app import WorkerStats, create_app

    settings = load_settings(
        kafka={"events_topic": topic, "app_id": f"pipeline-{os.getpid()}", "partitions": 1},
        clickhouse={"data_dir": f"{data_dir}/ch"},
        worker={"data_dir": f"{data_dir}/w"},
        log_level="ERROR",
    )
    store = open_store(None, settings.clickhouse.data_dir)
    store.migrate()
    stats = WorkerStats()
    with open(os.devnull, "w") as sink:
        app = create_app(settings, broker, store, ConsoleThreadNotifier(stream=sink), stats)
        marks: dict[str, float] = {}

        # Polled every 20 ms: finer polling costs the measured worker event-loop time (200 Hz cost
        # ~3 % of it in a profile), coarser adds up to 20 ms to a ~10 s measurement.
        @app.timer(0.02)
        async def watch() -> None:
            done = stats.processed + stats.rejected
            if done and "first" not in marks:
                marks["first"] = time.perf_counter()
            if done >= n and "last" not in marks:
                marks["last"] = time.perf_counter()
                os.kill(os.getpid(), 15)

        result = _run_worker(app, marks, lambda: stats.processed)
    rows = store.query("SELECT count() AS n FROM events FINAL")[0]["n"]
    store.close()
    result["clickhouse_events"] = rows
    return result


def _run_worker(app, marks: dict[str, float], count) -> dict:  # type: ignore[no-untyped-def]
    import contextlib

    import faust

    worker = faust.Worker(app, loglevel="ERROR", quiet=True, stdout=sys.stderr, stderr=sys.stderr)
    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()
    seconds = marks.get("last", 0) - marks.get("first", 0)
    return {"events": count(), "seconds": seconds}


def run_role(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--role", *args], capture_output=True, text=True, timeout=900, cwd=ROOT
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"role {args[0]} failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def throughput(broker_url: str, bootstrap: str, n: int, tmp: str, repeat: int) -> dict:
    from streams.producer import ensure_topics, make_producer, send_event

    topic = "bench.events"
    ensure_topics(bootstrap, [topic], 1)
    events = simulated_events(n)
    producer = make_producer(bootstrap)
    for e in events:
        send_event(producer, topic, e)
    producer.flush()
    producer.close()
    n = len(events)
    rate = lambda r: r["events"] / r["seconds"] if r["seconds"] > 0 else 0.0  # noqa: E731
    runs: dict[str, list[float]] = {"json": [], "raw": [], "pipeline": [], "ratio": [], "ratio_raw": []}
    clickhouse_events = []
    # Interleaved repetitions: machine noise hits both sides of each ratio alike.
    for i in range(repeat):
        bare_json = rate(run_role("bare", broker_url, topic, str(n), "json"))
        bare_raw = rate(run_role("bare", broker_url, topic, str(n), "raw"))
        pipeline = run_role("pipeline", broker_url, topic, str(n), f"{tmp}/rep{i}")
        clickhouse_events.append(pipeline["clickhouse_events"])
        for key, value in (("json", bare_json), ("raw", bare_raw), ("pipeline", rate(pipeline))):
            runs[key].append(value)
        runs["ratio"].append(rate(pipeline) / bare_json)
        runs["ratio_raw"].append(rate(pipeline) / bare_raw)
    median = lambda xs: round(statistics.median(xs), 3)  # noqa: E731
    return {
        "events": n,
        "repeats": repeat,
        "events_per_s": round(statistics.median(runs["pipeline"]), 1),
        "bare_faust_events_per_s": round(statistics.median(runs["json"]), 1),
        "bare_faust_raw_events_per_s": round(statistics.median(runs["raw"]), 1),
        "ratio": median(runs["ratio"]),
        "ratio_vs_raw": median(runs["ratio_raw"]),
        "ratio_each_run": [round(r, 3) for r in runs["ratio"]],
        "clickhouse_events": min(clickhouse_events),
    }


def latency(broker_url: str, bootstrap: str, seconds: float, tmp: str) -> dict:
    from config.settings import load_settings
    from recallwatch.stack import Stack, run_worker, stop_self_after
    from sinks.clickhouse import open_store
    from streams.producer import SimulationRun, ensure_topics, make_producer, produce_simulation
    from streams.simulator import Defect, SimulationConfig, Simulator
    from tests.slack_fake import SlackFake

    topic = "bench.paced"
    ensure_topics(bootstrap, [topic, "bench.alerts", "bench.dlq"], 4)
    speed = 2.0  # simulated days per second
    models = tuple(f"M{i:02d}" for i in range(8))
    defects = tuple(
        Defect(m, (f"{m}-B{b:02d}",), "heating_element", 16 + 2 * i, 6.0)
        for i, (m, b) in enumerate((m, b) for m in models for b in (3, 5))
    )
    sim_config = SimulationConfig(seed=5, models=models, days=int(seconds * speed) + 2, extra_defects=defects)
    with SlackFake(token="xoxb-bench") as slack:
        settings = load_settings(
            kafka={
                "events_topic": topic,
                "alerts_topic": "bench.alerts",
                "dead_letter_topic": "bench.dlq",
                "app_id": f"latency-{os.getpid()}",
                "url": broker_url,
            },
            clickhouse={"data_dir": f"{tmp}/lat-ch"},
            worker={"data_dir": f"{tmp}/lat-w", "batch_within_s": 0.02},
            slack={"token": "xoxb-bench", "base_url": slack.base_url},
            log_level="ERROR",
        )
        store = open_store(None, settings.clickhouse.data_dir)
        store.migrate()
        stack = Stack(settings, broker_url, store)
        run = SimulationRun()
        stop = threading.Event()
        producer = make_producer(bootstrap)

        def produce_when_ready() -> None:
            time.sleep(8)  # the worker joins its group first, so the pace is the demo's, not a backlog
            produce_simulation(producer, topic, Simulator(sim_config), speed, stop, run)

        thread = threading.Thread(target=produce_when_ready, daemon=True)
        thread.start()
        run_worker(stack, on_started=stop_self_after(seconds + 12))
        stop.set()
        thread.join(timeout=10)
        producer.close()
        store.close()
        received = [(json.dumps(c.body), c.received_at) for c in slack.delivered]
        latencies, detect, deliver = [], [], []
        for alert in stack.stats.alerts:
            arrival = next((t for body, t in received if alert["alert_id"] in body), None)
            sent = stack.stats.alert_sent_at.get(alert["alert_id"])
            if arrival is not None and alert["trigger_produced_at"] > 0:
                latencies.append(arrival - alert["trigger_produced_at"])
                if sent is not None:
                    detect.append(sent - alert["trigger_produced_at"])
                    deliver.append(arrival - sent)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None
    return {
        "alerts": len(stack.stats.alerts),
        "defects_injected": len(defects),
        "alert_latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "alert_latency_p99_s": round(p99, 3) if p99 is not None else None,
        "alert_latency_max_s": round(latencies[-1], 3) if latencies else None,
        "alert_detect_p50_s": round(statistics.median(detect), 3) if detect else None,
        "alert_deliver_p50_s": round(statistics.median(deliver), 3) if deliver else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--latency-seconds", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved throughput repetitions")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role, broker, topic, n, extra = args.role
        if role == "bare":
            print(json.dumps(role_bare(broker, topic, int(n), extra)))
        else:
            print(json.dumps(role_pipeline(broker, topic, int(n), extra)))
        return
    import logging

    logging.basicConfig(level=logging.ERROR)
    from streams.broker import running_broker

    with tempfile.TemporaryDirectory() as tmp, running_broker() as broker:
        figures = throughput(broker.url, broker.bootstrap, args.events, tmp, args.repeat)
        figures.update(latency(broker.url, broker.bootstrap, args.latency_seconds, tmp))
    figures["cpu_count"] = os.cpu_count()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
