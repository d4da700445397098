"""``recallwatch calibrate``: detector thresholds for a false-alarm budget, written to a config file.

In-control history comes from the simulator without an injected defect (a manufacturer whose
rates only drift with age and seasonality), replayed through the worker's own cells. The result is
a TOML file in the settings format: ``RW_CONFIG_FILE=calibrated.toml recallwatch run`` uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.calibration import CALIBRATED, MONTH_S, FalseAlarms, bisect_threshold
from core.cells import CellState
from core.config import DetectionConfig
from streams.processing import apply_event
from streams.records import Event
from streams.simulator import SimulationConfig, Simulator

SEARCH_RANGE = {"threshold": (0.5, 500.0), "max_p": (1e-12, 0.5)}


@dataclass(frozen=True)
class Calibrated:
    name: str
    params: dict[str, Any]
    per_1000_cell_months: float


def in_control_events(days: int, seed: int) -> list[Event]:
    config = SimulationConfig(seed=seed, days=days, defect=None)
    return [e for _, day in Simulator(config).run() for e in day]


def false_alarms(events: Sequence[Event], cfg: DetectionConfig) -> FalseAlarms:
    """Alert episodes on in-control events (all false), and the cell-months watched."""
    cells: dict[str, CellState] = {}
    first_seen: dict[str, float] = {}
    episodes = 0
    for e in events:
        state = cells.get(e.cell_key)
        if state is None:
            state = cells[e.cell_key] = CellState(e.model, e.batch)
            first_seen[e.cell_key] = e.occurred_ts
        episodes += len(apply_event(state, e, cfg, e.occurred_ts).alerts)
    end = max((e.occurred_ts for e in events), default=0.0)
    # Each watched series (the cell's aggregate and each failure mode) is one cell of the family.
    months = sum(len(cells[k].subcells) * (end - t) / MONTH_S for k, t in first_seen.items())
    return FalseAlarms(episodes, months)


def calibrate(
    events: Sequence[Event], base: DetectionConfig, budget: float, steps: int = 12
) -> tuple[list[Calibrated], FalseAlarms]:
    """Each detector alone gets ``budget / n``; returns them and the family's combined rate."""
    share = budget / len(base.detectors)
    out = []
    for name, params in base.detectors:
        if name not in CALIBRATED:
            raise ValueError(f"no calibration rule for detector {name!r}")
        param, higher_is_quieter = CALIBRATED[name]
        low, high = SEARCH_RANGE[param]

        def rate_at(
            value: float, name: str = name, params: dict[str, Any] = params, param: str = param
        ) -> float:
            single = dataclasses.replace(base, detectors=((name, {**params, param: value}),))
            return false_alarms(events, single).per_1000_cell_months

        value, rate = bisect_threshold(rate_at, share, low, high, higher_is_quieter, steps)
        out.append(Calibrated(name, {**params, param: round(value, 6)}, rate))
    combined = dataclasses.replace(base, detectors=tuple((c.name, c.params) for c in out))
    return out, false_alarms(events, combined)


def config_text(result: list[Calibrated], combined: FalseAlarms, budget: float, days: int, seed: int) -> str:
    lines = [
        "# Detector thresholds calibrated by `recallwatch calibrate` on in-control simulated history:",
        f"# budget {budget} false alarm episodes per 1,000 cell-months, {days} days, seed {seed},",
        f"# {combined.cell_months:.0f} cell-months; combined rate {combined.per_1000_cell_months:.3f}"
        f" ({combined.episodes} episodes); written {datetime.now(UTC).date().isoformat()}.",
        "# Use it with RW_CONFIG_FILE=<this file>.",
        "",
    ]
    for c in result:
        params = ", ".join(f"{k} = {_toml(v)}" for k, v in c.params.items() if v is not None)
        lines += [
            "[[detection.detectors]]",
            f'name = "{c.name}"',
            f"# alone: {c.per_1000_cell_months:.3f} false alarms per 1,000 cell-months",
            f"params = {{ {params} }}",
            "",
        ]
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
