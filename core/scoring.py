"""How early and how precisely alarms foresee recalls: the backtest's scoring rules.

A *key* is (model, batch, component). Definitions (the same as ../shared/eval/score_backtest.py,
implemented here independently and held to the same answers by a test):

- positive: a distinct (key, recall date) with at least ``min_prior`` events of that key in the
  365 days before the recall (a recall the data could have foreseen);
- caught early: some alarm on the key at t with ``recall - 365 d <= t < recall``; its lead is
  ``recall - earliest such alarm`` in whole days;
- alarm episodes: per key, an alarm within 90 days after the last *counted* one folds into it;
- precision: the share of episodes followed by a recall of the same key within 365 days
  (``t <= recall <= t + 365 d``).

Times are epoch seconds (naive dates read as UTC), so this module needs no calendar.
"""

from __future__ import annotations

import bisect
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

DAY = 86_400
YEAR = 365 * DAY
FOLD = 90 * DAY
Key = tuple[str, str, str]


@dataclass(frozen=True)
class Score:
    positives: int
    caught_early: int
    median_lead_days: float | None
    alarm_episodes: int
    hits: int

    @property
    def caught_early_rate(self) -> float | None:
        return round(self.caught_early / self.positives, 4) if self.positives else None

    @property
    def precision(self) -> float | None:
        return round(self.hits / self.alarm_episodes, 4) if self.alarm_episodes else None

    def as_dict(self) -> dict[str, object]:
        return {
            "positives": self.positives,
            "caught_early": self.caught_early,
            "caught_early_rate": self.caught_early_rate,
            "median_lead_days": self.median_lead_days,
            "alarm_episodes": self.alarm_episodes,
            "precision": self.precision,
        }


def episodes(times: Iterable[float]) -> list[float]:
    """Alarm times that start an episode (the rest fold into the one before them).

    >>> [t // DAY for t in episodes([0, 10 * DAY, 100 * DAY, 150 * DAY, 200 * DAY])]
    [0, 100, 200]
    """
    kept: list[float] = []
    for t in sorted(times):
        if not kept or t - kept[-1] > FOLD:
            kept.append(t)
    return kept


def score(
    events: Mapping[Key, Sequence[float]],
    recalls: Mapping[Key, Iterable[float]],
    alarms: Mapping[Key, Sequence[float]],
    min_prior: int = 5,
) -> Score:
    """Score alarms per key against recalls; ``events`` are each key's event times."""
    leads: list[int] = []
    positives = 0
    for key, dates in recalls.items():
        times = sorted(events.get(key, ()))
        for d in sorted(set(dates)):
            prior = bisect.bisect_left(times, d) - bisect.bisect_left(times, d - YEAR)
            if prior < min_prior:
                continue
            positives += 1
            early = [t for t in alarms.get(key, ()) if d - YEAR <= t < d]
            if early:
                leads.append(int((d - min(early)) // DAY))
    n_episodes = hits = 0
    for key, alarm_times in alarms.items():
        recall_dates = sorted(set(recalls.get(key, ())))
        for t in episodes(alarm_times):
            n_episodes += 1
            i = bisect.bisect_left(recall_dates, t)
            hits += i < len(recall_dates) and recall_dates[i] <= t + YEAR
    return Score(positives, len(leads), statistics.median(leads) if leads else None, n_episodes, hits)


def by_key(rows: Iterable[tuple[Key, float]]) -> dict[Key, list[float]]:
    out: dict[Key, list[float]] = defaultdict(list)
    for key, t in rows:
        out[key].append(t)
    return dict(out)
