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
import dataclasses
import hashlib
import json
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.alerts import ALL_MODES
from core.cells import CellState
from core.config import DetectionConfig
from core.peers import CRASH, DAY, FIRE, INJURY, PeerWindows, RecallMemory
from core.scoring import Key, Score, by_key, score
from models import build_detector
from models.alarm_ranker import AlarmRanker
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
    severity: int = 0  # core.peers severity bits


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


def severity_of(row: dict[str, str]) -> int:
    """Severity bits from the optional ``crash``, ``fire``, ``injuries`` and ``deaths`` columns."""

    def positive(name: str) -> bool:
        try:
            return float(row.get(name) or 0) > 0
        except ValueError:  # a malformed flag is no evidence of severity
            return False

    return (
        (CRASH if positive("crash") else 0)
        | (FIRE if positive("fire") else 0)
        | (INJURY if positive("injuries") or positive("deaths") else 0)
    )


class HistoryFileError(ValueError):
    """A history file the backtest cannot read: the message names the file, the line and why."""


EVENT_COLUMNS = ("event_id", "occurred_at", "model", "batch", "component")
TRUTH_COLUMNS = ("model", "batch", "component", "recall_date")


def _csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Each row with its line (the header is line 1), after checking the header has ``required``."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or ())]
        if missing:
            raise HistoryFileError(f"{path}: no column {', '.join(missing)} (needs {', '.join(required)})")
        for row in reader:
            yield reader.line_num, row


def read_events(path: Path) -> list[HistoryEvent]:
    rows = []
    for line, r in _csv_rows(path, EVENT_COLUMNS):
        try:
            component = r["component"].strip()
            if component == ALL_MODES:  # the name of the all-components sub-cell: counted twice there
                raise ValueError(f"component {ALL_MODES!r} is reserved for all components together")
            rows.append(
                HistoryEvent(epoch(r["occurred_at"]), r["model"].strip(), r["batch"].strip(), component,
                             r["event_id"], severity_of(r))
            )  # fmt: skip
        except (ValueError, AttributeError) as exc:  # AttributeError: a short row's missing cells
            raise HistoryFileError(f"{path}:{line}: {exc}") from None
    rows.sort(key=lambda e: (e.t, e.event_id))  # event time, ties in a fixed order: deterministic
    return rows


def read_truth(path: Path) -> dict[Key, list[int]]:
    recalls = []
    for line, r in _csv_rows(path, TRUTH_COLUMNS):
        try:
            key = (r["model"].strip(), r["batch"].strip(), r["component"].strip())
            recalls.append((key, epoch(r["recall_date"])))
        except (ValueError, AttributeError) as exc:
            raise HistoryFileError(f"{path}:{line}: {exc}") from None
    return by_key(recalls)


@dataclass(frozen=True)
class BacktestConfig:
    engine: str = "peers"
    window_days: int = 90
    history_days: int = 3650
    detector: str = "disproportionality"
    params: tuple[tuple[str, Any], ...] = ()
    cells: DetectionConfig = field(default_factory=DetectionConfig)
    # Optional alarm ranker (models/alarm_ranker.py): alarms ranked below min_rank are dropped.
    ranker_file: str = ""
    min_rank: float = 0.0

    @classmethod
    def load(cls, path: Path) -> BacktestConfig:
        data = tomllib.loads(path.read_text()).get("backtest", {})
        known = {"engine", "window_days", "history_days", "detector", "params", "cells", "ranker"}
        unknown = set(data) - known
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
            ranker_file=_relative_to(path, str(data.get("ranker", {}).get("file", ""))),
            min_rank=float(data.get("ranker", {}).get("min_rank", 0.0)),
        )
        if config.engine not in ("peers", "cells"):
            raise ValueError(f"{path}: engine must be 'peers' or 'cells'")
        build_detector(config.detector, dict(config.params))  # fail now on a bad name or parameter
        config.load_ranker()  # and on a ranker file that cannot be read
        return config

    def with_params(self, **params: Any) -> BacktestConfig:
        return dataclasses.replace(self, params=tuple(sorted({**dict(self.params), **params}.items())))

    def digest(self) -> str:
        """A short hash of everything that changes the alarms: the config version of peer alerts."""
        return hashlib.sha256(self.to_toml().encode()).hexdigest()[:12]

    def load_ranker(self) -> AlarmRanker | None:
        return AlarmRanker.load(Path(self.ranker_file)) if self.ranker_file else None

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
        if self.ranker_file:
            lines += [
                "",
                "[backtest.ranker]",
                f"file = {json.dumps(self.ranker_file)}",
                f"min_rank = {self.min_rank}",
            ]
        return "\n".join(lines) + "\n"


def _relative_to(config_path: Path, file: str) -> str:
    """A file named in a config, relative to the config's own directory (absolute stays)."""
    return str(config_path.parent / file) if file and not Path(file).is_absolute() else file


def run(
    events: list[HistoryEvent],
    truth: dict[Key, list[int]],
    config: BacktestConfig,
    progress: Callable[[int], None] | None = None,
) -> list[Alarm]:
    if config.engine == "cells":
        return replay(events, config.cells, progress)
    return replay_peers(events, truth, config, progress)


def observations(
    events: list[HistoryEvent],
    truth: dict[Key, list[int]],
    config: BacktestConfig,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[HistoryEvent, dict[str, float], float]]:
    """Each incident with its key's observation and the key's detector score, in event time.

    The detector scores before it learns the observation, as the worker's do. Recalls feed the
    observation as they become public (``related_recalls``: strictly earlier recall dates only).
    """
    windows = PeerWindows(config.window_days * DAY, config.history_days * DAY)
    memory = RecallMemory()
    recalls = sorted((t, key) for key, dates in truth.items() for t in set(dates))
    next_recall = 0
    params = dict(config.params)
    detectors: dict[Key, Detector] = {}
    for i, e in enumerate(events):
        while next_recall < len(recalls) and recalls[next_recall][0] < e.t:
            _, (model, _batch, component) = recalls[next_recall]
            memory.add(model, component)
            next_recall += 1
        x = windows.observe(e.t, e.model, e.batch, e.component, e.severity)
        x["related_recalls"] = float(memory.related(e.model, e.component))
        key = (e.model, e.batch, e.component)
        detector = detectors.get(key)
        if detector is None:
            detector = detectors[key] = build_detector(config.detector, params)
        yield e, x, detector.score_one(x)
        detector.learn_one(x)
        if progress is not None and i % 10_000 == 0:
            progress(i)


def replay_peers(
    events: list[HistoryEvent],
    truth: dict[Key, list[int]],
    config: BacktestConfig,
    progress: Callable[[int], None] | None = None,
) -> list[Alarm]:
    """Alarm at every incident whose key's detector scores >= 1 (the scorer folds episodes) and,
    with a ranker configured, whose rank reaches ``min_rank``."""
    ranker = config.load_ranker()
    alarms: list[Alarm] = []
    for e, x, detector_score in observations(events, truth, config, progress):
        if detector_score >= 1.0 and (ranker is None or ranker.score_one(x) >= config.min_rank):
            alarms.append(Alarm(e.model, e.batch, e.component, e.t))
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
