"""Train the alarm ranker from labelled history and say honestly how well it ranks.

Candidates are the incidents at which a key's trailing count reaches ``min_count`` (the naive
rule's alarms: broad, so the ranker sees many keys that were recalled and many that were not). A
candidate is positive when a recall of its key follows within a year (the scorer's hit rule).
Labels need a year to mature, so candidates in the last year of the data are left out.

Validation is out of time, as the ranker will be used: fit on candidates whose labels had matured
before ``validate_from`` and score the candidates after it, among all candidates and among the
configured detector's own alarms, as ROC AUC (0.5 = no better than chance) and the precision of the
top-ranked fifth against all. The shipped ranker is then fitted on every matured candidate.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sklearn.metrics import roc_auc_score

from core.ranking import alarm_features
from core.scoring import YEAR, Key
from models.alarm_ranker import AlarmRanker
from recallwatch.backtest import BacktestConfig, HistoryEvent, observations


@dataclass(frozen=True)
class Candidate:
    t: int
    key: Key
    features: list[float]
    detector_alarm: bool
    label: int


def recall_follows(recall_dates: list[int], t: int) -> int:
    """1 when a recall date falls in ``[t, t + 365 d]`` (``recall_dates`` sorted), else 0.

    >>> recall_follows([100, 10 * YEAR], 50), recall_follows([100], 101), recall_follows([], 0)
    (1, 0, 0)
    """
    i = bisect.bisect_left(recall_dates, t)
    return int(i < len(recall_dates) and recall_dates[i] <= t + YEAR)


def candidates(
    events: list[HistoryEvent], truth: dict[Key, list[int]], config: BacktestConfig, min_count: int
) -> list[Candidate]:
    recall_dates = {key: sorted(set(dates)) for key, dates in truth.items()}
    out = []
    for e, x, score in observations(events, truth, config):
        if x["count"] >= min_count:
            key = (e.model, e.batch, e.component)
            out.append(
                Candidate(
                    e.t, key, alarm_features(x), score >= 1.0, recall_follows(recall_dates.get(key, []), e.t)
                )
            )
    return out


def _quality(ranker: AlarmRanker, test: list[Candidate]) -> dict[str, Any]:
    labels = [c.label for c in test]
    if len(set(labels)) < 2:
        return {"candidates": len(test), "positives": sum(labels), "roc_auc": None}
    scores = ranker.score_many([c.features for c in test])
    ranked = sorted(zip(scores, labels, strict=True), reverse=True)
    top = ranked[: max(1, len(ranked) // 5)]
    return {
        "candidates": len(test),
        "positives": sum(labels),
        "roc_auc": round(float(roc_auc_score(labels, scores)), 3),
        "precision_all": round(sum(labels) / len(labels), 3),
        "precision_top_fifth": round(sum(label for _, label in top) / len(top), 3),
    }


def validate(
    all_candidates: list[Candidate], validate_from: int, matured_by: int, c: float
) -> dict[str, Any]:
    """Fit before ``validate_from`` (labels matured), score after: the ranker as it will be used.
    Test candidates after ``matured_by`` are left out: their recall may not have come yet."""
    train = [x for x in all_candidates if x.t < validate_from - YEAR]
    test = [x for x in all_candidates if validate_from <= x.t <= matured_by]
    if len({x.label for x in train}) < 2:
        return {"error": "no recall among the candidates before the validation split"}
    ranker = AlarmRanker.fit([x.features for x in train], [x.label for x in train], version="validation", c=c)
    return {
        "from": datetime.fromtimestamp(validate_from, UTC).date().isoformat(),
        "train_candidates": len(train),
        "train_positives": sum(x.label for x in train),
        "all_candidates": _quality(ranker, test),
        "detector_alarms": _quality(ranker, [x for x in test if x.detector_alarm]),
    }


def file_digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def train(
    events: list[HistoryEvent],
    truth: dict[Key, list[int]],
    config: BacktestConfig,
    *,
    version: str,
    min_count: int = 3,
    validate_from: int | None = None,
    c: float = 1.0,
    meta: dict[str, Any] | None = None,
) -> tuple[AlarmRanker, dict[str, Any]]:
    """The ranker fitted on every matured candidate, and its out-of-time validation report."""
    found = candidates(events, truth, config, min_count)
    if not found:
        raise ValueError(f"no key reached a trailing count of {min_count}: nothing to learn from")
    matured_by = events[-1].t - YEAR
    matured = [x for x in found if x.t <= matured_by]
    if len({x.label for x in matured}) < 2:
        raise ValueError("the matured candidates need both recalled and unrecalled keys")
    report: dict[str, Any] = {
        "candidates": len(matured),
        "positives": sum(x.label for x in matured),
        "min_count": min_count,
        "window_days": config.window_days,
        "history_days": config.history_days,
    }
    if validate_from is not None:
        report["validation"] = validate(found, validate_from, matured_by, c)
    ranker = AlarmRanker.fit(
        [x.features for x in matured], [x.label for x in matured], version=version, c=c,
        meta={**report, **(meta or {})},
    )  # fmt: skip
    report["coefficients"] = ranker.coefficients()
    return ranker, report
