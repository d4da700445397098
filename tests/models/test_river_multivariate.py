"""Behaviour of the river multivariate detector beyond the shared contract."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from models import build_detector
from models.river_multivariate import RiverMultivariate

EXPOSURE = 20_000.0


def run(det, xs):
    scores = []
    for x in xs:
        scores.append(det.score_one(x))
        det.learn_one(x)
    return scores


def poisson(seed, n, mu, exposure=EXPOSURE):
    rng = np.random.default_rng(seed)
    return [{"count": float(c), "exposure": exposure} for c in rng.poisson(mu, n)]


@pytest.mark.parametrize("mu", [0.05, 4.0, 100.0])
def test_quiet_on_long_in_control_data(mu):
    # From sparse cells (one incident is a 4-sigma Pearson residual) to busy ones.
    alarms = buckets = 0
    for seed in range(5):
        scores = run(RiverMultivariate(), poisson(seed, 1_000, mu))[14:]
        alarms += sum(s >= 1.0 for s in scores)
        buckets += len(scores)
    assert alarms / buckets <= 0.002


@pytest.mark.parametrize(("mu", "factor"), [(4.0, 3.0), (10.0, 2.0), (4.0, 5.0)])
def test_alarms_soon_after_a_sustained_step_and_keeps_alarming(mu, factor):
    for seed in range(10):
        det = RiverMultivariate()
        run(det, poisson(seed, 100, mu))
        scores = run(det, poisson(100 + seed, 60, mu * factor))
        first = next(i for i, s in enumerate(scores) if s >= 1.0)
        assert first <= 12
        # It does not learn from flagged buckets, so the defect is not taught as normal.
        assert sum(s >= 1.0 for s in scores[-30:]) >= 25


@pytest.mark.parametrize("factor", [0.0, 0.3])
def test_a_drop_never_alarms(factor):
    det = RiverMultivariate()
    run(det, poisson(1, 100, 4.0))
    scores = run(det, poisson(2, 100, 4.0 * factor))
    assert max(scores) < 1.0
    assert det.score_one({"count": 0.0, "exposure": EXPOSURE}) == 0.0


def test_more_units_at_the_same_rate_do_not_alarm():
    rng = np.random.default_rng(3)
    rate = 2e-4
    exposures = [EXPOSURE] * 100 + [5 * EXPOSURE] * 50 + [0.0] * 3 + [EXPOSURE * 1.03**t for t in range(80)]
    xs = [{"count": float(rng.poisson(rate * e)), "exposure": e} for e in exposures]
    assert max(run(RiverMultivariate(), xs)) < 1.0


def test_one_incident_in_a_sparse_cell_does_not_alarm():
    det = RiverMultivariate()
    run(det, poisson(4, 200, 0.05))
    assert det.score_one({"count": 1.0, "exposure": EXPOSURE}) < 1.0


def test_a_backfilled_failure_mode_can_alarm_at_once():
    # The worker teaches a new failure mode the cell's past exposure with zero incidents.
    det = RiverMultivariate()
    run(det, [{"count": 0.0, "exposure": EXPOSURE}] * 30)
    assert det.score_one({"count": 5.0, "exposure": EXPOSURE}) >= 1.0


def test_pickling_mid_alarm_then_continuing_gives_identical_scores():
    det = RiverMultivariate()
    run(det, poisson(5, 80, 4.0))
    run(det, poisson(6, 5, 12.0))
    clone = pickle.loads(pickle.dumps(det))
    rest = poisson(7, 40, 12.0) + poisson(8, 40, 4.0)
    assert run(clone, rest) == run(det, rest)


def test_params_round_trip_through_the_registry():
    params = RiverMultivariate(threshold=20.0, window=7, ewma_alpha=0.2, prior_weight=10.0).params()
    rebuilt = build_detector("river_multivariate", params)
    assert isinstance(rebuilt, RiverMultivariate)
    assert rebuilt.params() == params
    assert build_detector("river_multivariate", {}).params() == RiverMultivariate().params()


@pytest.mark.parametrize(
    "params",
    [{"threshold": 0.0}, {"window": 0}, {"ewma_alpha": 0.0}, {"prior_weight": -1.0}, {"growth_scale": 0.0}],
)
def test_bad_params_are_refused(params):
    with pytest.raises(ValueError):
        RiverMultivariate(**params)
