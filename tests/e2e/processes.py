"""Real processes for end-to-end tests: workers and the demo, run as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from streams.records import Event

ROOT = Path(__file__).resolve().parents[2]


def cli_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RW_")}
    env.update({"RW_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
    env.update(settings)
    return env


def start_cli(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "recallwatch.cli", *args],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def with_closing_shipments(events: list[Event]) -> list[Event]:
    """``events`` and, two days after the last, one shipment per cell: it closes every open
    bucket, so every incident reaches the rates."""
    last = max(e.occurred_at for e in events)
    cells = sorted({(e.model, e.batch) for e in events})
    closing = [
        Event(
            event_id=f"close-{m}-{b}",
            kind="shipment",
            occurred_at=last + timedelta(days=2),
            model=m,
            batch=b,
            units=1,
        )
        for m, b in cells
    ]
    return events + closing


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, diagnose=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}. {diagnose()}")
