"""Rank each new alert with the trained alarm ranker before its case opens.

The rank orders the quality team's work (the case, its Slack root message and the case list show
it); it never holds an alert back. So ranking is best effort: when ClickHouse cannot answer in
time the alert goes on with a rank that says why it has no score, and the next alert of the case
is ranked again. A replayed alert finds its case already holding it, so its first rank stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from core.ranking import FEATURES, alarm_features
from models.alarm_ranker import AlarmRanker
from sinks.alarm_context import AlarmContext

log = logging.getLogger("recallwatch.ranking")


class AlertRanking:
    def __init__(
        self,
        ranker: AlarmRanker,
        context: AlarmContext,
        related_recalls: Callable[[str, str, str], int],
        timeout_s: float = 5.0,
        flush_wait_s: float = 0.0,
        poll_s: float = 0.05,
    ) -> None:
        self.ranker = ranker
        self.context = context
        self.related_recalls = related_recalls
        self.timeout_s = timeout_s
        self.flush_wait_s = flush_wait_s
        self.poll_s = poll_s

    def rank_now(self, alert: Mapping[str, Any]) -> dict[str, Any]:
        """The rank of one alert (blocking: ClickHouse and the case book are read)."""
        model, batch, mode = str(alert["model"]), str(alert["batch"]), str(alert["failure_mode"])
        x = self.context.observation(model, batch, mode, float(alert["opened_at"]))
        x["related_recalls"] = float(self.related_recalls(model, mode, batch))
        features = alarm_features(x)
        return {
            "score": round(self.ranker.score_features(features), 4),
            "ranker": self.ranker.version,
            "features": {name: round(v, 4) for name, v in zip(FEATURES, features, strict=True)},
        }

    async def rank(self, alert: Mapping[str, Any]) -> dict[str, Any]:
        try:
            await self._until_written(alert)
            return await asyncio.wait_for(asyncio.to_thread(self.rank_now, alert), self.timeout_s)
        except Exception as exc:  # ClickHouse down or slow: the alert goes on unranked
            log.warning("could not rank alert %s: %r", alert.get("alert_id"), exc)
            return {"score": None, "ranker": self.ranker.version, "error": f"not ranked: {exc!r}"[:300]}

    async def _until_written(self, alert: Mapping[str, Any]) -> None:
        """Wait (at most ``flush_wait_s``) for the row of the event that raised the alert.

        The worker sends an alert as soon as its batch is processed but writes the batch's rows at
        the next flush, so the context read at once could miss the alarming bucket's own events,
        and the rank, kept for good as the case's first, would depend on flush timing. Rows are
        written a flush at a time in event order: once the trigger's is there, so are the cell's
        earlier ones. Past the wait the alert is ranked on what is there.
        """
        trigger = str(alert.get("trigger_event_id") or "")
        if not trigger or self.flush_wait_s <= 0:
            return
        model, batch = str(alert["model"]), str(alert["batch"])
        deadline = asyncio.get_running_loop().time() + self.flush_wait_s
        while not await asyncio.to_thread(self.context.holds_event, model, batch, trigger):
            if asyncio.get_running_loop().time() >= deadline:
                log.warning(
                    "ranking alert %s before its trigger %s is written", alert.get("alert_id"), trigger
                )
                return
            await asyncio.sleep(self.poll_s)
