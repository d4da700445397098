"""An in-control incident rate per unit-day, learned online with slow forgetting.

Detectors compare a bucket's count with ``rate * exposure``. The rate starts from a weak prior
and forgets old buckets geometrically so it follows slow drifts (units ageing) while a sudden
defect stands out. Callers stop feeding it while a detector is elevated, so a defect does not
teach the baseline that it is normal.
"""

from __future__ import annotations

from dataclasses import dataclass


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
