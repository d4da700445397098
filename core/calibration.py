"""Thresholds from a false-alarm budget, not by hand.

A *family* of cells (every (model, batch) and (model, batch, failure mode) the worker watches) is
replayed on in-control history, where every alarm is false by construction. The budget is
expected false alarm episodes per 1,000 cell-months; each detector's alarm threshold is found by
bisection as the most sensitive setting whose false-alarm rate stays within its share of the
budget (the budget is split evenly, so the detectors together stay within it: an episode counts
once whichever detector opens it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

MONTH_S = 30 * 86_400

# Which parameter sets each detector's sensitivity, and which way is quieter.
CALIBRATED: dict[str, tuple[str, bool]] = {
    "poisson_cusum": ("threshold", True),  # a higher threshold alarms less
    "river_page_hinkley": ("threshold", True),
    "ewma_rate": ("threshold", True),
    "river_multivariate": ("threshold", True),
    "disproportionality": ("max_p", False),  # a smaller tail probability alarms less
}


@dataclass(frozen=True)
class FalseAlarms:
    episodes: int
    cell_months: float

    @property
    def per_1000_cell_months(self) -> float:
        return 1000.0 * self.episodes / self.cell_months if self.cell_months > 0 else math.inf


def bisect_threshold(
    rate_at: Callable[[float], float],
    budget: float,
    low: float,
    high: float,
    higher_is_quieter: bool,
    steps: int = 12,
) -> tuple[float, float]:
    """The most sensitive value in [low, high] with ``rate_at(value) <= budget``, searched in log space.

    Returns (value, its rate). If even the quietest end exceeds the budget, that end is returned
    with its rate, so the caller can report it honestly instead of pretending.

    >>> value, rate = bisect_threshold(lambda t: 100 / t, budget=5.0, low=1.0, high=1000.0,
    ...                                higher_is_quieter=True)
    >>> 20.0 <= value < 21.0 and rate <= 5.0
    True
    """
    if low <= 0 or high <= low:
        raise ValueError("need 0 < low < high")
    quiet, loud = (high, low) if higher_is_quieter else (low, high)
    quiet_rate = rate_at(quiet)
    if quiet_rate > budget:
        return quiet, quiet_rate
    best = (quiet, quiet_rate)
    for _ in range(steps):
        middle = math.sqrt(quiet * loud)
        rate = rate_at(middle)
        if rate <= budget:
            quiet, best = middle, (middle, rate)  # within budget: try more sensitive
        else:
            loud = middle
    return best
