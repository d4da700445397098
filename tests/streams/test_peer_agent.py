"""The worker's peer scan: the backtest's tuned detector, live, over every key in ClickHouse."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from cases.commands import Command
from cases.risk import DEFAULT_MATRIX
from config.settings import load_settings
from core.peers import DAY
from recallwatch.case_desk import CaseDesk
from sinks.alarm_context import AlarmContext
from sinks.case_store import CaseStore
from sinks.clickhouse import ClickHouseStore
from streams.peer_agent import PeerScanner, peer_scan_from
from streams.processing import alert_row, event_row
from streams.records import Event

pytestmark = pytest.mark.integration
T0 = 1_700_000_000


class _Src:
    partition, timestamp, value = 0, 0.0, None

    def __init__(self, offset: int) -> None:
        self.offset = offset


def _complaints(store: ClickHouseStore, rows: list[tuple[int, str, str]], start: int = 0) -> None:
    out = []
    for i, (day, batch, mode) in enumerate(rows, start):
        event = Event.model_validate(
            {"event_id": f"e{i}", "kind": "complaint", "occurred_at": T0 + day * DAY, "model": "KT",
             "batch": batch, "failure_mode": mode}
        )  # fmt: skip
        out.append(event_row(event, _Src(i), T0))
    store.insert("events", out)


def _fleet() -> list[tuple[int, str, str]]:
    """A year of background complaints over four batches, then brakes surge in B2 from day 300."""
    days = range(0, 360, 2)
    background = [(d, f"B{1 + i % 4}", "door" if i % 3 else "brakes") for i, d in enumerate(days)]
    surge = [(300 + d, "B2", "brakes") for d in range(0, 40, 2)]
    return sorted(background + surge)


def _desk(store: ClickHouseStore) -> CaseDesk:
    ticks = itertools.count(1_000)
    return CaseDesk(CaseStore(store), DEFAULT_MATRIX, clock=lambda: float(next(ticks)))


def _recall_brakes_in_b1(desk: CaseDesk) -> None:
    (opened,) = desk.on_alert(
        {"alert_id": "old", "model": "KT", "batch": "B1", "failure_mode": "brakes"}, 1.0
    )
    for i, (kind, args) in enumerate([("assess", {}), ("decide", {"decision": "recall"})]):
        assert desk.run(Command(f"k{i}", opened.case_id, kind, "qm", 2.0 + i, "r", args))[0].status == "ok"


def _scanner(store: ClickHouseStore, desk: CaseDesk) -> PeerScanner:
    made = peer_scan_from(load_settings())
    assert made is not None
    scan, config = made
    return PeerScanner(scan, AlarmContext(store, config.window_days, config.history_days), store, desk)


def test_the_shipped_backtest_config_runs_live() -> None:
    made = peer_scan_from(load_settings())
    assert made is not None
    scan, config = made
    assert scan.detector == "disproportionality" and dict(scan.params) == dict(config.params)
    assert scan.window_s == config.window_days * DAY and scan.config_version.startswith("peers:")
    assert peer_scan_from(load_settings(peers={"config_file": ""})) is None


def test_a_config_for_the_cells_engine_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bt.toml").write_text('[backtest]\nengine = "cells"\n')
    with pytest.raises(ValueError, match="engine = 'peers'"):
        peer_scan_from(load_settings(peers={"config_file": str(tmp_path / "bt.toml")}))


def test_a_surge_next_to_a_recalled_batch_alerts_once_per_episode(store: ClickHouseStore) -> None:
    _complaints(store, _fleet())
    desk = _desk(store)
    scanner = _scanner(store, desk)
    # The tuned config alarms only on a component already recalled on the model: none yet.
    assert scanner.run_once() == []
    _recall_brakes_in_b1(desk)
    _complaints(store, [(365, "B3", "door")], start=10_000)  # time moves on
    (alert,) = scanner.run_once()
    assert (alert.model, alert.batch, alert.failure_mode) == ("KT", "B2", "brakes")
    assert alert.detector == "disproportionality" and alert.config_version == scanner.scan.config_version
    assert alert.detector_params["need_related_recall"] is True
    assert scanner.run_once() == []  # nothing new since
    store.insert("alerts", [alert_row(alert, T0)])
    _complaints(store, [(367, "B3", "door")], start=10_001)
    assert scanner.run_once() == []  # the episode goes on

    # The leader dies after writing the alert's row, before its message reached the case desk.
    restarted = _scanner(store, desk)  # a new leader: it restores the episode, no second alert ...
    _complaints(store, [(369, "B3", "door")], start=10_002)
    assert restarted.run_once() == [alert]  # ... but sends the alert no case holds again
    assert restarted.scan.episodes[("KT", "B2", "brakes")].alert_id == alert.alert_id
    assert restarted.run_once() == []

    desk.on_alert(alert.to_dict(), at=T0)  # the case desk takes it
    again = _scanner(store, desk)
    _complaints(store, [(371, "B3", "door")], start=10_003)
    assert again.run_once() == []  # on its case: nothing to send
