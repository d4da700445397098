"""``recallwatch``: run, demo, worker, api, simulate. The entry point builds the settings once."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from config.settings import Settings, load_settings

log = logging.getLogger("recallwatch")


def _settings(args: argparse.Namespace) -> Settings:
    try:
        settings = load_settings()
    except ValueError as exc:  # a config file or variable that cannot be used: say why, no traceback
        raise SystemExit(f"recallwatch: bad configuration: {exc}") from None
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    from recallwatch.stack import infrastructure, run_worker, serve_api_in_thread, start_simulation

    settings = _settings(args)
    with infrastructure(settings) as stack:
        server, thread = serve_api_in_thread(settings, stack.store, stack.broker_url)
        print(
            f"RecallWatch API on {settings.api.public_url}  (docs: {settings.api.public_url}/docs)",
            file=sys.stderr,
        )
        if args.simulate:
            start_simulation(stack, defect=None if args.no_defect else args.defect, days=args.days)
        try:
            run_worker(stack)
        finally:
            stack.stop_simulation.set()
            server.should_exit = True
            thread.join(timeout=10)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from recallwatch.stack import infrastructure, run_worker, serve_api_in_thread, start_simulation
    from sinks.schema import row_counts

    settings = _settings(args)
    with infrastructure(settings) as stack:
        server, thread = serve_api_in_thread(settings, stack.store, stack.broker_url)
        days = int(args.seconds * settings.simulator.speed) + 2
        defect_kind = None if args.no_defect else args.defect
        start_simulation(stack, defect=defect_kind, days=days)
        started = time.monotonic()

        async def controller(app: Any) -> None:
            import os
            import signal

            while time.monotonic() - started < args.seconds:
                await asyncio.sleep(min(5.0, max(0.1, args.seconds - (time.monotonic() - started))))
                sim = stack.simulation
                print(
                    f"[{time.monotonic() - started:5.1f}s] day {sim.day if sim else -1}: "
                    f"produced {sim.produced if sim else 0}, processed {stack.stats.processed}, "
                    f"alerts {len(stack.stats.alerts)}",
                    file=sys.stderr,
                )
            # Let the worker drain what was produced before stopping.
            sim = stack.simulation
            stack.stop_simulation.set()
            deadline = time.monotonic() + 15
            while (
                sim
                and stack.stats.processed + stack.stats.rejected < sim.produced
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)
            os.kill(os.getpid(), signal.SIGTERM)

        try:
            run_worker(stack, on_started=controller)
        finally:
            stack.stop_simulation.set()
            server.should_exit = True
            thread.join(timeout=10)
        summary = demo_summary(stack, row_counts(stack.store), defect_kind)
    if args.json:
        print(json.dumps(summary))
    else:
        print_summary(summary)
    return 0


def demo_summary(stack: Any, rows: dict[str, int], with_defect: bool) -> dict[str, Any]:
    from streams.simulator import SimulationConfig

    sim = stack.simulation
    defect = (
        SimulationConfig.default_defect(stack.settings.simulator.defect_onset_day) if with_defect else None
    )
    alerts = []
    for alert, delivery in zip(stack.stats.alerts, stack.stats.deliveries, strict=True):
        matches = bool(
            defect
            and alert["model"] == defect.model
            and alert["batch"] in defect.batches
            and alert["failure_mode"] in (defect.failure_mode, "*")
        )
        onset = sim.defect_onset_wall if sim else None
        alerts.append(
            {
                "alert_id": alert["alert_id"],
                "model": alert["model"],
                "batch": alert["batch"],
                "failure_mode": alert["failure_mode"],
                "detector": alert["detector"],
                "opened_at": datetime.fromtimestamp(alert["opened_at"], UTC).isoformat(),
                "delay_s": round(delivery["delivered_at"] - onset, 3) if onset else None,
                "matches_injected": matches,
                "delivered_via": delivery["channel"] if delivery["status"] != "console" else "console",
            }
        )
    return {
        "events_produced": sim.produced if sim else 0,
        "events_processed": stack.stats.processed,
        "events_rejected": stack.stats.rejected,
        "defect": None
        if defect is None
        else {**defect.__dict__, "onset_wall": sim.defect_onset_wall if sim else None},
        "alerts": alerts,
        "clickhouse_rows": rows,
    }


def print_summary(summary: dict[str, Any]) -> None:
    print(f"events produced:  {summary['events_produced']}")
    print(f"events processed: {summary['events_processed']} (rejected {summary['events_rejected']})")
    print(f"alerts opened:    {len(summary['alerts'])}")
    for a in summary["alerts"]:
        verdict = "matches the injected defect" if a["matches_injected"] else "NOT injected"
        print(
            f"  - {a['model']} / {a['batch']} / {a['failure_mode']} by {a['detector']} at {a['opened_at']}, "
            f"{a['delay_s']} s after onset: {verdict}"
        )
    print("ClickHouse rows:  " + ", ".join(f"{t}={n}" for t, n in summary["clickhouse_rows"].items()))


def cmd_worker(args: argparse.Namespace) -> int:
    from recallwatch.stack import infrastructure, run_worker

    settings = _settings(args)
    if not settings.kafka.url:
        print(
            "recallwatch worker needs RW_KAFKA__URL (use `recallwatch run` for the embedded stack)",
            file=sys.stderr,
        )
        return 2
    with infrastructure(settings) as stack:
        run_worker(stack)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from recallwatch.stack import build_api
    from sinks.clickhouse import open_store

    settings = _settings(args)
    store = open_store(settings.clickhouse.url or None, settings.clickhouse.data_dir)
    try:
        store.migrate()
        uvicorn.run(
            build_api(settings, store, settings.kafka.url or None),
            host=settings.api.host,
            port=settings.api.port,
        )
    finally:
        store.close()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    import threading

    from streams.broker import bootstrap_of
    from streams.producer import SimulationRun, ensure_topics, make_producer, produce_simulation
    from streams.simulator import SimulationConfig, Simulator

    settings = _settings(args)
    if not settings.kafka.url:
        print("recallwatch simulate needs RW_KAFKA__URL", file=sys.stderr)
        return 2
    bootstrap = bootstrap_of(settings.kafka.url)
    ensure_topics(bootstrap, [settings.kafka.events_topic], settings.kafka.partitions)
    s = settings.simulator
    config = SimulationConfig(
        seed=s.seed,
        days=args.days,
        defect=None if args.no_defect else SimulationConfig.default_defect(s.defect_onset_day),
    ).ending_by(time.time())
    producer = make_producer(bootstrap)
    run = SimulationRun()
    with contextlib.suppress(KeyboardInterrupt):
        produce_simulation(
            producer,
            settings.kafka.events_topic,
            Simulator(config),
            args.speed or s.speed,
            threading.Event(),
            run,
        )
    producer.close()
    print(json.dumps({"events_produced": run.produced, "days": run.day + 1}))
    return 0


def cmd_registry_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from recallwatch.registry_import import import_files
    from sinks.clickhouse import open_store
    from sinks.registry_store import RegistryStore

    settings = _settings(args)
    if args.publish and not settings.kafka.url:
        print("--publish needs RW_KAFKA__URL (the running worker's broker)", file=sys.stderr)
        return 2
    missing = [p for p in args.files if not Path(p).is_file()]
    if missing:
        print(f"no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    store = open_store(settings.clickhouse.url or None, settings.clickhouse.data_dir)
    try:
        store.migrate()
        registry = RegistryStore(store)
        report = import_files(
            [Path(p) for p in args.files], registry, now=int(time.time()), progress=not args.quiet
        )
        population = registry.field_population() if args.publish else []
    finally:
        store.close()
    for f in report.files:
        if f.error:
            print(f"{f.path}: not imported: {f.error}", file=sys.stderr)
        for line, reason in f.rejects:
            print(f"{f.path}:{line}: rejected: {reason}", file=sys.stderr)
        if f.rejected > len(f.rejects):
            print(f"{f.path}: ... and {f.rejected - len(f.rejects)} more rejected rows", file=sys.stderr)
    summary = report.as_dict()
    if args.publish and not any(f.error for f in report.files):
        summary["populations_sent"] = publish_populations(settings, population)
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"loaded {report.loaded} units, rejected {report.rejected} rows"
            f" in {summary['seconds']} s ({summary['units_per_s']} units/s);"
            " rejected rows are kept in the rejects table (topic 'import')"
        )
    return 1 if any(f.error for f in report.files) else 0


def publish_populations(settings: Settings, population: list[dict[str, Any]]) -> int:
    """Send each (model, batch)'s units in the field to the worker as its rate denominator.

    Counts are absolute (``population`` events set, never add), so publishing twice is harmless.
    """
    from streams.broker import bootstrap_of
    from streams.producer import make_producer, send_event
    from streams.records import population_event

    producer = make_producer(bootstrap_of(settings.kafka.url))
    now = time.time()  # read at the edge: no count is dated after it
    try:
        for row in population:
            event = population_event(row["model"], row["batch"], int(row["at"]), int(row["units"]), now)
            send_event(producer, settings.kafka.events_topic, event)
        producer.flush()
    finally:
        producer.close()
    return len(population)


def reads_history(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A history file the command cannot read is the user's to fix: its FILE:LINE and why, exit 2."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from recallwatch.backtest import HistoryFileError

        try:
            return command(args)
        except (HistoryFileError, FileNotFoundError) as exc:
            print(f"recallwatch {args.command}: {exc}", file=sys.stderr)
            return 2

    return run


@reads_history
def cmd_backtest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from recallwatch.backtest import (
        DEFAULT_CONFIG,
        BacktestConfig,
        read_events,
        read_truth,
        run,
        score_alarms,
        write_alarms,
    )

    config = BacktestConfig.load(Path(args.config) if args.config else DEFAULT_CONFIG)
    events = read_events(Path(args.events))
    truth = read_truth(Path(args.truth))
    started = time.perf_counter()
    with tqdm(total=len(events), unit=" events", disable=args.json or len(events) < 100_000,
              file=sys.stderr) as bar:  # fmt: skip
        done = 0

        def progress(i: int) -> None:
            nonlocal done
            bar.update(i - done)
            done = i

        alarms = run(events, truth, config, progress)
        bar.update(len(events) - done)
    elapsed = time.perf_counter() - started
    write_alarms(alarms, Path(args.alarms_out))
    result = {
        **score_alarms(events, truth, alarms).as_dict(),
        "alarms": len(alarms),
        "events": len(events),
        "events_per_s": round(len(events) / elapsed) if elapsed > 0 else None,
        "config": dict(config.params) if config.engine == "peers" else {"engine": "cells"},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"caught early {result['caught_early']}/{result['positives']} ({result['caught_early_rate']}),"
            f" median lead {result['median_lead_days']} days, precision {result['precision']}"
            f" over {result['alarm_episodes']} alarm episodes; {len(alarms)} alarms -> {args.alarms_out}"
        )
    return 0


@reads_history
def cmd_tune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from recallwatch import tune
    from recallwatch.backtest import DEFAULT_CONFIG, BacktestConfig, read_events, read_truth

    base = BacktestConfig.load(Path(args.config) if args.config else DEFAULT_CONFIG)
    events = read_events(Path(args.events))
    truth = read_truth(Path(args.truth))
    grid_points = list(tune.grid_points(tune.GRID))
    points = [
        tune.evaluate(events, truth, base, params)
        for params in tqdm(grid_points, unit=" backtests", file=sys.stderr, disable=args.quiet)
    ]
    naive = tune.naive_rule(events, truth, base)
    chosen = tune.choose(points, tune.GRID, args.min_caught, args.min_lead)
    print(f"{'precision':>9} {'caught':>7} {'lead':>5} {'episodes':>8}  parameters")
    print("Pareto front:")
    for p in tune.pareto(points):
        print(p.row())
    print("naive trailing-count rule (min_count = T):")
    for p in naive:
        print(p.row())
    if args.plot:
        tune.plot(points, naive, chosen, Path(args.plot))
        print(f"plot -> {args.plot}")
    if chosen is None:
        print(
            f"no setting catches {args.min_caught} with a median lead of {args.min_lead} days",
            file=sys.stderr,
        )
        return 1
    print("chosen (best precision averaged with its grid neighbours):")
    print(chosen.row())
    window = int(chosen.params.get("window_days", base.window_days))
    params = {k: v for k, v in chosen.params.items() if k != "window_days"}
    chosen_config = dataclasses.replace(base.with_params(**params), window_days=window)
    Path(args.out).write_text(chosen_config.to_toml())
    print(f"config -> {args.out}")
    return 0


@reads_history
def cmd_train_ranker(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime
    from pathlib import Path

    from recallwatch.backtest import DEFAULT_CONFIG, BacktestConfig, read_events, read_truth
    from recallwatch.train_ranker import file_digest, train

    config_path = Path(args.config) if args.config else DEFAULT_CONFIG
    config = BacktestConfig.load(config_path)
    events, truth = read_events(Path(args.events)), read_truth(Path(args.truth))
    validate_from = None
    if args.validate_from:
        validate_from = int(datetime.fromisoformat(args.validate_from).replace(tzinfo=UTC).timestamp())
    meta = {
        "data_sha256": file_digest(Path(args.events), Path(args.truth)),
        "data": [Path(args.events).name, Path(args.truth).name],
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    ranker, report = train(
        events, truth, config, version=args.version, min_count=args.min_count,
        validate_from=validate_from, c=args.c, meta=meta,
    )  # fmt: skip
    ranker.save(Path(args.out))
    if args.json:
        print(json.dumps({"version": args.version, "out": args.out, **report}))
        return 0
    print(
        f"ranker {args.version}: {report['candidates']} candidates,"
        f" {report['positives']} followed by a recall within a year"
    )
    for name, value in report.get("validation", {}).items():
        print(f"  validation, {name}: {value}")
    print(f"  weights: {report['coefficients']}")
    print(f"ranker -> {args.out}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from recallwatch.calibrate import calibrate, config_text, in_control_events

    settings = _settings(args)
    base = settings.detection.to_core()
    events = in_control_events(args.days, args.seed)
    result, combined = calibrate(events, base, args.budget, steps=args.steps)
    for c in result:
        alone = f"{c.per_1000_cell_months:.3f}"
        print(f"{c.name}: {c.params} -> {alone} false alarms per 1,000 cell-months alone")
    print(
        f"together: {combined.per_1000_cell_months:.3f} per 1,000 cell-months"
        f" ({combined.episodes} episodes over {combined.cell_months:.0f} cell-months; budget {args.budget})"
    )
    Path(args.out).write_text(config_text(result, combined, args.budget, args.days, args.seed))
    print(f"config -> {args.out}")
    return 0 if combined.per_1000_cell_months <= args.budget else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recallwatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="embedded stack: broker, ClickHouse, worker and API")
    run.add_argument("--simulate", action="store_true", help="also run the simulator")
    run.add_argument("--no-defect", action="store_true", help="simulate without the injected defect")
    run.add_argument("--days", type=int, default=3650, help="simulated days (with --simulate)")
    run.add_argument(
        "--defect",
        choices=("batch", "lot"),
        default="batch",
        help="injected defect: one batch or a supplier lot",
    )
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="embedded stack plus simulator for a while, then a summary")
    demo.add_argument("--seconds", type=float, default=60.0)
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    demo.add_argument("--no-defect", action="store_true")
    demo.add_argument(
        "--defect", choices=("batch", "lot"), default="batch", help="one batch or a supplier lot"
    )
    demo.set_defaults(func=cmd_demo)
    sub.add_parser("worker", help="Faust worker against configured Kafka and ClickHouse").set_defaults(
        func=cmd_worker
    )
    sub.add_parser("api", help="HTTP API against configured ClickHouse").set_defaults(func=cmd_api)
    sim = sub.add_parser("simulate", help="produce simulated events to configured Kafka")
    sim.add_argument("--days", type=int, default=120)
    sim.add_argument("--speed", type=float, default=None, help="simulated days per second")
    sim.add_argument("--no-defect", action="store_true")
    sim.add_argument("--defect", choices=("batch", "lot"), default="batch")
    sim.set_defaults(func=cmd_simulate)
    registry = sub.add_parser("registry", help="traceability registry").add_subparsers(
        dest="registry_command", required=True
    )
    imp = registry.add_parser("import", help="load CSV/Parquet exports of units (ERP/MES/CRM)")
    imp.add_argument("files", nargs="+", metavar="FILE")
    imp.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.add_argument(
        "--publish",
        action="store_true",
        help="then send every (model, batch)'s units in the field to the worker (needs RW_KAFKA__URL)",
    )
    imp.set_defaults(func=cmd_registry_import)
    bt = sub.add_parser("backtest", help="replay labelled history through the detectors and score them")
    bt.add_argument("--events", required=True, help="events CSV (../shared/data/nhtsa-dev format)")
    bt.add_argument("--truth", required=True, help="recalls CSV: campaign,model,batch,component,recall_date")
    bt.add_argument("--alarms-out", required=True, help="where to write model,batch,component,alarm_at")
    bt.add_argument("--config", help="backtest TOML (default config/backtest.toml)")
    bt.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    bt.set_defaults(func=cmd_backtest)
    tn = sub.add_parser(
        "tune", help="sweep detector parameters; print the trade-off; write the chosen config"
    )
    tn.add_argument("--events", required=True)
    tn.add_argument("--truth", required=True)
    tn.add_argument("--config", help="base backtest TOML (default config/backtest.toml)")
    tn.add_argument("--out", default="backtest.tuned.toml", help="where to write the chosen config")
    tn.add_argument("--plot", help="write the trade-off plot (PNG) here")
    tn.add_argument("--min-caught", type=float, default=0.5, help="share of foreseeable recalls to catch")
    tn.add_argument("--min-lead", type=float, default=90.0, help="median lead in days")
    tn.add_argument("--quiet", action="store_true", help="no progress bar")
    tn.set_defaults(func=cmd_tune)
    tr = sub.add_parser(
        "train-ranker", help="fit the alarm ranker on labelled history, validate it out of time, save it"
    )
    tr.add_argument("--events", required=True, help="events CSV (../shared/data/nhtsa-dev format)")
    tr.add_argument("--truth", required=True, help="recalls CSV: campaign,model,batch,component,recall_date")
    tr.add_argument("--out", required=True, help="ranker file to write (JSON), e.g. config/ranker/v2.json")
    tr.add_argument("--version", required=True, help="a name for this ranker, recorded on every ranked alert")
    tr.add_argument("--config", help="backtest TOML: windows and detector (default config/backtest.toml)")
    tr.add_argument("--min-count", type=int, default=3, help="a key's trailing count that makes a candidate")
    tr.add_argument("--validate-from", help="date: fit before it, report ranking quality after it")
    tr.add_argument("--c", type=float, default=1.0, help="inverse regularisation of the logistic regression")
    tr.add_argument("--json", action="store_true", help="print the report as one JSON object")
    tr.set_defaults(func=cmd_train_ranker)
    cal = sub.add_parser("calibrate", help="detector thresholds from a false-alarm budget, into a config")
    cal.add_argument("--budget", type=float, default=1.0, help="false alarm episodes per 1,000 cell-months")
    cal.add_argument("--days", type=int, default=720, help="days of in-control simulated history")
    cal.add_argument("--seed", type=int, default=11)
    cal.add_argument("--steps", type=int, default=12, help="bisection steps per detector")
    cal.add_argument("--out", default="calibrated.toml")
    cal.set_defaults(func=cmd_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
