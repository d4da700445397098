"""Behaviour specific to the EWMA rate chart (the shared contract is in test_contract.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models import build_detector
from models.ewma_rate import EwmaRate

RATE = 5e-4  # incidents per unit-day
EXPOSURE = 20_000.0  # unit-days per bucket: 10 incidents expected


def poisson_buckets(
    seed: int, n: int, rate: float = RATE, exposure: float = EXPOSURE
) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    return [{"count": float(rng.poisson(rate * exposure)), "exposure": exposure} for _ in range(n)]


def run(det: EwmaRate, xs: list[dict[str, float]]) -> list[float]:
    scores = []
    for x in xs:
        scores.append(det.score_one(x))
        det.learn_one(x)
    return scores


def first_alarm(scores: list[float]) -> int | None:
    return next((i for i, s in enumerate(scores) if s >= 1.0), None)


def test_false_alarms_are_rare_on_a_long_in_control_series() -> None:
    # 20 cells x 1,000 daily buckets at 10 incidents a bucket: the default 4 sigmas alarm a few
    # times (about once per 5,000 buckets); the textbook 3 sigmas would alarm ~80 times.
    onsets = 0
    for seed in range(20):
        scores = run(EwmaRate(), poisson_buckets(seed, 1_000))
        onsets += sum(1 for before, now in zip([0.0, *scores], scores, strict=False) if now >= 1.0 > before)
    assert onsets <= 10  # fewer than one false alarm per 2,000 buckets
    assert max(run(EwmaRate(), poisson_buckets(0, 1_000))) < 1.0


@pytest.mark.parametrize("seed", range(5))
def test_quiet_on_a_sparse_cell(seed: int) -> None:
    # 0.05 incidents a bucket: one incident is a Pearson residual of ~4, yet no alarm.
    assert max(run(EwmaRate(), poisson_buckets(seed, 2_000, rate=2.5e-6))) < 1.0


@pytest.mark.parametrize("seed", range(10))
def test_a_sustained_doubling_alarms_within_ten_buckets(seed: int) -> None:
    det = EwmaRate()
    assert max(run(det, poisson_buckets(seed, 100))) < 1.0
    delay = first_alarm(run(det, poisson_buckets(seed + 100, 30, rate=2 * RATE)))
    assert delay is not None and delay < 10


@pytest.mark.parametrize("seed", range(3))
def test_decreases_are_ignored_and_bank_no_credit(seed: int) -> None:
    det = EwmaRate()
    run(det, poisson_buckets(seed, 100))
    assert run(det, [{"count": 0.0, "exposure": EXPOSURE}] * 10) == [0.0] * 10
    assert det.statistic == 0.0  # reflected at zero: a quiet spell does not delay the next alarm
    assert max(run(det, poisson_buckets(seed + 50, 100, rate=0.4 * RATE))) < 1.0


@pytest.mark.parametrize("seed", range(3))
def test_more_units_in_the_field_at_the_same_rate_do_not_alarm(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ramp = np.geomspace(10_000.0, 200_000.0, 200)  # shipping: 20x the unit-days over the series
    jump = [400_000.0] * 50  # a new batch doubles the field at once
    xs = [{"count": float(rng.poisson(RATE * e)), "exposure": float(e)} for e in [*ramp, *jump]]
    assert max(run(EwmaRate(), xs)) < 1.0
    assert xs[-1]["count"] > 10 * xs[0]["count"]  # a count-only chart would have fired


def test_warmup_scores_zero_even_for_a_flood() -> None:
    det = EwmaRate(warmup_steps=10)
    flood = {"count": 500.0, "exposure": EXPOSURE}
    for x in poisson_buckets(0, 10):
        assert det.score_one(flood) == 0.0
        det.learn_one(x)
    assert det.statistic == 0.0
    assert det.score_one(flood) >= 1.0


def test_the_alarm_line_is_threshold_asymptotic_sigmas() -> None:
    assert EwmaRate(lam=0.2, threshold=3.0).limit == pytest.approx(1.0)
    det = EwmaRate(lam=0.5, threshold=2.0, warmup_steps=0, baseline_z=0.0, min_expected=0.0)
    x = {"count": 9.0, "exposure": 1_000.0}
    mu = det.expected(x)  # prior rate 1e-3: one incident expected
    z = (9.0 - mu) / math.sqrt(mu)
    assert det.score_one(x) == pytest.approx(0.5 * z / (2.0 * math.sqrt(0.5 / 1.5)))


def test_params_round_trip_through_the_registry() -> None:
    params = {
        "lam": 0.1,
        "threshold": 3.2,
        "warmup_steps": 7,
        "baseline_z": 0.5,
        "prior_rate": 2e-4,
        "prior_exposure": 500.0,
        "forget": 0.98,
        "learn_below": 0.4,
        "min_expected": 1.0,
    }
    det = build_detector("ewma_rate", params)
    assert isinstance(det, EwmaRate)
    assert det.params() == params
    assert build_detector("ewma_rate", EwmaRate().params()).params() == EwmaRate().params()
    xs = poisson_buckets(1, 80) + poisson_buckets(2, 20, rate=3 * RATE)
    assert run(det, xs) == run(EwmaRate(**params), xs)


@pytest.mark.parametrize("params", [{"lam": 0.0}, {"lam": 1.5}, {"threshold": 0.0}, {"min_expected": -1.0}])
def test_bad_parameters_are_refused(params: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        EwmaRate(**params)
