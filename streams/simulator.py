"""A plausible manufacturer, simulated day by day: production, shipments and incidents.

Batches are produced every ``batch_every_days`` and ship over ``ship_days``. Each unit in the
field reports incidents at a baseline rate per failure mode that is higher while the unit is young
(infant mortality). An injected :class:`Defect` multiplies one failure mode's rate for some batches
from an onset day on, and is the ground truth the demo checks alerts against. Seeded and
reproducible: the same config yields the same events. Producing to Kafka lives in the CLI edge.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import numpy as np

from streams.records import Event, Severity

DAY_S = 86_400


def supplier_lot(batch: str, component: str) -> str:
    """The supplier lot of ``component`` built into ``batch``.

    Every two production rounds use one lot of each component, in every model alike, so a lot
    spans batches and models, as real supplier lots do.

    >>> supplier_lot("KT-100-B05", "heater"), supplier_lot("CM-300-B04", "heater")
    ('heater-L02', 'heater-L02')
    """
    index = int(batch.rsplit("-B", 1)[1])
    return f"{component}-L{index // 2:02d}"


@dataclass(frozen=True)
class Defect:
    """A failure mode's rate multiplied from an onset day, in named batches or in a supplier lot.

    With ``supplier_lot`` set, every batch of any model containing that lot is affected and
    ``model``/``batches`` may be left empty.
    """

    model: str
    batches: tuple[str, ...]
    failure_mode: str
    onset_day: float
    multiplier: float = 5.0
    supplier_lot: str = ""

    def affects(self, model: str, batch: str, failure_mode: str, day: float) -> bool:
        if failure_mode != self.failure_mode or day < self.onset_day:
            return False
        if self.supplier_lot:
            component = FAILURE_MODES.get(failure_mode, ("",))[0]
            return supplier_lot(batch, component) == self.supplier_lot
        return model == self.model and batch in self.batches

    def affects_cell(self, model: str, batch: str) -> bool:
        """Whether an alert on (model, batch) points at this defect (ground truth for the demo)."""
        return self.affects(model, batch, self.failure_mode, self.onset_day)


FAILURE_MODES: dict[str, tuple[str, float, float]] = {
    # failure mode: (component, share of the baseline rate, probability an incident is a fire/injury)
    "heating_element": ("heater", 0.25, 0.02),
    "power_cord": ("cord", 0.15, 0.01),
    "lid_hinge": ("lid", 0.20, 0.0),
    "thermostat": ("controller", 0.15, 0.01),
    "display": ("ui_board", 0.15, 0.0),
    "seal_leak": ("gasket", 0.10, 0.0),
}
KIND_SHARES = {"complaint": 0.6, "repair": 0.25, "return": 0.15}
REGIONS = ("EU-North", "EU-South", "US-East", "US-West", "APAC")


@dataclass(frozen=True)
class SimulationConfig:
    seed: int = 7
    models: tuple[str, ...] = ("KT-100", "KT-200", "CM-300", "TO-400")
    start: datetime = datetime(2025, 1, 1, tzinfo=UTC)
    days: int = 120
    batch_every_days: int = 30
    batch_units: int = 20_000
    ship_days: int = 14
    initial_batches: int = 6
    base_rate_per_unit_day: float = 3e-4
    infant_factor: float = 1.0
    infant_days: float = 15.0
    defect: Defect | None = None
    extra_defects: tuple[Defect, ...] = ()
    failure_modes: dict[str, tuple[str, float, float]] = field(default_factory=lambda: dict(FAILURE_MODES))

    def ending_by(self, now: float) -> SimulationConfig:
        """This run, moved earlier if needed so that its last day is over by ``now`` (epoch seconds).

        The worker dead-letters an event dated after its record was sent (``max_event_lead_s``), so
        a long run paced in real time must not outrun the clock. Runs that end in the past keep
        their start, and with it the dates tests and the demo expect.
        """
        latest = datetime.fromtimestamp(now, tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        latest -= timedelta(days=self.days + 1)
        return self if self.start <= latest else replace(self, start=latest)

    @property
    def defects(self) -> tuple[Defect, ...]:
        return ((self.defect,) if self.defect else ()) + self.extra_defects

    @staticmethod
    def default_defect(onset_day: float = 25.0, kind: str = "batch") -> Defect:
        """The demo's defect: one batch, or a heater lot shared by two batches of every model.

        Both hit units already in the field when the simulation starts, so their cells are warm.
        """
        if kind == "lot":
            return Defect("", (), "heating_element", onset_day, 5.0, supplier_lot="heater-L02")
        if kind != "batch":
            raise ValueError(f"defect kind must be 'batch' or 'lot', not {kind!r}")
        return Defect("KT-200", ("KT-200-B04",), "heating_element", onset_day, 5.0)


@dataclass
class _Batch:
    model: str
    name: str
    produced_day: float
    shipped: int = 0
    ship_ages: list[tuple[float, int]] = field(default_factory=list)  # (shipped day, units)


class Simulator:
    """Generates the events of each simulated day in event-time order."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.batches: list[_Batch] = []
        self.counter = 0

    def _batch_name(self, model: str, index: int) -> str:
        return f"{model}-B{index:02d}"

    def _initial_events(self) -> Iterator[Event]:
        """Batches already in the field at the start, reported as shipments on day 0."""
        cfg = self.config
        for model in cfg.models:
            for i in range(cfg.initial_batches):
                age = (cfg.initial_batches - i) * cfg.batch_every_days
                batch = _Batch(model, self._batch_name(model, i), -float(age))
                self.batches.append(batch)
                batch.ship_ages.append((-float(age) + cfg.ship_days / 2, cfg.batch_units))
                batch.shipped = cfg.batch_units
                yield self._shipment(batch, cfg.batch_units, 0.0)

    def _shipment(self, batch: _Batch, units: int, day: float) -> Event:
        self.counter += 1
        return Event(
            event_id=f"sim{self.config.seed}-{self.counter}",
            kind="shipment",
            occurred_at=self.config.start + timedelta(days=day),
            model=batch.model,
            batch=batch.name,
            region=REGIONS[self.counter % len(REGIONS)],
            units=units,
        )

    def hazard(self, age_days: float) -> float:
        """Relative incident rate of a unit of this age (1.0 once past infancy)."""
        return 1.0 + self.config.infant_factor * math.exp(-max(age_days, 0.0) / self.config.infant_days)

    def day_events(self, day: int) -> list[Event]:
        cfg, rng = self.config, self.rng
        events: list[Event] = []
        if day == 0:
            events.extend(self._initial_events())
        if day > 0 and day % cfg.batch_every_days == 0:
            index = cfg.initial_batches + day // cfg.batch_every_days - 1
            for model in cfg.models:
                self.batches.append(_Batch(model, self._batch_name(model, index), float(day)))
        per_day = math.ceil(cfg.batch_units / cfg.ship_days)
        for batch in self.batches:
            if batch.produced_day >= 0 and batch.shipped < cfg.batch_units and day >= batch.produced_day:
                units = min(per_day, cfg.batch_units - batch.shipped)
                batch.shipped += units
                batch.ship_ages.append((float(day), units))
                events.append(self._shipment(batch, units, day + 0.5))
        for batch in self.batches:
            exposure = sum(units * self.hazard(day - shipped) for shipped, units in batch.ship_ages)
            if exposure <= 0:
                continue
            for mode, (component, share, severe_p) in cfg.failure_modes.items():
                rate = cfg.base_rate_per_unit_day * share * exposure
                for defect in cfg.defects:
                    if defect.affects(batch.model, batch.name, mode, day):
                        rate *= defect.multiplier
                for _ in range(int(rng.poisson(rate))):
                    events.append(self._incident(batch, mode, component, severe_p, day))
        events.sort(key=lambda e: e.occurred_at)
        return events

    def _incident(self, batch: _Batch, mode: str, component: str, severe_p: float, day: int) -> Event:
        rng = self.rng
        self.counter += 1
        kind = str(rng.choice(list(KIND_SHARES), p=list(KIND_SHARES.values())))
        severe = bool(rng.random() < severe_p)
        return Event(
            event_id=f"sim{self.config.seed}-{self.counter}",
            kind=kind,  # type: ignore[arg-type]
            occurred_at=self.config.start + timedelta(seconds=(day + float(rng.random())) * DAY_S),
            model=batch.model,
            batch=batch.name,
            serial=f"{batch.name}-{int(rng.integers(0, max(batch.shipped, 1))):07d}",
            failure_mode=mode,
            component=component,
            severity=Severity(fire=severe and mode == "heating_element", injury=severe),
            region=REGIONS[int(rng.integers(0, len(REGIONS)))],
        )

    def run(self) -> Iterator[tuple[int, list[Event]]]:
        for day in range(self.config.days):
            yield day, self.day_events(day)
