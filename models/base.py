"""The interface every detector in ``models/`` follows, river style.

An observation is one closed time bucket of one cell: the number of incidents (complaints,
repairs, returns) reported in it and the exposure in unit-days (units in the field times the
bucket's length in days). ``score_one`` never changes the detector; ``learn_one`` folds the
observation in. A score of 1.0 or more means the detector alarms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

Observation = Mapping[str, float]
"""``{"count": incidents in the bucket, "exposure": unit-days in the bucket}``."""


@runtime_checkable
class Detector(Protocol):
    name: str

    def learn_one(self, x: Observation) -> None: ...

    def score_one(self, x: Observation) -> float: ...

    def expected(self, x: Observation) -> float:
        """Incidents the detector expects in ``x`` under its current in-control baseline."""
        ...

    def params(self) -> dict[str, Any]: ...


def read_observation(x: Observation) -> tuple[float, float]:
    """Count and exposure of an observation, refusing values no bucket can have.

    >>> read_observation({"count": 2, "exposure": 100.0})
    (2.0, 100.0)
    """
    count = float(x["count"])
    exposure = float(x["exposure"])
    if count < 0 or exposure < 0 or count != count or exposure != exposure:
        raise ValueError(f"observation needs count >= 0 and exposure >= 0, got {dict(x)!r}")
    return count, exposure
