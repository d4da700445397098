"""Exposure-aware EWMA chart on the incident rate, against a self-learned baseline rate.

Each bucket becomes a Poisson residual ``z = (count - expected) / sqrt(expected)`` with
``expected = baseline rate * exposure``, so buckets with different exposure are comparable and a
batch that ships more units is not flagged for it. ``z`` is smoothed with weight ``lam`` and the
chart alarms when the smoothed value passes ``threshold`` asymptotic EWMA sigmas,
``threshold * sqrt(lam / (2 - lam))``. The textbook 3 sigmas false-alarm about every 300 buckets
on Poisson data (skewed, and the chart is reflected); 4 gives several thousand.

Why next to the CUSUM: the CUSUM is tuned to one shift size and keeps whatever it has
accumulated until it drains; the EWMA reacts to sustained moderate drifts of any size and forgets
old deviations smoothly (geometrically), so a short burst long ago does not pre-load the chart.

>>> det = EwmaRate(warmup_steps=5)
>>> scores = []
>>> for count in [3, 4, 5, 4, 3, 5, 4, 4] * 4:  # about 4 incidents per 1,000 unit-days
...     scores.append(det.score_one({"count": count, "exposure": 1000.0}))
...     det.learn_one({"count": count, "exposure": 1000.0})
>>> max(scores) < 1.0
True
>>> for _ in range(3):  # the rate triples and stays there
...     det.learn_one({"count": 12, "exposure": 1000.0})
>>> det.score_one({"count": 12, "exposure": 1000.0}) >= 1.0
True
"""

from __future__ import annotations

import math
from typing import Any

from models.base import Observation, read_observation
from models.baseline import BaselineChart


class EwmaRate(BaselineChart):
    """Upper (one-sided) EWMA of Poisson residuals, normalised so 1.0 is the alarm line."""

    name = "ewma_rate"

    def __init__(
        self,
        lam: float = 0.2,
        threshold: float = 4.0,
        warmup_steps: int = 14,
        baseline_z: float = 1.0,
        prior_rate: float = 1e-3,
        prior_exposure: float = 1_000.0,
        forget: float = 0.99,
        learn_below: float = 0.5,
        min_expected: float = 0.5,
    ) -> None:
        if not 0.0 < lam <= 1.0:
            raise ValueError("lam must be in (0, 1]: it is the weight of the newest bucket")
        if threshold <= 0 or min_expected < 0:
            raise ValueError("need threshold > 0 and min_expected >= 0")
        self.lam = lam
        self.threshold = threshold
        self.min_expected = min_expected
        self._init_baseline(warmup_steps, baseline_z, prior_rate, prior_exposure, forget, learn_below)
        self.limit = threshold * math.sqrt(lam / (2.0 - lam))
        self.statistic = 0.0

    @property
    def alarm_line(self) -> float:
        return self.limit

    def _residual(self, x: Observation) -> float:
        count, exposure = read_observation(x)
        # The upper rate judges young cells leniently, as the other detectors do.
        mu = self.baseline.upper_rate(self.baseline_z) * exposure
        # Sparse cells: with 0.05 incidents expected one incident is z = 4 and the chart would
        # false-alarm every ~200 buckets; a floor on the scale makes them gather a few incidents
        # first (a burst in a sparse cell is the CUSUM's job).
        scale = max(mu, self.min_expected)
        return (count - mu) / math.sqrt(scale) if scale > 1e-12 else 0.0

    def _next_statistic(self, x: Observation) -> float:
        smoothed = (1.0 - self.lam) * self.statistic + self.lam * self._residual(x)
        # Reflect at zero: only increases matter for recalls, and a quiet spell must not bank
        # credit that would delay the alarm when a defect starts.
        return max(0.0, smoothed)

    def params(self) -> dict[str, Any]:
        return {"lam": self.lam, "threshold": self.threshold, **self.baseline_params(),
                "min_expected": self.min_expected}  # fmt: skip
