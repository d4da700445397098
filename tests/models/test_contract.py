"""Every registered detector goes through the same checks."""

from __future__ import annotations

import copy
import doctest
import importlib
import pickle

import numpy as np
import pytest

from models import DETECTORS, build_detector

NAMES = sorted(DETECTORS)


def in_control(
    seed: int, n: int = 120, rate: float = 2e-4, exposure: float = 20_000.0
) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    return [{"count": float(rng.poisson(rate * exposure)), "exposure": exposure} for _ in range(n)]


def run(det, xs):
    scores = []
    for x in xs:
        scores.append(det.score_one(x))
        det.learn_one(x)
    return scores


@pytest.mark.parametrize("name", NAMES)
def test_input_is_not_mutated(name):
    det = build_detector(name, {})
    for x in in_control(1):
        before = dict(x)
        det.score_one(x)
        det.learn_one(x)
        assert x == before


@pytest.mark.parametrize("name", NAMES)
def test_score_one_does_not_change_state(name):
    det = build_detector(name, {})
    xs = in_control(2)
    run(det, xs[:60])
    probe = {"count": 9.0, "exposure": 20_000.0}
    first = det.score_one(probe)
    assert det.score_one(probe) == first
    twin = copy.deepcopy(det)
    det.score_one({"count": 50.0, "exposure": 20_000.0})
    assert run(det, xs[60:]) == run(twin, xs[60:])


@pytest.mark.parametrize("name", NAMES)
def test_pickling_round_trips(name):
    det = build_detector(name, {})
    xs = in_control(3)
    run(det, xs[:80])
    clone = pickle.loads(pickle.dumps(det))
    assert run(clone, xs[80:]) == run(det, xs[80:])
    assert clone.params() == det.params()


@pytest.mark.parametrize("name", NAMES)
def test_seeded_runs_repeat(name):
    assert run(build_detector(name, {}), in_control(4)) == run(build_detector(name, {}), in_control(4))


@pytest.mark.parametrize("name", NAMES)
def test_has_a_doctest_example_that_passes(name):
    module = importlib.import_module(DETECTORS[name].__module__)
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert tests, f"{module.__name__} needs a doctest example"
    for t in tests:
        assert doctest.DocTestRunner().run(t).failed == 0


@pytest.mark.parametrize("name", NAMES)
def test_quiet_on_in_control_data_and_alarms_on_a_step(name):
    for seed in range(5):
        assert max(run(build_detector(name, {}), in_control(seed, n=200))) < 1.0
    det = build_detector(name, {})
    run(det, in_control(10, n=60))
    shifted = [{"count": float(c), "exposure": 20_000.0} for c in np.random.default_rng(11).poisson(20.0, 20)]
    assert max(run(det, shifted)) >= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_causality_cutting_the_future_keeps_the_past(name):
    xs = in_control(5, n=100) + [{"count": 25.0, "exposure": 20_000.0}] * 10
    full = run(build_detector(name, {}), xs)
    cut = run(build_detector(name, {}), xs[:70])
    assert full[:70] == cut


@pytest.mark.parametrize("name", NAMES)
def test_bad_observations_are_refused(name):
    det = build_detector(name, {})
    with pytest.raises(ValueError):
        det.learn_one({"count": -1.0, "exposure": 10.0})
    with pytest.raises((KeyError, ValueError)):
        det.score_one({"count": 1.0})


def test_unknown_detector_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown detector"):
        build_detector("nope", {})


def test_page_hinkley_peek_matches_a_real_river_update():
    import copy

    from models.river_page_hinkley import RiverPageHinkley

    det = RiverPageHinkley(threshold=6.0, min_instances=3, warmup_steps=3)
    rng = np.random.default_rng(9)
    for step in range(300):
        count = float(rng.poisson(2.0 if step % 90 < 60 else 12.0))  # steps up, so drifts fire and reset
        value = det._residual({"count": count, "exposure": 10_000.0})
        trial = copy.deepcopy(det.page_hinkley)
        trial.update(value)
        assert det._peek(value) == pytest.approx(det._statistic(trial), abs=1e-9)
        det.learn_one({"count": count, "exposure": 10_000.0})


def test_every_detector_in_models_is_registered_so_this_contract_runs_on_it():
    # The checks above iterate DETECTORS: a detector module that is not registered would skip them.
    import inspect
    import pkgutil

    import models

    found = {}
    for info in pkgutil.iter_modules(models.__path__):
        module = importlib.import_module(f"models.{info.name}")
        for cls in vars(module).values():
            defined_here = inspect.isclass(cls) and cls.__module__ == module.__name__
            if (
                defined_here
                and not getattr(cls, "_is_protocol", False)  # models.base.Detector, the interface
                and isinstance(getattr(cls, "name", None), str)  # the abstract bases have no name
                and callable(getattr(cls, "learn_one", None))
                and callable(getattr(cls, "score_one", None))
            ):
                found[cls.name] = cls
    assert found == DETECTORS
