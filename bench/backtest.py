"""Replay speed of ``recallwatch backtest``'s engine. Prints one JSON line.

The nhtsa-dev events are replicated ``--copies`` times under renamed models (so the key space grows
as well as the event count) and replayed through the shipped config, ``--repeat`` times; the
figure is the median rate. Reading and sorting the CSV is excluded: it is the replay that a data
scientist's tuning loop repeats.

    python bench/backtest.py [--copies 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from recallwatch.backtest import DEFAULT_CONFIG, BacktestConfig, read_events, read_truth, run

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "nhtsa-dev")
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    base = read_events(args.data / "events.csv")
    truth = read_truth(args.data / "truth.csv")
    events = sorted(
        (dataclasses.replace(e, model=f"{e.model} #{c}") for c in range(args.copies) for e in base),
        key=lambda e: (e.t, e.event_id, e.model),
    )
    truth_all = {(f"{m} #{c}", b, comp): d for (m, b, comp), d in truth.items() for c in range(args.copies)}
    config = BacktestConfig.load(DEFAULT_CONFIG)
    rates, alarms = [], 0
    for _ in range(args.repeat):
        started = time.perf_counter()
        alarms = len(run(events, truth_all, config))
        rates.append(len(events) / (time.perf_counter() - started))
    print(
        json.dumps(
            {
                "events": len(events),
                "events_per_s": round(statistics.median(rates)),
                "events_per_s_runs": [round(r) for r in rates],
                "alarms": alarms,
                "keys": len({(e.model, e.batch, e.component) for e in events}),
            }
        )
    )


if __name__ == "__main__":
    main()
