"""A one-sided Mahalanobis score on a few rate features, with river's online covariance.

Each bucket becomes a small feature vector from the cell's own history, all exposure-aware and
scale-free: the signed Poisson deviance residual of this bucket against the learned baseline,
a short EWMA of those residuals, the residual of the last ``window`` buckets pooled, and the log
growth of exposure. River's ``EmpiricalCovariance`` learns how these vary in control (so it
absorbs over-dispersion and the features' correlations). Exposure growth is conditioned on, not
scored: a fleet that grows is not a defect, but if residuals rise as new units ship (infant
mortality) the regression learns to expect it. Deviance rather than Pearson residuals, because at
small expected counts one incident is a 4-sigma Pearson residual and would alarm on its own.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
from river.covariance import EmpiricalCovariance

from models.base import Observation, read_observation
from models.baseline import BaselineDetector

RATE = ("now", "ewma", "window")  # scored, one-sided
GROWTH = "growth"  # conditioned on


def deviance_residual(count: float, mu: float) -> float:
    """Signed square root of the Poisson deviance: near-normal even for small ``mu``.

    >>> round(deviance_residual(1.0, 0.05), 2), deviance_residual(3.0, 0.0)
    (2.02, 0.0)
    """
    if mu <= 0:
        return 0.0  # nothing expected (no exposure): nothing to judge
    dev = 2.0 * ((count * math.log(count / mu) if count > 0 else 0.0) - (count - mu))
    return math.copysign(math.sqrt(max(dev, 0.0)), count - mu)


class RiverMultivariate(BaselineDetector):
    """Upward Mahalanobis distance of the rate features, normalised so 1.0 is the alarm line.

    >>> det = RiverMultivariate(warmup_steps=10)
    >>> for _ in range(60):
    ...     det.learn_one({"count": 5, "exposure": 1000.0})
    >>> det.score_one({"count": 5, "exposure": 1000.0}) < 1.0
    True
    >>> det.score_one({"count": 1, "exposure": 1000.0})  # a drop is never a recall signal
    0.0
    >>> det.score_one({"count": 30, "exposure": 1000.0}) >= 1.0
    True
    """

    name = "river_multivariate"

    def __init__(
        self,
        threshold: float = 25.0,
        warmup_steps: int = 14,
        window: int = 14,
        ewma_alpha: float = 0.3,
        prior_weight: float = 30.0,
        growth_scale: float = 0.1,
        baseline_z: float = 1.0,
        prior_rate: float = 1e-3,
        prior_exposure: float = 1_000.0,
        forget: float = 0.99,
        learn_below: float = 0.5,
    ) -> None:
        if threshold <= 0 or window < 1 or not 0 < ewma_alpha <= 1 or prior_weight <= 0 or growth_scale <= 0:
            raise ValueError(
                "need threshold > 0, window >= 1, 0 < ewma_alpha <= 1, prior_weight > 0, growth_scale > 0"
            )
        self.threshold, self.window = threshold, window
        self.ewma_alpha, self.prior_weight, self.growth_scale = ewma_alpha, prior_weight, growth_scale
        self._init_baseline(warmup_steps, baseline_z, prior_rate, prior_exposure, forget, learn_below)
        self.ewma = 0.0
        self.recent: deque[tuple[float, float]] = deque(maxlen=window - 1)  # the buckets before this one
        self.last_exposure: float | None = None
        self.covariance = EmpiricalCovariance()  # type: ignore[no-untyped-call]
        # The null covariance of the rate features if residuals were iid N(0, 1): the prior the
        # learned one is shrunk towards, and a floor on variances so a quiet history cannot make
        # the detector touchier than Poisson noise allows.
        a, r = ewma_alpha, window**-0.5
        c = (1 - (1 - a) ** window) * r
        self.null = np.array([[1.0, a, r], [a, a / (2 - a), c], [r, c, 1.0]])
        self._refresh()

    def _features(self, x: Observation) -> dict[str, float]:
        count, exposure = read_observation(x)
        rate = self.baseline.upper_rate(self.baseline_z)  # lenient while the cell is young
        now = deviance_residual(count, rate * exposure)
        pooled_count = count + sum(c for c, _ in self.recent)
        pooled_exposure = exposure + sum(e for _, e in self.recent)
        last = exposure if self.last_exposure is None else self.last_exposure
        return {
            "now": now,
            "ewma": (1 - self.ewma_alpha) * self.ewma + self.ewma_alpha * now,
            "window": deviance_residual(pooled_count, rate * pooled_exposure),
            # Clipped to one e-fold: a fleet's first shipment (0 -> N units) must not dominate.
            GROWTH: min(max(math.log1p(exposure) - math.log1p(last), -1.0), 1.0),
        }

    def _refresh(self) -> None:
        """Cache the conditional model (rate features given growth) after the covariance learns."""
        cov = self.covariance.matrix
        n = float(cov[GROWTH, GROWTH].n) if (GROWTH, GROWTH) in cov else 0.0
        w = n / (n + self.prior_weight)
        names = (*RATE, GROWTH)
        mean = np.array([w * cov[f, f].mean.get() if n else 0.0 for f in names])
        learned = np.array([[self.covariance[f, g].get() if n else 0.0 for g in names] for f in names])
        prior = np.zeros((4, 4))
        prior[:3, :3], prior[3, 3] = self.null, self.growth_scale**2
        sigma = w * learned + (1 - w) * prior
        sigma += np.diag(np.maximum(np.diag(prior) - np.diag(sigma), 0.0))  # the floor; stays PSD
        beta = sigma[:3, 3] / sigma[3, 3]
        conditional = sigma[:3, :3] - np.outer(beta, sigma[3, :3])
        self.center, self.beta, self.growth_mean = mean[:3].tolist(), beta.tolist(), float(mean[3])
        self.precision: list[list[float]] = np.linalg.inv(conditional).tolist()

    def _distance(self, f: dict[str, float]) -> float:
        g = f[GROWTH] - self.growth_mean
        # Exposure growth may explain incidents away, never accuse: one odd bucket can teach a
        # spurious slope, and units leaving the field must not look like a defect.
        shift = [c + max(0.0, b * g) for c, b in zip(self.center, self.beta, strict=True)]
        # Clip below the expectation to zero: fewer incidents than usual never add to the score.
        e = [max(0.0, f[r] - s) for r, s in zip(RATE, shift, strict=True)]
        return float(sum(e[i] * p[j] * e[j] for i, p in enumerate(self.precision) for j in range(3)))

    def score_one(self, x: Observation) -> float:
        f = self._features(x)  # refuses bad input even while warming up
        if not self.warmed_up:
            return 0.0
        return self._distance(f) / self.threshold

    def learn_one(self, x: Observation) -> None:
        count, exposure = read_observation(x)
        f = self._features(x)
        warm = self.warmed_up
        quiet = not warm or self._distance(f) < self.learn_below * self.threshold
        # History features follow every bucket, so a sustained defect keeps them high ...
        self.ewma, self.last_exposure = f["ewma"], exposure
        self.recent.append((count, exposure))
        # ... but only quiet buckets teach the baseline and the covariance what normal looks like.
        if warm and quiet:
            self.covariance.update(f)
            self._refresh()
        if quiet:
            self.baseline.update(count, exposure)

    def params(self) -> dict[str, Any]:
        own = "threshold window ewma_alpha prior_weight growth_scale"
        return {k: getattr(self, k) for k in own.split()} | self.baseline_params()
