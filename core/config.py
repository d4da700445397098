"""Detection parameters the core needs, as a plain value (built from settings at the edge)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_DETECTORS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("poisson_cusum", {}),
    ("river_page_hinkley", {}),
)
# An event may be dated at most this far after its Kafka record's timestamp (the producer's clock
# when it sent the event): room for clock skew and a misapplied time-zone offset (at most 14 h),
# yet an event that slips through moves a cell's open bucket at most about one bucket past real
# time, which the cell's next real events catch up with.
DEFAULT_MAX_EVENT_LEAD_S = 86_400
# Failure-mode sub-cells one cell may hold. Each costs about 0.5 KiB of the cell's changelog
# snapshot (its detectors and history), and the snapshot must fit one Kafka record (1,000,000 bytes
# by default): 200 keeps the default cell near 100 KiB. A real product has tens of failure modes,
# so more than 200 means free text in failure_mode, not a taxonomy.
DEFAULT_MAX_FAILURE_MODES = 200


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
    max_event_lead_s: int = DEFAULT_MAX_EVENT_LEAD_S
    max_failure_modes: int = DEFAULT_MAX_FAILURE_MODES
    version: str = "dev"

    def __post_init__(self) -> None:
        if self.bucket_s <= 0:
            raise ValueError("bucket_s must be positive")
        if not self.windows_s or min(self.windows_s) < self.bucket_s:
            raise ValueError("each rolling window must span at least one bucket")
        if not self.detectors:
            raise ValueError("at least one detector is needed")
        if self.max_event_lead_s < 0:
            raise ValueError("max_event_lead_s must not be negative")
        if self.max_failure_modes < 1:
            raise ValueError("max_failure_modes must be at least 1")

    @property
    def history_buckets(self) -> int:
        return max(self.windows_s) // self.bucket_s
