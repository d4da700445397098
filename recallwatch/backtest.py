"""Replay labelled history through the detectors and score the alarms against known recalls.

``recallwatch backtest --events EVENTS.csv --truth TRUTH.csv --alarms-out ALARMS.csv`` reads the
format of ../shared/data/nhtsa-dev (``batch`` and ``component`` are the cell keys), replays the
events in event-time order and writes one row per alarm (``model,batch,component,alarm_at``).
Scores follow :mod:`core.scoring`. Two engines, chosen by the config:

- ``peers`` (default): every incident updates :class:`core.peers.PeerWindows`, and the key's
  detector (from ``models/``, by name) scores the observation against its peers. Recalls feed the
  detector as they become public (``related_recalls``: strictly earlier recall dates only).
- ``cells``: the worker's own :class:`core.cells.CellState` buckets, detectors and alert episodes.
  Complaint data carries no fleet sizes, so each (model, batch) gets a constant population from its
  first event: exposure is then time in the field and a cell is compared with its own past.
"""

from __future__ import annotations

import csv
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.alerts import ALL_MODES
from core.cells import CellState
from core.config import DetectionConfig
from core.peers import DAY, PeerWindows, RecallMemory
from core.scoring import Key, Score, by_key, score
from models import build_detector
from models.base import Detector

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "backtest.toml"

POPULATION = 1_000  # units per cell when the data has none; only ratios matter to the detectors


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    t: int
    model: str
    batch: str
    component: str
    event_id: str


@dataclass(frozen=True, slots=True)
class Alarm:
    model: str
    batch: str
    component: str
    alarm_at: int

    @property
    def key(self) -> Key:
        return (self.model, self.batch, self.component)


def epoch(text: str) -> int:
    """ISO date or datetime as epoch seconds; a naive value is read as UTC (as the scorer does)."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def read_events(path: Path) -> list[HistoryEvent]:
    with path.open(newline="") as f:
        rows = [
            HistoryEvent(epoch(r["occurred_at"]), r["model"].strip(), r["batch"].strip(),
                         r["component"].strip(), r["event_id"])
            for r in csv.DictReader(f)
        ]  # fmt: skip
    rows.sort(key=lambda e: (e.t, e.event_id))  # event time, ties in a fixed order: deterministic
    return rows


def read_truth(path: Path) -> dict[Key, list[int]]:
    with path.open(newline="") as f:
        return by_key(
            ((r["model"].strip(), r["batch"].strip(), r["component"].strip()), epoch(r["recall_date"]))
            for r in csv.DictReader(f)
        )


@dataclass(frozen=True)
class BacktestConfig:
    engine: str = "peers"
    window_days: int = 90
    history_days: int = 3650
    detector: str = "disproportionality"
    params: tuple[tuple[str, Any], ...] = ()
    cells: DetectionConfig = field(default_factory=DetectionConfig)

    @classmethod
    def load(cls, path: Path) -> BacktestConfig:
        data = tomllib.loads(path.read_text()).get("backtest", {})
        unknown = set(data) - {"engine", "window_days", "history_days", "detector", "params", "cells"}
        if unknown:
            raise ValueError(f"{path}: unknown [backtest] keys {sorted(unknown)}")
        cells = data.get("cells", {})
        detection = DetectionConfig(
            bucket_s=int(cells.get("bucket_days", 7)) * DAY,
            windows_s=(int(cells.get("window_days", 28)) * DAY,),
            cooldown_buckets=int(cells.get("cooldown_buckets", 13)),
            detectors=tuple((d["name"], dict(d.get("params", {}))) for d in cells.get("detectors", []))
            or DetectionConfig().detectors,
        )
        config = cls(
            engine=data.get("engine", "peers"),
            window_days=int(data.get("window_days", 90)),
            history_days=int(data.get("history_days", 3650)),
            detector=data.get("detector", "disproportionality"),
            params=tuple(sorted(data.get("params", {}).items())),
            cells=detection,
        )
        if config.engine not in ("peers", "cells"):
            raise ValueError(f"{path}: engine must be 'peers' or 'cells'")
        build_detector(config.detector, dict(config.params))  # fail now on a bad name or parameter
        return config

    def with_params(self, **params: Any) -> BacktestConfig:
        merged = {**dict(self.params), **params}
        return BacktestConfig(self.engine, self.window_days, self.history_days, self.detector,
                              tuple(sorted(merged.items())), self.cells)  # fmt: skip

    def to_toml(self) -> str:
        lines = [
            "# Backtest and detector settings (written by `recallwatch tune`; edit freely).",
            "# engine: peers = disproportionality against other cells; cells = the worker's CellState.",
            "[backtest]",
            f'engine = "{self.engine}"',
            f"window_days = {self.window_days}",
            f"history_days = {self.history_days}",
            f'detector = "{self.detector}"',
            "",
            "[backtest.params]",
        ]
        for name, value in self.params:
            if value is None:  # absent means the detector's default: that criterion is off
                continue
            text = str(value).lower() if isinstance(value, bool) else repr(value)
            lines.append(f"{name} = {text}")
        return "\n".join(lines) + "\n"


def run(
    events: list[HistoryEvent],
    truth: dict[Key, list[int]],
    config: BacktestConfig,
    progress: Callable[[int], None] | None = None,
) -> list[Alarm]:
    if config.engine == "cells":
        return replay(events, config.cells, progress)
    return replay_peers(events, truth, config, progress)


def replay_peers(
    events: list[HistoryEvent],
    truth: dict[Key, list[int]],
    config: BacktestConfig,
    progress: Callable[[int], None] | None = None,
) -> list[Alarm]:
    """Alarm at every incident whose key's detector scores >= 1 (the scorer folds episodes)."""
    windows = PeerWindows(config.window_days * DAY, config.history_days * DAY)
    memory = RecallMemory()
    recalls = sorted((t, key) for key, dates in truth.items() for t in set(dates))
    next_recall = 0
    params = dict(config.params)
    detectors: dict[Key, Detector] = {}
    alarms: list[Alarm] = []
    for i, e in enumerate(events):
        while next_recall < len(recalls) and recalls[next_recall][0] < e.t:
            _, (model, _batch, component) = recalls[next_recall]
            memory.add(model, component)
            next_recall += 1
        x = windows.observe(e.t, e.model, e.batch, e.component)
        x["related_recalls"] = float(memory.related(e.model, e.component))
        key = (e.model, e.batch, e.component)
        detector = detectors.get(key)
        if detector is None:
            detector = detectors[key] = build_detector(config.detector, params)
        if detector.score_one(x) >= 1.0:
            alarms.append(Alarm(e.model, e.batch, e.component, e.t))
        detector.learn_one(x)
        if progress is not None and i % 10_000 == 0:
            progress(i)
    return alarms


def replay(
    events: Iterable[HistoryEvent], cfg: DetectionConfig, progress: Callable[[int], None] | None = None
) -> list[Alarm]:
    """Alarms in the order the cells raise them; only failure-mode (component) alerts are keyed."""
    cells: dict[tuple[str, str], CellState] = {}
    alarms: list[Alarm] = []
    for i, e in enumerate(events):
        cell = cells.get((e.model, e.batch))
        if cell is None:
            cell = cells[(e.model, e.batch)] = CellState(e.model, e.batch)
            cell.apply_population(cfg, POPULATION, float(e.t))
        outcome = cell.apply_incident(cfg, e.component, float(e.t), e.event_id, float(e.t))
        alarms.extend(
            Alarm(a.model, a.batch, a.failure_mode, int(a.opened_at))
            for a in outcome.alerts
            if a.failure_mode != ALL_MODES
        )
        if progress is not None and i % 10_000 == 0:
            progress(i)
    return alarms


def write_alarms(alarms: Iterable[Alarm], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "batch", "component", "alarm_at"])
        for a in alarms:
            w.writerow([a.model, a.batch, a.component, datetime.fromtimestamp(a.alarm_at, UTC).isoformat()])


def score_alarms(events: list[HistoryEvent], truth: dict[Key, list[int]], alarms: list[Alarm]) -> Score:
    return score(
        by_key(((e.model, e.batch, e.component), e.t) for e in events),
        truth,
        by_key((a.key, a.alarm_at) for a in alarms),
    )
