"""Exposure-aware Poisson CUSUM: alarms when a cell's incident count outgrows its exposure.

The statistic accumulates the log-likelihood ratio of "rate is ``shift`` times the baseline"
against "rate is the baseline" bucket by bucket, floored at zero (Page's CUSUM). Expected counts
scale with the units in the field, so a batch that ships more units is not flagged for it.
"""

from __future__ import annotations

import math
from typing import Any

from models.base import Observation, read_observation
from models.baseline import BaselineChart


class PoissonCusum(BaselineChart):
    """Upper Poisson CUSUM against a self-learned baseline rate.

    >>> det = PoissonCusum(shift=3.0, threshold=5.0, warmup_steps=5)
    >>> for _ in range(20):
    ...     det.learn_one({"count": 1, "exposure": 1000.0})
    >>> det.score_one({"count": 1, "exposure": 1000.0}) < 1.0
    True
    >>> det.score_one({"count": 9, "exposure": 1000.0}) >= 1.0
    True
    """

    name = "poisson_cusum"

    def __init__(
        self,
        shift: float = 3.0,
        threshold: float = 12.0,
        warmup_steps: int = 14,
        baseline_z: float = 1.0,
        prior_rate: float = 1e-3,
        prior_exposure: float = 1_000.0,
        forget: float = 0.99,
        learn_below: float = 0.5,
    ) -> None:
        if shift <= 1.0:
            raise ValueError("shift must be > 1: it is the rate ratio the chart is tuned to catch")
        if threshold <= 0:
            raise ValueError("threshold must be > 0")
        self.shift = shift
        self.threshold = threshold
        self._init_baseline(warmup_steps, baseline_z, prior_rate, prior_exposure, forget, learn_below)
        self.statistic = 0.0

    @property
    def alarm_line(self) -> float:
        return self.threshold

    def _next_statistic(self, x: Observation) -> float:
        count, exposure = read_observation(x)
        mu = self.baseline.upper_rate(self.baseline_z) * exposure
        llr = count * math.log(self.shift) - (self.shift - 1.0) * mu
        return max(0.0, self.statistic + llr)

    def params(self) -> dict[str, Any]:
        return {"shift": self.shift, "threshold": self.threshold, **self.baseline_params()}
