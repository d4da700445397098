"""Exposure-aware Poisson CUSUM: alarms when a cell's incident count outgrows its exposure.

The statistic accumulates the log-likelihood ratio of "rate is ``shift`` times the baseline"
against "rate is the baseline" bucket by bucket, floored at zero (Page's CUSUM). Expected counts
scale with the units in the field, so a batch that ships more units is not flagged for it.
"""

from __future__ import annotations

import math
from typing import Any

from models.base import Observation, read_observation
from models.baseline import ExposureBaseline


class PoissonCusum:
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
        self.warmup_steps = warmup_steps
        self.baseline_z = baseline_z
        self.learn_below = learn_below
        self.baseline = ExposureBaseline(prior_rate, prior_exposure, forget)
        self.statistic = 0.0

    @property
    def warmed_up(self) -> bool:
        # Warm-up counts buckets watched, not incidents: a failure mode never seen before must
        # still be able to alarm once the cell has been watched long enough.
        return self.baseline.steps >= self.warmup_steps

    def expected(self, x: Observation) -> float:
        return self.baseline.rate * read_observation(x)[1]

    def _next_statistic(self, x: Observation) -> float:
        count, exposure = read_observation(x)
        mu = self.baseline.upper_rate(self.baseline_z) * exposure
        llr = count * math.log(self.shift) - (self.shift - 1.0) * mu
        return max(0.0, self.statistic + llr)

    def score_one(self, x: Observation) -> float:
        read_observation(x)  # refuse bad input even while warming up
        if not self.warmed_up:
            return 0.0
        return self._next_statistic(x) / self.threshold

    def learn_one(self, x: Observation) -> None:
        count, exposure = read_observation(x)
        if self.warmed_up:
            self.statistic = self._next_statistic(x)
        # Keep the baseline clean: buckets that push the chart up are not taught as normal.
        if self.statistic < self.learn_below * self.threshold:
            self.baseline.update(count, exposure)

    def params(self) -> dict[str, Any]:
        return {
            "shift": self.shift,
            "threshold": self.threshold,
            "warmup_steps": self.warmup_steps,
            "baseline_z": self.baseline_z,
            "prior_rate": self.baseline.prior_rate,
            "prior_exposure": self.baseline.prior_exposure,
            "forget": self.baseline.forget,
            "learn_below": self.learn_below,
        }
