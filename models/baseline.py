"""An in-control incident rate per unit-day, learned online with slow forgetting.

Detectors compare a bucket's count with ``rate * exposure``. The rate starts from a weak prior
and forgets old buckets geometrically so it follows slow drifts (units ageing) while a sudden
defect stands out. Callers stop feeding it while a detector is elevated, so a defect does not
teach the baseline that it is normal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.base import Observation, read_observation


@dataclass
class ExposureBaseline:
    """Exponentially forgetting Poisson rate estimate (a Gamma posterior mean).

    >>> b = ExposureBaseline(prior_rate=0.001, prior_exposure=1000.0, forget=1.0)
    >>> b.update(count=5, exposure=1000.0)
    >>> round(b.rate, 6)
    0.003
    >>> b.learned_count
    5.0
    """

    prior_rate: float = 1e-3
    prior_exposure: float = 1_000.0
    forget: float = 0.99
    counts: float = 0.0
    exposure: float = 0.0
    learned_count: float = 0.0
    steps: int = 0

    @property
    def rate(self) -> float:
        return (self.prior_rate * self.prior_exposure + self.counts) / (self.prior_exposure + self.exposure)

    def upper_rate(self, z: float) -> float:
        """The rate ``z`` standard errors above the estimate: young cells are judged leniently.

        >>> b = ExposureBaseline(prior_rate=0.001, prior_exposure=1000.0)
        >>> b.upper_rate(1.0) > b.rate
        True
        """
        pseudo_counts = self.prior_rate * self.prior_exposure + self.counts
        return float((pseudo_counts + z * pseudo_counts**0.5) / (self.prior_exposure + self.exposure))

    def update(self, count: float, exposure: float) -> None:
        self.counts = self.counts * self.forget + count
        self.exposure = self.exposure * self.forget + exposure
        self.learned_count += count
        self.steps += 1


class BaselineDetector:
    """What every self-baseline detector shares: the learned rate, warm-up and its parameters.

    Subclasses call :meth:`_init_baseline` from ``__init__``. A one-sided chart that only needs
    ``_next_statistic`` and ``alarm_line`` gets ``score_one`` and ``learn_one`` from
    :class:`BaselineChart`.
    """

    warmup_steps: int
    baseline_z: float
    learn_below: float
    baseline: ExposureBaseline

    def _init_baseline(
        self,
        warmup_steps: int,
        baseline_z: float,
        prior_rate: float,
        prior_exposure: float,
        forget: float,
        learn_below: float,
    ) -> None:
        self.warmup_steps = warmup_steps
        self.baseline_z = baseline_z
        self.learn_below = learn_below
        self.baseline = ExposureBaseline(prior_rate, prior_exposure, forget)

    @property
    def warmed_up(self) -> bool:
        # Warm-up counts buckets watched, not incidents: a failure mode never seen before must
        # still be able to alarm once the cell has been watched long enough.
        return self.baseline.steps >= self.warmup_steps

    def expected(self, x: Observation) -> float:
        return self.baseline.rate * read_observation(x)[1]

    def baseline_params(self) -> dict[str, Any]:
        return {
            "warmup_steps": self.warmup_steps,
            "baseline_z": self.baseline_z,
            "prior_rate": self.baseline.prior_rate,
            "prior_exposure": self.baseline.prior_exposure,
            "forget": self.baseline.forget,
            "learn_below": self.learn_below,
        }


class BaselineChart(BaselineDetector):
    """A one-sided chart statistic against the learned rate, normalised so 1.0 is the alarm line."""

    statistic: float

    @property
    def alarm_line(self) -> float:
        raise NotImplementedError

    def _next_statistic(self, x: Observation) -> float:
        """The statistic after ``x``, computed without changing the detector."""
        raise NotImplementedError

    def score_one(self, x: Observation) -> float:
        read_observation(x)  # refuse bad input even while warming up
        if not self.warmed_up:
            return 0.0
        return self._next_statistic(x) / self.alarm_line

    def learn_one(self, x: Observation) -> None:
        count, exposure = read_observation(x)
        if self.warmed_up:
            self.statistic = self._next_statistic(x)
        # Keep the baseline clean: buckets that push the chart up are not taught as normal.
        if self.statistic < self.learn_below * self.alarm_line:
            self.baseline.update(count, exposure)
