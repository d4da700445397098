"""Detectors, one per module, all following :class:`models.base.Detector`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from models.base import Detector
from models.disproportionality import Disproportionality
from models.ewma_rate import EwmaRate
from models.poisson_cusum import PoissonCusum
from models.river_multivariate import RiverMultivariate
from models.river_page_hinkley import RiverPageHinkley

DETECTORS: dict[str, Callable[..., Detector]] = {
    RiverMultivariate.name: RiverMultivariate,
    PoissonCusum.name: PoissonCusum,
    RiverPageHinkley.name: RiverPageHinkley,
    Disproportionality.name: Disproportionality,
    EwmaRate.name: EwmaRate,
}


def build_detector(name: str, params: Mapping[str, Any]) -> Detector:
    """Build a detector by its registered name, with parameters from config.

    >>> build_detector("poisson_cusum", {"threshold": 9.0}).params()["threshold"]
    9.0
    """
    try:
        factory = DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; known: {sorted(DETECTORS)}") from None
    return factory(**params)
