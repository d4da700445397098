"""The peer scan in the worker: the leader compares every key with its peers, on a timer.

Only the leader scans (Faust elects one worker), so N workers do not scan N times; if the leader
dies, the next one restores open episodes from the alerts table and scans on. A scan reads the
counts of every key from ClickHouse, so an outage only postpones it: the next tick covers the same
events. Alerts are written to ClickHouse and then sent on the alerts topic keyed by case, like the
cells' alerts, so cases, ranking and Slack treat both alike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
import orjson

from config.settings import Settings
from core.alerts import Alert
from core.peer_scan import PeerScan, peer_observations
from recallwatch.backtest import BacktestConfig
from recallwatch.case_desk import CaseDesk
from sinks.alarm_context import AlarmContext
from sinks.clickhouse import ClickHouseStore
from streams.case_agents import case_key
from streams.processing import alert_from_row, alert_row

log = logging.getLogger("recallwatch.peers")
DAY = 86_400


def peer_scan_from(settings: Settings) -> tuple[PeerScan, BacktestConfig] | None:
    """The scan the settings ask for (the backtest config's detector and windows), or None."""
    if not settings.peers.config_file:
        return None
    config = BacktestConfig.load(Path(settings.peers.config_file))  # a bad file stops the worker now
    if config.engine != "peers":
        raise ValueError(f"{settings.peers.config_file}: the peer scan needs engine = 'peers'")
    scan = PeerScan(
        config.detector, dict(config.params), window_s=config.window_days * DAY,
        cooldown_s=settings.peers.cooldown_days * DAY, config_version=f"peers:{config.digest()}",
    )  # fmt: skip
    return scan, config


class PeerScanner:
    """One scan at a time: restore episodes once, read every key's counts, run the detector."""

    def __init__(self, scan: PeerScan, context: AlarmContext, store: ClickHouseStore, desk: CaseDesk) -> None:
        self.scan, self.context, self.store, self.desk = scan, context, store, desk
        self.restored = False

    def run_once(self) -> list[Alert]:
        """Alerts to write and send: new ones, and after a restore any written but never sent.

        Blocking (ClickHouse and the case book are read): call it off the event loop.
        """
        unsent = [] if self.restored else self._restore()
        at = self.context.latest_event_time()
        if at <= self.scan.last_at:
            return unsent
        counts = self.context.key_counts(at)
        alerts = self.scan.scan(peer_observations(counts, at), at, self.desk.recalls_on)
        log.info("peer scan at %d: %d keys, %d new alerts", at, len(counts), len(alerts))
        return unsent + alerts

    def _restore(self) -> list[Alert]:
        """Pick up the episodes earlier scans opened; return their alerts that no case holds.

        An alert's row is written before its message is sent, and the row is what re-opens its
        episode here. A leader that died between the two (or a send that failed) would otherwise
        leave the alert on no case and its key silent for the whole cooldown. One that is still on
        its way is sent twice; the case desk takes the second for the duplicate it is.
        """
        rows = self.store.query(
            "SELECT * FROM alerts FINAL WHERE config_version = {v} ORDER BY opened_at, alert_id",
            {"v": self.scan.config_version},
        )
        self.scan.restore(rows)
        self.restored = True
        unsent = [alert_from_row(row) for row in self.desk.unheld(rows)]
        if unsent:
            log.warning("peer scan: %d alerts written but on no case, sending them again", len(unsent))
        return unsent


def add_peer_scan(
    app: faust.App,
    settings: Settings,
    store: ClickHouseStore,
    desk: CaseDesk,
    alerts_topic: Any,
    retry: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]],
    clock: Callable[[], float],
) -> None:
    made = peer_scan_from(settings)
    if made is None:
        return
    scan, config = made
    scanner = PeerScanner(scan, AlarmContext(store, config.window_days, config.history_days), store, desk)

    @app.timer(settings.peers.interval_s, on_leader=True)
    async def peer_scan() -> None:
        try:
            alerts = await asyncio.to_thread(scanner.run_once)
        except Exception as exc:  # ClickHouse down: the next tick scans the same events
            log.warning("peer scan postponed: %r", exc)
            return
        for alert in alerts:
            log.info(
                "peer alert %s on %s/%s/%s", alert.alert_id, alert.model, alert.batch, alert.failure_mode
            )
            row = alert_row(alert, clock())
            await retry("alert insert", lambda r=row: asyncio.to_thread(store.insert, "alerts", [r]))
            try:
                confirmation = await alerts_topic.send(
                    key=case_key(alert), value=orjson.dumps(alert.to_dict())
                )
                await confirmation  # confirmed by the broker, or sent again by the next tick
            except Exception:
                scanner.restored = False  # the next tick sends again what no case holds
                raise
