from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from cases.lifecycle import Decision
from cases.risk import (
    DEFAULT_CONFIG,
    DEFAULT_MATRIX,
    RiskConfigError,
    RiskMatrix,
    ScopeBreakpoints,
    Score,
    ScoreError,
    load_risk_matrix,
    scope_score,
)

CONFIG_FILE = Path(__file__).resolve().parents[2] / "config" / "risk_matrix.toml"


def full(severity: int, scope: int, legal: int, brand: int) -> list[Score]:
    return [
        Score("severity", "quality", "ana", severity),
        Score("scope", "engineering", "bo", scope),
        Score("legal", "legal", "cy", legal),
        Score("brand", "legal", "cy", brand),
    ]


def config(**changes: Any) -> dict[str, Any]:
    cfg = copy.deepcopy({k: dict(v) for k, v in DEFAULT_CONFIG.items()})
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    return cfg


def test_combined_score_is_the_weighted_mean_of_dimension_means() -> None:
    scores = [
        *full(4, 2, 3, 1),
        Score("severity", "engineering", "dan", 2),  # severity mean (4 + 2) / 2 = 3
        Score("brand", "quality", "ana", 3),  # brand mean (1 + 3) / 2 = 2
    ]
    a = DEFAULT_MATRIX.assess(scores)
    assert dict(a.dimensions) == {"severity": 3.0, "scope": 2.0, "legal": 3.0, "brand": 2.0}
    assert a.combined == pytest.approx(0.4 * 3 + 0.25 * 2 + 0.2 * 3 + 0.15 * 2)
    assert (a.missing, a.recommendation, a.override) == ((), Decision.MONITOR, "")


def test_a_reviewers_later_score_replaces_their_earlier_one() -> None:
    a = DEFAULT_MATRIX.assess([*full(2, 2, 2, 2), Score("severity", "quality", "ana", 4)])
    assert a.dimensions["severity"] == 4.0


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ((4, 4, 3, 3), Decision.RECALL),  # 1.6 + 1.0 + 0.6 + 0.45 = 3.65
        ((4, 4, 3, 2), Decision.RECALL),  # exactly 3.5 (up to float rounding): >= recall
        ((4, 3, 3, 3), Decision.MONITOR),  # 3.4
        ((3, 3, 3, 3), Decision.MONITOR),
        ((2, 2, 2, 2), Decision.MONITOR),  # exactly 2.0: >= monitor
        ((1, 2, 4, 3), Decision.MONITOR),  # 0.4 + 0.5 + 0.8 + 0.45 = 2.15
        ((2, 2, 1, 2), Decision.DISMISS),  # 1.8
        ((1, 1, 1, 1), Decision.DISMISS),
    ],
)
def test_thresholds(scores: tuple[int, int, int, int], expected: Decision) -> None:
    assert DEFAULT_MATRIX.assess(full(*scores)).recommendation is expected


def test_severity_five_recommends_recall_regardless() -> None:
    a = DEFAULT_MATRIX.assess([*full(1, 1, 1, 1), Score("severity", "engineering", "bo", 5)])
    assert a.combined is not None and a.combined < 2.0  # the mean alone would dismiss
    assert a.recommendation is Decision.RECALL and "severity 5" in a.override
    early = DEFAULT_MATRIX.assess([Score("severity", "quality", "ana", 5)])
    assert (early.combined, early.recommendation) == (None, Decision.RECALL)
    strict = RiskMatrix.from_mapping(config(thresholds__severity_override=4))
    assert strict.assess(full(4, 1, 1, 1)).recommendation is Decision.RECALL
    assert DEFAULT_MATRIX.assess(full(4, 1, 1, 1)).recommendation is Decision.MONITOR  # 2.2


def test_incomplete_assessment_has_no_combined_score_or_recommendation() -> None:
    a = DEFAULT_MATRIX.assess(full(3, 3, 3, 3)[:2])
    assert (a.missing, a.combined, a.recommendation) == (("legal", "brand"), None, None)


@pytest.mark.parametrize(
    ("score", "match"),
    [
        (
            Score("severity", "legal", "cy", 3),
            "role 'legal' may not score severity; allowed roles: engineering, quality",
        ),
        (Score("legal", "engineering", "bo", 3), "may not score legal; allowed roles: legal"),
        (Score("legal", "intern", "x", 3), "role 'intern' may not score legal"),
        (Score("safety", "quality", "ana", 3), "unknown dimension 'safety'"),
        (Score("severity", "quality", "ana", 0), "integer 1..5"),
        (Score("severity", "quality", "ana", 6), "integer 1..5"),
        (Score("severity", "quality", "ana", 3.5), "integer 1..5"),  # type: ignore[arg-type]
        (Score("severity", "quality", "ana", True), "integer 1..5"),
        (Score("severity", "quality", " ", 3), "reviewer"),
    ],
)
def test_score_validation(score: Score, match: str) -> None:
    with pytest.raises(ScoreError, match=match):
        DEFAULT_MATRIX.assess([*full(3, 3, 3, 3), score])


def test_roles_are_configurable() -> None:
    roles = {**DEFAULT_CONFIG["roles"], "legal": ["legal", "regulatory"]}
    matrix = RiskMatrix.from_mapping(config(roles=roles))
    matrix.check(Score("legal", "regulatory", "rae", 4))
    with pytest.raises(ScoreError):
        DEFAULT_MATRIX.check(Score("legal", "regulatory", "rae", 4))


def test_config_file_loads_and_matches_the_defaults() -> None:
    matrix = load_risk_matrix(CONFIG_FILE)
    assert matrix == DEFAULT_MATRIX
    assert dict(matrix.weights) == {"severity": 0.4, "scope": 0.25, "legal": 0.2, "brand": 0.15}
    assert matrix.roles["legal"] == {"legal"} and (matrix.recall_at, matrix.monitor_at) == (3.5, 2.0)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (config(extra={}), "unknown keys in top level: \\['extra'\\]"),
        (config(thresholds__recal=3.0), "unknown keys in \\[thresholds\\]"),
        (config(weights={"severity": 1, "scope": 1, "legal": 1}), "weights must list exactly the dimensions"),
        (config(weights={"severity": 1, "scope": 1, "legal": 1, "brand": 1, "cost": 1}), "exactly"),
        (config(weights={"severity": 0, "scope": 0, "legal": 0, "brand": 0}), "not all 0"),
        (config(weights={"severity": -1, "scope": 1, "legal": 1, "brand": 1}), ">= 0"),
        (config(roles__legal=[]), "at least one role"),
        (config(roles__legal="legal"), "list of role names"),
        (config(thresholds__recall=1.5), "monitor .* < recall"),
        (config(thresholds__severity_override=7), "severity_override must be 1..5"),
        (config(scope_breakpoints__units=[10, 5, 20, 30]), "4 ascending positive integers"),
        (config(scope_breakpoints__regions=[2, 3, 5]), "4 ascending positive integers"),
        ({k: v for k, v in config().items() if k != "roles"}, "needs a \\[roles\\] table"),
    ],
)
def test_bad_configs_are_refused(cfg: dict[str, Any], match: str) -> None:
    with pytest.raises(RiskConfigError, match=match):
        RiskMatrix.from_mapping(cfg)


def test_load_reports_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "risk.toml"
    bad.write_text(CONFIG_FILE.read_text().replace("[weights]", "[weights]\ncost = 1.0"))
    with pytest.raises(RiskConfigError, match=r"risk\.toml: weights must list exactly"):
        load_risk_matrix(bad)
    bad.write_text("[weights\n")
    with pytest.raises(RiskConfigError, match=r"risk\.toml"):
        load_risk_matrix(bad)


@pytest.mark.parametrize(
    ("units", "regions", "expected"),
    [
        (0, 0, 1),
        (99, 1, 1),
        (100, 1, 2),
        (9_999, 1, 3),
        (10_000, 1, 4),
        (100_000, 1, 5),
        (10, 2, 2),
        (10, 4, 3),
        (10, 9, 4),
        (10, 10, 5),
        (5_000, 9, 4),  # the higher of the two steps
    ],
)
def test_scope_score(units: int, regions: int, expected: int) -> None:
    assert scope_score(units, regions) == expected == DEFAULT_MATRIX.scope_score(units, regions)


def test_scope_breakpoints_are_configurable() -> None:
    small = ScopeBreakpoints(units=(10, 20, 30, 40), regions=(50, 60, 70, 80))
    assert scope_score(25, 1, small) == 3
    matrix = RiskMatrix.from_mapping(config(scope_breakpoints={"units": [10, 20, 30, 40]}))
    assert matrix.scope_score(45, 3) == 5 and matrix.scope.regions == (2, 3, 5, 10)
    with pytest.raises(ValueError, match="negative"):
        scope_score(-1, 0)
