"""Detection parameters the core needs, as a plain value (built from settings at the edge)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_DETECTORS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("poisson_cusum", {}),
    ("river_page_hinkley", {}),
)


@dataclass(frozen=True)
class DetectionConfig:
    """How cells bucket event time, which windows they roll, and which detectors watch them.

    >>> DetectionConfig(bucket_s=3600, windows_s=(86400,)).history_buckets
    24
    """

    bucket_s: int = 86_400
    windows_s: tuple[int, ...] = (7 * 86_400, 30 * 86_400)
    detectors: tuple[tuple[str, dict[str, Any]], ...] = DEFAULT_DETECTORS
    cooldown_buckets: int = 14
    max_catchup_buckets: int = 400
    backfill_buckets: int = 60
    version: str = "dev"

    def __post_init__(self) -> None:
        if self.bucket_s <= 0:
            raise ValueError("bucket_s must be positive")
        if not self.windows_s or min(self.windows_s) < self.bucket_s:
            raise ValueError("each rolling window must span at least one bucket")
        if not self.detectors:
            raise ValueError("at least one detector is needed")

    @property
    def history_buckets(self) -> int:
        return max(self.windows_s) // self.bucket_s
