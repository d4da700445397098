"""The alarm ranker: learns what separates recalls, round-trips through its file, refuses bad files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from core.ranking import FEATURES, alarm_features
from models.alarm_ranker import FORMAT, AlarmRanker, RankerFileError

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "ranker" / "alarm-ranker-v1.json"


def _data(n: int = 400) -> tuple[list[list[float]], list[int]]:
    rng = random.Random(3)
    rows, labels = [], []
    for _ in range(n):
        recalled = rng.random() < 0.2
        x = {
            "count": rng.randint(3, 30),
            "exposure": rng.randint(30, 300),
            "previous_count": rng.randint(0, 10),
            "related_recalls": rng.randint(1, 3) if recalled else rng.choice([0, 0, 0, 1]),
        }
        x["crash_count"] = rng.randint(0, int(x["count"])) if recalled else 0
        rows.append(alarm_features(x))
        labels.append(int(recalled))
    return rows, labels


def test_ranker_learns_the_separating_features_and_ranks_recalls_first() -> None:
    rows, labels = _data()
    ranker = AlarmRanker.fit(rows, labels, version="t1")
    weights = ranker.coefficients()
    assert weights["log_related_recalls"] > 0 and weights["crash_share"] > 0
    scores = ranker.score_many(rows)
    recalled = [s for s, y in zip(scores, labels, strict=True) if y]
    others = [s for s, y in zip(scores, labels, strict=True) if not y]
    assert sum(recalled) / len(recalled) > sum(others) / len(others) + 0.3


def test_file_round_trip_gives_the_same_scores_and_is_plain_json(tmp_path: Path) -> None:
    rows, labels = _data()
    ranker = AlarmRanker.fit(rows, labels, version="t2", meta={"candidates": len(rows)})
    path = tmp_path / "r.json"
    ranker.save(path)
    data = json.loads(path.read_text())  # no pickle: numbers a reviewer can read
    assert data["format"] == FORMAT and data["features"] == list(FEATURES) and data["version"] == "t2"
    loaded = AlarmRanker.load(path)
    assert loaded.score_many(rows) == pytest.approx(ranker.score_many(rows), abs=1e-12)
    assert loaded.version == "t2" and loaded.meta["candidates"] == len(rows)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="other/1"), "format"),
        (lambda d: d.update(features=list(reversed(FEATURES))), "features"),
        (lambda d: d["logit"].update(coef=[1.0]), "finite"),
        (lambda d: d["logit"].update(intercept=float("nan")), "finite"),
        (lambda d: d["scaler"].update(scale=[0.0] * len(FEATURES)), "scale"),
        (lambda d: d.pop("version"), "missing"),
    ],
)
def test_a_bad_file_is_refused_with_the_reason(tmp_path: Path, change, message: str) -> None:
    rows, labels = _data()
    data = AlarmRanker.fit(rows, labels, version="t3").to_dict()
    change(data)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RankerFileError, match=message):
        AlarmRanker.load(path)


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{not json")
    (tmp_path / "b.json").write_text("[1, 2]")
    for name in ("a.json", "b.json", "missing.json"):
        with pytest.raises(RankerFileError):
            AlarmRanker.load(tmp_path / name)


def test_fit_needs_both_classes() -> None:
    rows, _ = _data(10)
    with pytest.raises(ValueError, match="both classes"):
        AlarmRanker.fit(rows, [0] * len(rows), version="t4")


def test_the_shipped_ranker_loads_and_scores_in_range() -> None:
    ranker = AlarmRanker.load(SHIPPED)
    assert ranker.version == "alarm-ranker-v1"
    assert {"window_days", "history_days", "candidates", "validation"} <= set(ranker.meta)
    score = ranker.score_one({"count": 8, "exposure": 40, "peer_count": 50, "peer_exposure": 5000})
    assert 0.0 <= score <= 1.0
