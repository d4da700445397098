"""Disproportionality: a cell's incidents stand out against its peers, not only its own past.

Pharmacovigilance's proportional reporting ratio, applied to products: the share of a cell's
incidents that a failure mode (component) takes, against that share among *peers* — all other
cells, and the same model's other batches. A component that is always a large share of complaints
(engines, "unknown") is not flagged for being large; a component whose share jumps in one batch is.

Observation fields (all counts over the same trailing window unless noted):

- ``count``: incidents of the watched key; ``exposure``: all incidents of its (model, batch), or
  unit-days in the field when that is what the caller has;
- ``peer_count`` / ``peer_exposure``: the same, summed over every other cell (long history);
- ``model_peer_count`` / ``model_peer_exposure``: the same over the model's other batches;
- ``previous_count``: the key's incidents in the window before (growth);
- ``related_recalls``: recalls already known on the same model and component (campaigns are often
  extended to neighbouring batches; a component with none is rarely recalled out of nowhere).

Only ``count`` and ``exposure`` are required: without peers the detector compares the cell with
the rate it learned from its own in-control past, and criteria whose fields are missing are skipped.
An alarm needs every criterion at once: the score is >= 1 exactly when all pass, and otherwise the
margin of a failing one (the Poisson tail, the costly criterion, is only computed when it decides).
"""

from __future__ import annotations

import math
from typing import Any

from models.base import Observation, read_observation
from models.baseline import ExposureBaseline


def poisson_upper_tail(k: float, mean: float) -> float:
    """P(X >= k) for X ~ Poisson(mean), summed in log space over the terms that matter.

    >>> round(poisson_upper_tail(10, 4.0), 4)
    0.0081
    >>> poisson_upper_tail(0, 4.0), poisson_upper_tail(1, 0.0)
    (1.0, 0.0)
    """
    if k <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    first = math.ceil(k)
    last = max(first, int(mean + 12 * math.sqrt(mean))) + 40  # terms beyond add < 1e-15
    log_mean = math.log(mean)
    total = sum(math.exp(i * log_mean - mean - math.lgamma(i + 1)) for i in range(first, last))
    return min(1.0, total)


class Disproportionality:
    """Alarm when a key's share of its cell's incidents is both large against peers and unlikely.

    >>> det = Disproportionality(min_count=3, min_ratio=2.0, max_p=0.01)
    >>> det.score_one({"count": 8, "exposure": 40, "peer_count": 50, "peer_exposure": 2000}) >= 1.0
    True
    >>> det.score_one({"count": 2, "exposure": 40, "peer_count": 50, "peer_exposure": 2000}) < 1.0
    True
    """

    name = "disproportionality"

    def __init__(
        self,
        min_count: float = 3.0,
        min_ratio: float = 2.0,
        min_model_ratio: float = 1.0,
        min_growth: float | None = None,
        max_p: float = 1e-4,
        need_related_recall: bool = False,
        warmup_steps: int = 14,
        prior_rate: float = 1e-3,
        prior_exposure: float = 1_000.0,
        forget: float = 0.99,
    ) -> None:
        if min_count < 1 or min_ratio < 0 or min_model_ratio < 0 or not 0 < max_p <= 1:
            raise ValueError("need min_count >= 1, min_ratio >= 0, min_model_ratio >= 0, 0 < max_p <= 1")
        self.min_count = min_count
        self.min_ratio = min_ratio
        self.min_model_ratio = min_model_ratio
        self.min_growth = min_growth
        self.max_p = max_p
        self.need_related_recall = need_related_recall
        self.warmup_steps = warmup_steps
        self.baseline = ExposureBaseline(prior_rate, prior_exposure, forget)

    def params(self) -> dict[str, Any]:
        return {
            "min_count": self.min_count,
            "min_ratio": self.min_ratio,
            "min_model_ratio": self.min_model_ratio,
            "min_growth": self.min_growth,
            "max_p": self.max_p,
            "need_related_recall": self.need_related_recall,
            "warmup_steps": self.warmup_steps,
        }

    def _peer_rate(self, x: Observation) -> float | None:
        if "peer_count" in x:
            # +0.5 / +1: a component no peer has reported yet is rare, not impossible.
            return (float(x["peer_count"]) + 0.5) / (float(x["peer_exposure"]) + 1.0)
        if self.baseline.steps < self.warmup_steps:
            return None
        return self.baseline.rate

    def expected(self, x: Observation) -> float:
        _, exposure = read_observation(x)
        rate = self._peer_rate(x)
        return 0.0 if rate is None else rate * exposure

    def score_one(self, x: Observation) -> float:
        count, exposure = read_observation(x)
        rate = self._peer_rate(x)
        if rate is None or exposure <= 0:
            return 0.0
        expected = rate * exposure
        margins = [count / self.min_count]
        if self.min_ratio > 0:  # 0 switches a criterion off (the naive count rule is all zeros)
            margins.append((count / expected) / self.min_ratio if expected > 0 else math.inf)
        if self.min_model_ratio > 0 and "model_peer_count" in x:
            model_rate = (float(x["model_peer_count"]) + 0.5) / (float(x["model_peer_exposure"]) + 1.0)
            margins.append((count / exposure) / model_rate / self.min_model_ratio)
        if self.min_growth is not None and "previous_count" in x:
            growth = math.log((count + 1.0) / (float(x["previous_count"]) + 1.0))
            margins.append(math.exp(growth - self.min_growth))
        if self.need_related_recall and "related_recalls" in x:
            margins.append(1.0 if float(x["related_recalls"]) > 0 else 0.0)
        weakest = min(margins)
        if weakest < 1.0 or self.max_p >= 1.0:
            return float(weakest)  # the tail probability (the costly part) cannot change the verdict
        p = poisson_upper_tail(count, expected)
        return float(min(weakest, self.max_p / p if p > 0 else math.inf))

    def learn_one(self, x: Observation) -> None:
        count, exposure = read_observation(x)
        # An alarming observation is not taught as normal (peers are the baseline when present).
        if self.score_one(x) < 1.0:
            self.baseline.update(count, exposure)
        else:
            self.baseline.steps += 1
