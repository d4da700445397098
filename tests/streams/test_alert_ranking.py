"""Ranking a new alert: live context from ClickHouse, related recalls from the cases, best effort."""

from __future__ import annotations

import asyncio
import itertools
import socket
from pathlib import Path

import pytest

from cases.commands import Command
from cases.risk import DEFAULT_MATRIX
from cases.view import view_to_dict
from config.settings import load_settings
from core.peers import DAY
from models.alarm_ranker import AlarmRanker
from recallwatch.case_desk import CaseDesk
from sinks.alarm_context import AlarmContext
from sinks.case_store import CaseStore
from sinks.clickhouse import ClickHouseStore, open_store
from sinks.slack_messages import root_message
from streams.alert_ranking import AlertRanking
from streams.app import alert_ranking
from streams.processing import event_row
from streams.records import Event

pytestmark = pytest.mark.integration
T0 = 1_700_000_000
SHIPPED = Path(__file__).resolve().parents[2] / "config" / "ranker" / "alarm-ranker-v1.json"
ALERT = {"alert_id": "a1", "model": "KT-100", "batch": "B05", "failure_mode": "heating_element",
         "opened_at": T0 + 60 * DAY, "count": 12, "expected": 2.5, "detector": "poisson_cusum"}  # fmt: skip


class _Src:
    partition, timestamp, value = 0, 0.0, None

    def __init__(self, offset: int) -> None:
        self.offset = offset


def _complaints(store: ClickHouseStore) -> None:
    rows = []
    for i in range(40):  # the alerting cell: heating elements, a third with a crash
        event = Event.model_validate(
            {"event_id": f"h{i}", "kind": "complaint", "occurred_at": T0 + i * DAY, "model": "KT-100",
             "batch": "B05", "failure_mode": "heating_element", "severity": {"crash": i % 3 == 0}}
        )  # fmt: skip
        rows.append(event_row(event, _Src(i), T0))
    for i in range(60):  # the fleet: other batches, other modes
        event = Event.model_validate(
            {"event_id": f"p{i}", "kind": "complaint", "occurred_at": T0 + i * DAY, "model": "KT-100",
             "batch": f"B0{i % 3}", "failure_mode": "heating_element" if i % 4 == 0 else "door"}
        )  # fmt: skip
        rows.append(event_row(event, _Src(100 + i), T0))
    store.insert("events", rows)


def _desk(store: ClickHouseStore) -> CaseDesk:
    ticks = itertools.count(1_000)
    return CaseDesk(CaseStore(store), DEFAULT_MATRIX, clock=lambda: float(next(ticks)))


def _recall_case_on_another_batch(desk: CaseDesk) -> None:
    (opened,) = desk.on_alert({**ALERT, "alert_id": "old", "batch": "B01"}, at=10.0)
    cid = opened.case_id
    desk.run(Command("k1", cid, "assess", "ana", 20.0, "triage"))
    for i, dim in enumerate(("severity", "scope", "legal", "brand")):
        desk.run(Command(f"s{i}", cid, "score", "ana", 30.0 + i, "x", {"dimension": dim, "value": 4}))
    result, _ = desk.run(Command("k2", cid, "decide", "ana", 40.0, "fires", {"decision": "recall"}))
    assert result.status == "ok", result


def test_an_alert_is_ranked_from_its_context_and_the_case_shows_it(store: ClickHouseStore) -> None:
    _complaints(store)
    desk = _desk(store)
    ranker = AlarmRanker.load(SHIPPED)
    ranking = AlertRanking(ranker, AlarmContext(store, 120, 3650), desk.recalls_on)
    before = asyncio.run(ranking.rank(ALERT))
    _recall_case_on_another_batch(desk)
    assert desk.recalls_on("KT-100", "heating_element", "B05") == 1
    assert desk.recalls_on("KT-100", "heating_element", "B01") == 0  # its own batch is not "related"
    rank = asyncio.run(ranking.rank(ALERT))
    assert rank["ranker"] == "alarm-ranker-v1" and 0.0 <= rank["score"] <= 1.0
    assert rank["features"]["crash_share"] == pytest.approx(round(14 / 40, 4))
    assert rank["features"]["log_related_recalls"] > 0 == before["features"]["log_related_recalls"]
    assert rank["score"] > before["score"]  # a recall of the component elsewhere raises the likelihood

    (event,) = desk.on_alert({**ALERT, "rank": rank}, at=100.0)
    case = view_to_dict(desk.view(event.case_id))
    assert case["rank"] == {"score": rank["score"], "ranker": "alarm-ranker-v1"}
    _, blocks = root_message(case, "http://x/cases/1")
    facts = " ".join(f["text"] for b in blocks if b["type"] == "section" for f in b["fields"])
    assert f"Recall likelihood*\n{rank['score']:.0%} (ranker alarm-ranker-v1)" in facts


def test_an_unreachable_clickhouse_leaves_the_alert_unranked_not_held(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on: the server is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = open_store(f"clickhouse://127.0.0.1:{port}/db", tmp_path)
    ranking = AlertRanking(AlarmRanker.load(SHIPPED), AlarmContext(down, 120, 3650), lambda m, f, b: 0)
    rank = asyncio.run(ranking.rank(ALERT))
    assert rank["score"] is None and rank["ranker"] == "alarm-ranker-v1" and "not ranked" in rank["error"]
    down.close()


def test_the_worker_loads_the_configured_ranker_or_none(store: ClickHouseStore, tmp_path: Path) -> None:
    desk = _desk(store)
    shipped = alert_ranking(load_settings(), store, desk)
    assert shipped is not None and shipped.ranker.version == "alarm-ranker-v1"
    assert shipped.context.window_s == shipped.ranker.meta["window_days"] * DAY
    assert alert_ranking(load_settings(ranking={"ranker_file": ""}), store, desk) is None
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="format"):  # a bad file stops the worker at start
        alert_ranking(load_settings(ranking={"ranker_file": str(tmp_path / "bad.json")}), store, desk)


def test_an_alert_is_ranked_once_the_events_that_raised_it_are_written(store: ClickHouseStore) -> None:
    """The worker sends an alert before the next flush writes its batch's rows: the rank waits for
    the trigger's row, so it reads the alarming events and not whatever was flushed so far."""
    _complaints(store)
    desk = _desk(store)
    ranker = AlarmRanker.load(SHIPPED)
    waiting = AlertRanking(ranker, AlarmContext(store, 120, 3650), desk.recalls_on, flush_wait_s=30)
    at_once = AlertRanking(ranker, AlarmContext(store, 120, 3650), desk.recalls_on)
    unflushed = []
    for i in range(8):  # the alarming bucket's last complaints; the last one closed it
        event = Event.model_validate(
            {"event_id": f"late{i}", "kind": "complaint", "occurred_at": T0 + (50 + i) * DAY,
             "model": "KT-100", "batch": "B05", "failure_mode": "heating_element"}
        )  # fmt: skip
        unflushed.append(event_row(event, _Src(500 + i), T0))
    alert = {**ALERT, "trigger_event_id": "late7"}

    async def flush_while_ranking() -> tuple[dict, dict]:
        ranked = asyncio.create_task(waiting.rank(alert))
        early = await at_once.rank(alert)  # no wait: misses the unflushed events
        await asyncio.sleep(0.3)
        assert not ranked.done()  # still waiting for the trigger's row
        await asyncio.to_thread(store.insert, "events", unflushed)  # the flush
        return early, await ranked

    early, ranked = asyncio.run(flush_while_ranking())
    assert ranked["score"] is not None and ranked["features"] != early["features"]
    assert ranked == asyncio.run(at_once.rank(alert))  # what ranking after the flush gives


def test_an_alert_whose_trigger_never_shows_is_ranked_on_what_is_there(store: ClickHouseStore) -> None:
    _complaints(store)
    desk = _desk(store)
    ranking = AlertRanking(
        AlarmRanker.load(SHIPPED), AlarmContext(store, 120, 3650), desk.recalls_on, flush_wait_s=0.2
    )
    ranked = asyncio.run(ranking.rank({**ALERT, "trigger_event_id": "never-written"}))
    assert ranked["score"] is not None and ranked == asyncio.run(ranking.rank(ALERT))
