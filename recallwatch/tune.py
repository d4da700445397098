"""``recallwatch tune``: sweep detector parameters on labelled history and pick a robust setting.

Every grid point is a full backtest. The trade-off (precision against caught-early rate and lead)
is printed as a table of the Pareto front and drawn next to the naive trailing-count rule. The
chosen point is on the Pareto front and maximises precision *averaged with its grid neighbours*,
among points that catch at least ``--min-caught`` of the foreseeable recalls with a median lead of
``--min-lead`` days: a setting whose neighbours are poor is a fit to this file's noise, not to the
signal.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.scoring import Key
from recallwatch.backtest import BacktestConfig, HistoryEvent, run, score_alarms

GRID: dict[str, tuple[Any, ...]] = {
    "window_days": (60, 90, 120, 180),  # the trailing window itself, not a detector parameter
    "min_count": (3, 4, 5, 6),
    "min_ratio": (0.0, 1.5, 2.0, 3.0),  # 0 switches a criterion off
    "min_model_ratio": (0.0, 2.0, 3.0),
    "min_growth": (None, 0.5),
    "need_related_recall": (False, True),
}
NAIVE_COUNTS = (2, 3, 4, 5, 6, 8, 10, 12)


@dataclass(frozen=True)
class Point:
    params: dict[str, Any]
    precision: float
    caught: float
    lead: float | None
    episodes: int

    def row(self) -> str:
        p = ", ".join(f"{k}={v}" for k, v in self.params.items())
        lead = "-" if self.lead is None else f"{self.lead:.0f}"
        return f"{self.precision:9.3f} {self.caught:7.3f} {lead:>5} {self.episodes:8d}  {p}"


def grid_points(grid: dict[str, tuple[Any, ...]]) -> Iterator[dict[str, Any]]:
    names = list(grid)
    for values in itertools.product(*(grid[n] for n in names)):
        yield dict(zip(names, values, strict=True))


def evaluate(
    events: list[HistoryEvent], truth: dict[Key, list[int]], config: BacktestConfig, params: dict[str, Any]
) -> Point:
    detector_params = {k: v for k, v in params.items() if k != "window_days"}
    if "window_days" in params:
        config = dataclasses.replace(config, window_days=int(params["window_days"]))
    s = score_alarms(events, truth, run(events, truth, config.with_params(**detector_params)))
    return Point(params, s.precision or 0.0, s.caught_early_rate or 0.0, s.median_lead_days, s.alarm_episodes)


def naive_rule(events: list[HistoryEvent], truth: dict[Key, list[int]], base: BacktestConfig) -> list[Point]:
    """Alarm when a key's trailing 90-day count reaches T: every other criterion switched off."""
    base = dataclasses.replace(base, window_days=90)
    off = {"min_ratio": 0.0, "min_model_ratio": 0.0, "min_growth": None, "need_related_recall": False,
           "max_p": 1.0}  # fmt: skip
    return [evaluate(events, truth, base, {**off, "min_count": t}) for t in NAIVE_COUNTS]


def pareto(points: list[Point]) -> list[Point]:
    front = [
        p for p in points
        if not any(q.precision >= p.precision and q.caught >= p.caught and q != p
                   and (q.precision > p.precision or q.caught > p.caught) for q in points)
    ]  # fmt: skip
    return sorted(front, key=lambda p: p.caught)


def choose(
    points: list[Point], grid: dict[str, tuple[Any, ...]], min_caught: float, min_lead: float
) -> Point | None:
    index = {tuple(p.params[n] for n in grid): p for p in points}
    names = list(grid)

    def smoothed(p: Point) -> float:
        here = [grid[n].index(p.params[n]) for n in names]
        near = [p.precision]
        for axis, step in itertools.product(range(len(names)), (-1, 1)):
            j = here[axis] + step
            if 0 <= j < len(grid[names[axis]]):
                key = tuple(grid[n][here[a] if a != axis else j] for a, n in enumerate(names))
                near.append(index[key].precision)
        return statistics.fmean(near)

    # Only the Pareto front: a point another beats on both precision and recall is never the answer.
    front = pareto(points)
    eligible = [p for p in front if p.caught >= min_caught and p.lead is not None and p.lead >= min_lead]
    return max(eligible, key=lambda p: (smoothed(p), p.precision, p.caught), default=None)


def plot(points: list[Point], naive: list[Point], chosen: Point | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(
        [p.caught for p in points], [p.precision for p in points], s=10, alpha=0.4, label="grid points"
    )
    front = pareto(points)
    ax.plot([p.caught for p in front], [p.precision for p in front], "-o", ms=4, label="Pareto front")
    ax.plot(
        [p.caught for p in naive], [p.precision for p in naive], "--s", ms=4, label="naive trailing count"
    )
    if chosen is not None:
        ax.scatter(
            [chosen.caught], [chosen.precision], s=120, marker="*", color="red", label="chosen", zorder=5
        )
    ax.set_xlabel("caught early (share of foreseeable recalls)")
    ax.set_ylabel("alarm precision")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
