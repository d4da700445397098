"""Rolling incident rates and detection for one (model, batch) cell, idempotent under replay.

A cell holds every piece of state for one (model, batch): units in the field, the open event-time
bucket, closed-bucket history per failure mode, the detectors and any open alert episode. All of
it lives in one partition, so the cell can remember the last source offset it applied and skip
events a crashed worker already folded in before its offsets were committed. That, not broker
transactions, is what makes counts exact under ``kill -9``.

Event time drives everything here: a bucket closes when an event of a later bucket arrives, so a
replay of the same events produces the same rates and the same alerts.
"""

from __future__ import annotations

import pickle
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import NamedTuple

from core.alerts import ALL_MODES, Alert, alert_id_for
from core.config import DetectionConfig
from models import build_detector
from models.base import Detector

DAY_S = 86_400.0


class RatePoint(NamedTuple):
    """One closed bucket of one sub-cell over one rolling window: a row of the ``rates`` table.

    A named tuple, not a frozen dataclass: it is built once per closed bucket, sub-cell and window
    (about once per event), a frozen dataclass takes five times as long to build, and a tuple
    already is the row the worker writes, field for column. (The ``count`` field hides
    ``tuple.count``, which nothing here calls.)
    """

    model: str
    batch: str
    failure_mode: str
    bucket_start: int
    bucket_s: int
    window_s: int
    count: int  # type: ignore[assignment]  # the column's name; shadows tuple.count on purpose
    window_count: int
    units_in_field: int
    exposure_unit_days: float
    expected: float
    rate_per_1000: float
    window_rate_per_1000: float


@dataclass
class Episode:
    """An open alert: it stays open while detectors keep alarming, then cools down."""

    alert_id: str
    started_at: float
    quiet_buckets: int = 0


@dataclass
class SubCell:
    failure_mode: str
    detectors: list[Detector]
    history: deque[int]
    open_count: int = 0
    episode: Episode | None = None


@dataclass
class BucketOutcome:
    rates: list[RatePoint] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    # The incident's failure mode was new to a cell already watching ``max_failure_modes``: it is
    # counted in the all-modes sub-cell only.
    mode_over_cap: bool = False

    def extend(self, other: BucketOutcome) -> None:
        self.rates.extend(other.rates)
        self.alerts.extend(other.alerts)


@dataclass
class CellState:
    """All detection state of one (model, batch)."""

    model: str
    batch: str
    applied_offsets: dict[int, int] = field(default_factory=dict)
    units_in_field: int = 0
    open_bucket: int | None = None
    open_exposure: float = 0.0
    exposure_since: float = 0.0
    exposure_history: deque[float] = field(default_factory=deque)
    subcells: dict[str, SubCell] = field(default_factory=dict)
    trigger_event_id: str = ""
    trigger_produced_at: float = 0.0
    # Incidents whose failure mode found the cell's sub-cells full (see ``apply_incident``). A class
    # default too, so a snapshot pickled before this field existed still restores.
    modes_over_cap: int = 0

    # -- idempotence ---------------------------------------------------------------------------
    def already_applied(self, partition: int, offset: int) -> bool:
        """True for an event this state has folded in before (a replay after a crash)."""
        return offset <= self.applied_offsets.get(partition, -1)

    def mark_applied(self, partition: int, offset: int) -> None:
        self.applied_offsets[partition] = max(offset, self.applied_offsets.get(partition, -1))

    # -- inputs ----------------------------------------------------------------------------------
    def apply_incident(
        self, cfg: DetectionConfig, failure_mode: str, occurred_at: float, event_id: str, produced_at: float
    ) -> BucketOutcome:
        """Count one complaint, repair or return; returns whatever buckets it closed."""
        # The event that closes a bucket is the one an alert on that bucket is attributed to.
        self.trigger_event_id, self.trigger_produced_at = event_id, produced_at
        outcome = self._advance(cfg, occurred_at)
        self._subcell(cfg, ALL_MODES).open_count += 1
        if failure_mode in self.subcells or len(self.subcells) - 1 < cfg.max_failure_modes:  # - all-modes
            self._subcell(cfg, failure_mode).open_count += 1
        else:
            # Every sub-cell grows the cell's changelog snapshot, which must fit one Kafka record:
            # past the cap a new mode gets no sub-cell of its own. The event is valid and still
            # counts in the all-modes sub-cell (and its row keeps its failure mode), so nothing is
            # lost but per-mode detection of modes beyond the first ``max_failure_modes``. The
            # cell's own state decides, and it is restored from the changelog: a replay decides alike.
            self.modes_over_cap += 1
            outcome.mode_over_cap = True
        return outcome

    def apply_shipment(
        self,
        cfg: DetectionConfig,
        units: int,
        occurred_at: float,
        event_id: str = "",
        produced_at: float = 0.0,
    ) -> BucketOutcome:
        """Units entering the field: exposure grows from the shipment's time on."""
        self.trigger_event_id, self.trigger_produced_at = event_id, produced_at
        outcome = self._advance(cfg, occurred_at)
        self._accrue_exposure(cfg, occurred_at)
        self.units_in_field = max(0, self.units_in_field + units)
        return outcome

    def apply_population(
        self,
        cfg: DetectionConfig,
        units: int,
        occurred_at: float,
        event_id: str = "",
        produced_at: float = 0.0,
    ) -> BucketOutcome:
        """The registry's count of units in the field as of ``occurred_at``: sets, never adds, so a
        repeated or replayed count changes nothing."""
        self.trigger_event_id, self.trigger_produced_at = event_id, produced_at
        outcome = self._advance(cfg, occurred_at)
        self._accrue_exposure(cfg, occurred_at)
        self.units_in_field = max(0, units)
        return outcome

    # -- buckets ---------------------------------------------------------------------------------
    def _accrue_exposure(self, cfg: DetectionConfig, t: float) -> None:
        if self.open_bucket is None:
            return
        start = self.open_bucket * cfg.bucket_s
        t = min(max(t, start, self.exposure_since), start + cfg.bucket_s)
        self.open_exposure += self.units_in_field * (t - self.exposure_since) / DAY_S
        self.exposure_since = t

    def _advance(self, cfg: DetectionConfig, t: float) -> BucketOutcome:
        """Close every bucket before the one ``t`` falls in. Late events count in the open bucket."""
        bucket = int(t // cfg.bucket_s)
        outcome = BucketOutcome()
        if self.open_bucket is None:
            self.open_bucket, self.exposure_since = bucket, bucket * cfg.bucket_s
            return outcome
        if bucket - self.open_bucket > cfg.max_catchup_buckets:
            # A long silence (or a clock far ahead) is folded into one catch-up bucket rather than
            # thousands of empty ones, which bounds the work a single event can cause.
            self.open_bucket = bucket - cfg.max_catchup_buckets
            self.exposure_since = self.open_bucket * cfg.bucket_s
        while self.open_bucket < bucket:
            outcome.extend(self._close_bucket(cfg))
        return outcome

    def _close_bucket(self, cfg: DetectionConfig) -> BucketOutcome:
        assert self.open_bucket is not None
        start = self.open_bucket * cfg.bucket_s
        self._accrue_exposure(cfg, start + cfg.bucket_s)
        exposure = self.open_exposure
        self.exposure_history.append(exposure)
        # Longer than the rate windows: a failure mode seen for the first time is backfilled
        # from it, and its detectors must have been "watching" long enough to be warmed up.
        while len(self.exposure_history) > max(cfg.history_buckets, cfg.backfill_buckets):
            self.exposure_history.popleft()
        closed_at = float(start + cfg.bucket_s)
        history_buckets = cfg.history_buckets
        outcome = BucketOutcome()
        fm_alarmed = False
        # Failure modes first: an aggregate alarm explained by one mode should not alert twice.
        for name in sorted(self.subcells, key=lambda n: n == ALL_MODES):
            sub = self.subcells[name]
            x = {"count": float(sub.open_count), "exposure": exposure}
            scores = {d.name: d.score_one(x) for d in sub.detectors}
            expected = sub.detectors[0].expected(x) if sub.detectors else 0.0
            for d in sub.detectors:
                d.learn_one(x)
            sub.history.append(sub.open_count)
            while len(sub.history) > history_buckets:
                sub.history.popleft()
            outcome.rates.extend(self._rate_points(cfg, sub, int(start), exposure, expected))
            fired = tuple([n for n, s in scores.items() if s >= 1.0])
            if name == ALL_MODES and fm_alarmed:
                fired = ()
            if fired or sub.episode is not None:  # else there is no episode to open or follow
                alert = self._update_episode(cfg, sub, fired, scores, closed_at, expected, exposure)
                if alert is not None:
                    outcome.alerts.append(alert)
            if fired or sub.episode is not None:
                fm_alarmed = fm_alarmed or name != ALL_MODES
            sub.open_count = 0
        self.open_bucket += 1
        self.open_exposure = 0.0
        self.exposure_since = float(self.open_bucket * cfg.bucket_s)
        return outcome

    def _rate_points(
        self, cfg: DetectionConfig, sub: SubCell, start: int, exposure: float, expected: float
    ) -> list[RatePoint]:
        units = self.units_in_field
        per_1000 = 1000.0 / units if units else 0.0
        count = sub.open_count
        history = sub.history
        points = []
        for window_s in cfg.windows_s:
            n_buckets = max(1, window_s // cfg.bucket_s)
            window_count = _tail_sum(history, n_buckets)
            points.append(
                RatePoint(
                    self.model,
                    self.batch,
                    sub.failure_mode,
                    start,
                    cfg.bucket_s,
                    window_s,
                    count,
                    window_count,
                    units,
                    exposure,
                    expected,
                    count * per_1000,
                    window_count * per_1000,
                )
            )
        return points

    def _update_episode(
        self,
        cfg: DetectionConfig,
        sub: SubCell,
        fired: tuple[str, ...],
        scores: dict[str, float],
        closed_at: float,
        expected: float,
        exposure: float,
    ) -> Alert | None:
        if sub.episode is not None:
            sub.episode.quiet_buckets = 0 if fired else sub.episode.quiet_buckets + 1
            if sub.episode.quiet_buckets >= cfg.cooldown_buckets:
                sub.episode = None
            return None
        if not fired:
            return None
        sub.episode = Episode(alert_id_for(self.model, self.batch, sub.failure_mode, closed_at), closed_at)
        lead = max(fired, key=lambda n: scores[n])
        detector = next(d for d in sub.detectors if d.name == lead)
        window_s = cfg.windows_s[0]
        n_buckets = max(1, window_s // cfg.bucket_s)
        per_1000 = 1000.0 / self.units_in_field if self.units_in_field else 0.0
        recent = list(sub.history)[-n_buckets:]
        recent_exposure = list(self.exposure_history)[-n_buckets:]
        return Alert(
            alert_id=sub.episode.alert_id,
            model=self.model,
            batch=self.batch,
            failure_mode=sub.failure_mode,
            opened_at=closed_at,
            detector=lead,
            detector_params=detector.params(),
            config_version=cfg.version,
            score=scores[lead],
            count=sub.history[-1],
            expected=expected,
            units_in_field=self.units_in_field,
            rate_per_1000=sum(recent) * per_1000,
            expected_rate_per_1000=detector.expected({"count": 0.0, "exposure": sum(recent_exposure)})
            * per_1000,
            window_s=window_s,
            trigger_event_id=self.trigger_event_id,
            trigger_produced_at=self.trigger_produced_at,
            detectors_fired=fired,
        )

    # -- sub-cells -------------------------------------------------------------------------------
    def _subcell(self, cfg: DetectionConfig, failure_mode: str) -> SubCell:
        sub = self.subcells.get(failure_mode)
        if sub is None:
            sub = SubCell(failure_mode, [build_detector(n, p) for n, p in cfg.detectors], deque())
            # A mode seen for the first time has been watched all along with zero incidents:
            # teach its detectors the cell's past exposure so a novel failure can alarm at once.
            for exposure in self.exposure_history:
                for d in sub.detectors:
                    d.learn_one({"count": 0.0, "exposure": exposure})
            sub.history.extend([0] * min(len(self.exposure_history), cfg.history_buckets))
            self.subcells[failure_mode] = sub
        return sub


def snapshot_bound_bytes(cfg: DetectionConfig, partitions: int = 1024) -> int:
    """An upper estimate of the pickled size of the largest cell ``cfg`` allows, for a check at
    startup that every cell's changelog snapshot fits one Kafka record.

    Largest means: ``max_failure_modes`` sub-cells plus the all-modes one, each named with 128
    four-byte characters, full histories of large counts, warmed detectors, an open episode, and
    replay offsets for ``partitions`` partitions. The size is measured for one and two mode
    sub-cells and extrapolated, which is exact for identical sub-cells and cheap.
    """
    n_history = max(cfg.history_buckets, cfg.backfill_buckets)

    def cell(n_modes: int) -> int:
        state = CellState("\U0001f6e0" * 128, "\U0001f6e0" * 128)
        state.applied_offsets = {p: 2**62 + p for p in range(partitions)}
        state.open_bucket, state.units_in_field = 2**40, 2**40
        state.exposure_history = deque(float(2**40 + i) + 0.5 for i in range(n_history))
        state.trigger_event_id = "\U0001f6e0" * 200
        names = [ALL_MODES] + [chr(0x10000 + m) * 128 for m in range(n_modes)]
        for name in names:
            sub = SubCell(name, [build_detector(n, p) for n, p in cfg.detectors], deque())
            for i in range(n_history):
                for d in sub.detectors:
                    d.learn_one({"count": float(1000 + i), "exposure": 1e6 + i})
            sub.history.extend(2**31 + i for i in range(cfg.history_buckets))
            sub.open_count = 2**31
            sub.episode = Episode("\U0001f6e0" * 64, 2.0**40 + 0.5, 2**31)
            state.subcells[name] = sub
        return len(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))

    one, two = cell(1), cell(2)
    return one + (two - one) * (cfg.max_failure_modes - 1)


def _tail_sum(values: deque[int], n: int) -> int:
    """Sum of the last ``n`` values: ``sum(list(values)[-n:])`` without copying the deque."""
    size = len(values)
    return sum(values) if n >= size else sum(islice(values, size - n, None))
