"""Risk matrix: reviewers' 1..5 scores per dimension -> a combined score and a recommended decision.

Why: a recall recommendation must be reproducible and its weights open to review, so the matrix is
configuration (``config/risk_matrix.toml``), not code, and the one rule that forces an outcome is
explicit: a severity of 5 ("death or serious injury possible") recommends recall whatever the
weighted mean. Who may score what is part of the configuration too (legal exposure is legal's call).

Per dimension the score is the mean of the reviewers' latest scores; the combined score is the
weighted mean of the dimensions, and exists only once every dimension is scored.

>>> m = DEFAULT_MATRIX
>>> a = m.assess([Score("severity", "quality", "ana", 3), Score("scope", "engineering", "bo", 2),
...               Score("legal", "legal", "cy", 2), Score("brand", "quality", "ana", 1)])
>>> round(a.combined or 0, 2), str(a.recommendation)
(2.25, 'monitor')
>>> str(m.assess([Score("severity", "engineering", "bo", 5)]).recommendation)
'recall'
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from cases.lifecycle import Decision

DIMENSIONS: Final[tuple[str, ...]] = ("severity", "scope", "legal", "brand")
SEVERITY: Final[str] = "severity"


class RiskConfigError(ValueError):
    """A risk matrix configuration that is incomplete, inconsistent or has unknown keys."""


class ScoreError(ValueError):
    """A score outside 1..5, for an unknown dimension, or from a role not allowed to score it."""


def _breakpoints(name: str, values: Iterable[Any]) -> tuple[int, ...]:
    bps = tuple(values)
    if len(bps) != 4 or not all(isinstance(b, int) and b > 0 for b in bps) or list(bps) != sorted(set(bps)):
        raise RiskConfigError(f"{name} breakpoints must be 4 ascending positive integers, got {bps}")
    return bps


@dataclass(frozen=True, slots=True)
class ScopeBreakpoints:
    """Lowest units in field / number of regions that score 2, 3, 4 and 5 (below the first: 1)."""

    units: tuple[int, ...] = (100, 1_000, 10_000, 100_000)
    regions: tuple[int, ...] = (2, 3, 5, 10)

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", _breakpoints("units", self.units))
        object.__setattr__(self, "regions", _breakpoints("regions", self.regions))


def scope_score(units: int, regions: int, breakpoints: ScopeBreakpoints = ScopeBreakpoints()) -> int:
    """Suggested scope score: the higher of the units-in-field and the regions step (1..5).

    >>> scope_score(50, 1), scope_score(2_000, 1), scope_score(50, 5), scope_score(250_000, 12)
    (1, 3, 4, 5)
    """
    if units < 0 or regions < 0:
        raise ValueError("units and regions cannot be negative")
    by_units = 1 + sum(units >= b for b in breakpoints.units)
    by_regions = 1 + sum(regions >= b for b in breakpoints.regions)
    return max(by_units, by_regions)


@dataclass(frozen=True, slots=True)
class Score:
    """One reviewer's 1..5 score of one dimension, in the role they review in."""

    dimension: str
    role: str
    reviewer: str
    value: int


@dataclass(frozen=True, slots=True)
class Assessment:
    """The matrix's reading of a set of scores."""

    dimensions: Mapping[str, float]  # mean score per scored dimension
    missing: tuple[str, ...]  # dimensions nobody (allowed) has scored yet
    combined: float | None  # weighted mean; None while a dimension is missing
    recommendation: Decision | None  # None while incomplete, unless an override applies
    override: str = ""  # why the recommendation ignores the combined score, if it does


@dataclass(frozen=True, slots=True)
class RiskMatrix:
    """Weights per dimension, roles allowed per dimension, thresholds and scope breakpoints."""

    weights: Mapping[str, float]
    roles: Mapping[str, frozenset[str]]
    recall_at: float = 3.5
    monitor_at: float = 2.0
    severity_override: int = 5  # any reviewer's severity >= this recommends recall
    scope: ScopeBreakpoints = field(default_factory=ScopeBreakpoints)

    def __post_init__(self) -> None:
        for name, table in (("weights", self.weights), ("roles", self.roles)):
            if set(table) != set(DIMENSIONS):
                raise RiskConfigError(
                    f"{name} must list exactly the dimensions {list(DIMENSIONS)}, got {sorted(table)}"
                )
        weights = {d: float(self.weights[d]) for d in DIMENSIONS}
        if any(not math.isfinite(w) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise RiskConfigError(f"weights must be finite, >= 0 and not all 0, got {weights}")
        roles = {d: frozenset(self.roles[d]) for d in DIMENSIONS}
        if not all(roles.values()):
            raise RiskConfigError("every dimension needs at least one role allowed to score it")
        if not 1 <= self.monitor_at < self.recall_at <= 5:
            raise RiskConfigError(f"need 1 <= monitor ({self.monitor_at}) < recall ({self.recall_at}) <= 5")
        if self.severity_override not in range(1, 6):
            raise RiskConfigError(f"severity_override must be 1..5, got {self.severity_override}")
        object.__setattr__(self, "weights", MappingProxyType(weights))
        object.__setattr__(self, "roles", MappingProxyType(roles))

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> RiskMatrix:
        """Build from the TOML layout: [weights], [roles], [thresholds], [scope_breakpoints]."""
        _known("top level", config, {"weights", "roles", "thresholds", "scope_breakpoints"})
        thresholds = config.get("thresholds", {})
        _known("[thresholds]", thresholds, {"recall", "monitor", "severity_override"})
        bps = config.get("scope_breakpoints", {})
        _known("[scope_breakpoints]", bps, {"units", "regions"})
        try:
            return cls(
                weights=dict(config["weights"]),
                roles={d: frozenset(_strings(d, r)) for d, r in dict(config["roles"]).items()},
                recall_at=float(thresholds.get("recall", 3.5)),
                monitor_at=float(thresholds.get("monitor", 2.0)),
                severity_override=int(thresholds.get("severity_override", 5)),
                scope=ScopeBreakpoints(**bps),
            )
        except KeyError as e:
            raise RiskConfigError(f"the risk matrix needs a [{e.args[0]}] table") from None
        except (TypeError, ValueError) as e:
            raise RiskConfigError(str(e)) from e

    def check(self, score: Score) -> None:
        """Raise ScoreError unless ``score`` is a 1..5 integer, by a role allowed for its dimension."""
        if score.dimension not in self.roles:
            raise ScoreError(f"unknown dimension {score.dimension!r}; dimensions are {list(DIMENSIONS)}")
        if isinstance(score.value, bool) or not isinstance(score.value, int) or not 1 <= score.value <= 5:
            raise ScoreError(f"{score.dimension} score must be an integer 1..5, got {score.value!r}")
        if not score.reviewer.strip():
            raise ScoreError("a score needs its reviewer")
        allowed = self.roles[score.dimension]
        if score.role not in allowed:
            names = ", ".join(sorted(allowed))
            raise ScoreError(f"role {score.role!r} may not score {score.dimension}; allowed roles: {names}")

    def recommend(self, combined: float) -> Decision:
        if combined >= self.recall_at:
            return Decision.RECALL
        return Decision.MONITOR if combined >= self.monitor_at else Decision.DISMISS

    def scope_score(self, units: int, regions: int) -> int:
        return scope_score(units, regions, self.scope)

    def assess(self, scores: Iterable[Score]) -> Assessment:
        """Combine scores; a reviewer's later score of a dimension replaces their earlier one."""
        latest: dict[tuple[str, str], Score] = {}
        for score in scores:
            self.check(score)
            latest[(score.dimension, score.reviewer)] = score
        values: dict[str, list[int]] = {}
        for s in latest.values():
            values.setdefault(s.dimension, []).append(s.value)
        means = {d: sum(values[d]) / len(values[d]) for d in DIMENSIONS if d in values}
        missing = tuple(d for d in DIMENSIONS if d not in means)
        combined = None
        if not missing:
            total = sum(self.weights[d] * means[d] for d in DIMENSIONS) / sum(self.weights.values())
            combined = round(total, 9)  # so a score exactly on a threshold is not lost to float error
        worst = max(values.get(SEVERITY, [0]))
        if worst >= self.severity_override:
            why = f"a reviewer scored severity {worst} (death or serious injury possible): recall regardless"
            return Assessment(MappingProxyType(means), missing, combined, Decision.RECALL, why)
        recommendation = None if combined is None else self.recommend(combined)
        return Assessment(MappingProxyType(means), missing, combined, recommendation)


def _known(where: str, table: Any, keys: set[str]) -> None:
    if not isinstance(table, Mapping):
        raise RiskConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - keys)
    if unknown:
        raise RiskConfigError(f"unknown keys in {where}: {unknown}; known: {sorted(keys)}")


def _strings(dimension: str, roles: Any) -> list[str]:
    if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
        raise RiskConfigError(f"roles.{dimension} must be a list of role names")
    return roles


DEFAULT_CONFIG: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "weights": {"severity": 0.4, "scope": 0.25, "legal": 0.2, "brand": 0.15},
        "roles": {
            "severity": ["quality", "engineering"],
            "scope": ["quality", "engineering"],
            "legal": ["legal"],
            "brand": ["quality", "legal"],
        },
        "thresholds": {"recall": 3.5, "monitor": 2.0, "severity_override": 5},
        "scope_breakpoints": {"units": [100, 1_000, 10_000, 100_000], "regions": [2, 3, 5, 10]},
    }
)
DEFAULT_MATRIX: Final = RiskMatrix.from_mapping(DEFAULT_CONFIG)
"""The built-in matrix; ``config/risk_matrix.toml`` ships the same values for editing."""


def load_risk_matrix(path: str | Path) -> RiskMatrix:
    """Read a risk matrix from a TOML file (see ``config/risk_matrix.toml``)."""
    with open(path, "rb") as f:
        try:
            config = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise RiskConfigError(f"{path}: {e}") from e
    try:
        return RiskMatrix.from_mapping(config)
    except RiskConfigError as e:
        raise RiskConfigError(f"{path}: {e}") from e
