"""A scikit-learn model that ranks candidate alarms by how likely they are to end in a recall.

Not a detector: it never decides that a key stands out, it orders what the detectors raised, so a
quality team reads the likeliest recall first. Trained offline on labelled history
(``recallwatch train-ranker``), saved as a versioned JSON file, loaded by the worker.

Why JSON and not a pickle: a pickle runs code when loaded and ties the file to one scikit-learn
version; the model here is a standardiser and a logistic regression, a few dozen numbers, so the
file is those numbers, readable and diffable, and loading rebuilds the same scikit-learn pipeline.
The file names its format version and the feature list it was trained on; a file whose features
differ from :data:`core.ranking.FEATURES` is refused rather than silently misread.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from core.ranking import FEATURES, alarm_features
from models.base import Observation

FORMAT = "recallwatch-alarm-ranker/1"


class RankerFileError(ValueError):
    """A ranker file that cannot be used: wrong format, other features, broken numbers."""


class AlarmRanker:
    """Probability that a candidate alarm is followed by a recall of its key within a year.

    >>> rows = [[float(i % 7), float(i % 3)] + [0.0] * (len(FEATURES) - 2) for i in range(60)]
    >>> labels = [int(r[0] + r[1] > 6) for r in rows]
    >>> ranker = AlarmRanker.fit(rows, labels, version="doc-1")
    >>> low = ranker.score_features(rows[0]); high = ranker.score_features(rows[6 * 7 - 1])
    >>> 0.0 <= low < high <= 1.0
    True
    >>> AlarmRanker.from_dict(ranker.to_dict()).score_features(rows[5]) == ranker.score_features(rows[5])
    True
    """

    name = "alarm_ranker"

    def __init__(self, pipeline: Pipeline, version: str, meta: Mapping[str, Any] | None = None) -> None:
        self.pipeline = pipeline
        self.version = version
        self.meta = dict(meta or {})

    @classmethod
    def fit(
        cls,
        rows: Sequence[Sequence[float]],
        labels: Sequence[int],
        *,
        version: str,
        c: float = 1.0,
        meta: Mapping[str, Any] | None = None,
    ) -> AlarmRanker:
        """Fit on feature rows (:func:`core.ranking.alarm_features`) and 0/1 labels."""
        if len(rows) != len(labels) or len(set(labels)) < 2:
            raise ValueError("need as many labels as rows, and both classes among them")
        # Recalls are rare among candidates: balanced weights keep them from being ignored.
        pipeline = Pipeline(
            [
                ("scale", StandardScaler()),
                ("logit", LogisticRegression(C=c, class_weight="balanced", max_iter=2000)),
            ]
        )
        pipeline.fit(np.asarray(rows, dtype=float), np.asarray(labels, dtype=int))
        return cls(pipeline, version, meta)

    def score_features(self, features: Sequence[float]) -> float:
        row = np.asarray([features], dtype=float)
        return float(self.pipeline.predict_proba(row)[0, 1])

    def score_one(self, x: Observation) -> float:
        """Rank of one candidate alarm, read from the observation its detector saw."""
        return self.score_features(alarm_features(x))

    def score_many(self, rows: Sequence[Sequence[float]]) -> list[float]:
        if not rows:
            return []
        return [float(p) for p in self.pipeline.predict_proba(np.asarray(rows, dtype=float))[:, 1]]

    def coefficients(self) -> dict[str, float]:
        """Each feature's weight on standardised input: what the ranker learned to value."""
        logit: LogisticRegression = self.pipeline.named_steps["logit"]
        return {name: round(float(w), 4) for name, w in zip(FEATURES, logit.coef_[0], strict=True)}

    def to_dict(self) -> dict[str, Any]:
        scale: StandardScaler = self.pipeline.named_steps["scale"]
        logit: LogisticRegression = self.pipeline.named_steps["logit"]
        return {
            "format": FORMAT,
            "version": self.version,
            "features": list(FEATURES),
            "scaler": {"mean": [float(v) for v in scale.mean_], "scale": [float(v) for v in scale.scale_]},
            "logit": {
                "coef": [float(v) for v in logit.coef_[0]],
                "intercept": float(logit.intercept_[0]),
                "C": float(logit.C),
            },
            "trained_with": {"scikit-learn": sklearn.__version__},
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlarmRanker:
        if data.get("format") != FORMAT:
            raise RankerFileError(f"not a ranker file of format {FORMAT!r}: {data.get('format')!r}")
        if list(data.get("features", ())) != list(FEATURES):
            raise RankerFileError(
                f"ranker trained on features {data.get('features')!r}, this version reads {list(FEATURES)!r}"
            )
        try:
            mean = [float(v) for v in data["scaler"]["mean"]]
            scale_ = [float(v) for v in data["scaler"]["scale"]]
            coef = [float(v) for v in data["logit"]["coef"]]
            intercept = float(data["logit"]["intercept"])
            c = float(data["logit"].get("C", 1.0))
            version = str(data["version"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RankerFileError(f"ranker file is missing or has a bad value: {exc}") from None
        n = len(FEATURES)
        numbers = [*mean, *scale_, *coef, intercept]
        if not (len(mean) == len(scale_) == len(coef) == n) or not all(map(math.isfinite, numbers)):
            raise RankerFileError(f"ranker file needs {n} finite means, scales and weights")
        if any(s <= 0 for s in scale_):
            raise RankerFileError("ranker file has a non-positive scale")
        scaler = StandardScaler()
        scaler.mean_ = np.asarray(mean)
        scaler.scale_ = np.asarray(scale_)
        scaler.var_ = scaler.scale_**2
        scaler.n_features_in_ = n
        scaler.n_samples_seen_ = int(data.get("meta", {}).get("candidates", 0))
        logit = LogisticRegression(C=c, class_weight="balanced")
        logit.coef_ = np.asarray([coef])
        logit.intercept_ = np.asarray([intercept])
        logit.classes_ = np.asarray([0, 1])
        logit.n_features_in_ = n
        return cls(Pipeline([("scale", scaler), ("logit", logit)]), version, data.get("meta", {}))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> AlarmRanker:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RankerFileError(f"cannot read ranker file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise RankerFileError(f"{path}: a ranker file is a JSON object")
        return cls.from_dict(data)
