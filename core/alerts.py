"""Potential-recall alerts: the record a detection produces, and its stable identity.

An alert's id is derived from the signal (cell, detector episode start), never from a clock or a
random source, so replaying the same events after a crash yields the same id and every consumer
(ClickHouse, Slack, the API) can deduplicate on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

ALL_MODES = "*"
"""The failure-mode value of an alert on a (model, batch) aggregate rather than one failure mode."""


def alert_id_for(model: str, batch: str, failure_mode: str, episode_start: float) -> str:
    """Stable id of the alert episode that started at ``episode_start`` (event time, epoch s).

    >>> alert_id_for("M1", "B1", "brakes", 86400.0) == alert_id_for("M1", "B1", "brakes", 86400.0)
    True
    >>> len(alert_id_for("M1", "B1", "brakes", 86400.0))
    20
    """
    raw = f"{model}\x1f{batch}\x1f{failure_mode}\x1f{episode_start:.3f}".encode()
    return hashlib.blake2b(raw, digest_size=10).hexdigest()


@dataclass(frozen=True, slots=True)
class Alert:
    """A potential recall raised by a detector on one cell.

    Times are epoch seconds. ``opened_at`` is event time (the end of the bucket that alarmed);
    ``trigger_produced_at`` is the broker timestamp of the event that closed that bucket, kept so
    alert latency can be measured end to end.
    """

    alert_id: str
    model: str
    batch: str
    failure_mode: str
    opened_at: float
    detector: str
    detector_params: dict[str, Any]
    config_version: str
    score: float
    count: int
    expected: float
    units_in_field: int
    rate_per_1000: float
    expected_rate_per_1000: float
    window_s: int
    trigger_event_id: str = ""
    trigger_produced_at: float = 0.0
    detectors_fired: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["detectors_fired"] = list(self.detectors_fired)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["detectors_fired"] = tuple(values.get("detectors_fired", ()))
        values["detector_params"] = dict(values.get("detector_params", {}))
        return cls(**values)

    @property
    def ratio(self) -> float:
        """Observed over expected count in the alarming bucket (inf when nothing was expected)."""
        return self.count / self.expected if self.expected > 0 else float("inf")
