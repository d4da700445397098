"""Backtest and tuning: causality, agreement with the reference scorer, the CLI, real-data targets."""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.scoring import DAY, score
from recallwatch import tune
from recallwatch.backtest import (
    DEFAULT_CONFIG,
    BacktestConfig,
    HistoryEvent,
    read_events,
    read_truth,
    run,
    score_alarms,
    write_alarms,
)

ROOT = Path(__file__).resolve().parents[2]
NHTSA = ROOT.parent / "shared" / "data" / "nhtsa-dev"
REFERENCE = ROOT.parent / "shared" / "eval" / "score_backtest.py"
START = datetime(2020, 1, 1, tzinfo=UTC)


def synthetic(tmp_path: Path, seed: int = 3) -> tuple[Path, Path]:
    """Three models x four batches x five components of background complaints; one key surges
    and is recalled after a related recall on the same model and component."""
    rng = random.Random(seed)
    rows, n = [], 0
    for model in ("A", "B", "C"):
        for batch in ("2019", "2020", "2021", "2022"):
            for comp in ("ENGINE", "BRAKES", "SEATS", "LIGHTS", "WIPERS"):
                day = rng.uniform(0, 20)
                while day < 900:
                    rows.append((START + timedelta(days=day), model, batch, comp))
                    day += rng.expovariate(1 / 25)
    for i in range(30):  # the defect: A/2021/BRAKES from day 500
        rows.append((START + timedelta(days=500 + i * 3), "A", "2021", "BRAKES"))
    rows.sort()
    events = tmp_path / "events.csv"
    with events.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["event_id", "kind", "occurred_at", "model", "batch", "component", "crash", "fire",
                    "injuries", "deaths"])  # fmt: skip
        for t, model, batch, comp in rows:
            n += 1
            w.writerow([f"{n}:{comp}", "complaint", t.date().isoformat(), model, batch, comp, 0, 0, 0, 0])
    truth = tmp_path / "truth.csv"
    truth.write_text(
        "campaign,model,batch,component,recall_date\n"
        "R1,A,2020,BRAKES,2021-03-01\n"
        "R2,A,2021,BRAKES,2021-09-01\n"
    )
    return events, truth


def test_cutting_the_events_at_d_keeps_every_alarm_before_d(tmp_path: Path) -> None:
    events_path, truth_path = synthetic(tmp_path)
    events, truth = read_events(events_path), read_truth(truth_path)
    for config in (
        BacktestConfig.load(DEFAULT_CONFIG),
        dataclasses.replace(BacktestConfig(), engine="cells"),
    ):
        full = run(events, truth, config)
        for cut_day in (300, 520, 700):
            cut = int((START + timedelta(days=cut_day)).timestamp())
            part = run([e for e in events if e.t < cut], truth, config)
            assert [a for a in full if a.alarm_at < cut] == part
        assert run(events, truth, config) == full  # and a rerun repeats exactly


def test_the_surge_is_caught_before_its_recall(tmp_path: Path) -> None:
    events_path, truth_path = synthetic(tmp_path)
    events, truth = read_events(events_path), read_truth(truth_path)
    alarms = run(events, truth, BacktestConfig.load(DEFAULT_CONFIG))
    surge = [a for a in alarms if a.key == ("A", "2021", "BRAKES")]
    recall = int(datetime(2021, 9, 1, tzinfo=UTC).timestamp())
    assert surge and min(a.alarm_at for a in surge) < recall - 90 * DAY
    assert score_alarms(events, truth, alarms).caught_early == 1


def test_scoring_rules_on_a_small_case() -> None:
    key = ("M", "B", "C")
    events = {key: [d * DAY for d in range(100, 110)]}
    recalls = {key: [400 * DAY]}
    # Alarms at day 20 (more than a year before the recall), 120 and 150 (one episode), 300.
    alarms = {key: [20 * DAY, 120 * DAY, 150 * DAY, 300 * DAY], ("M", "B", "X"): [10 * DAY]}
    s = score(events, recalls, alarms)
    assert (s.positives, s.caught_early, s.median_lead_days) == (1, 1, 280)
    assert (s.alarm_episodes, s.hits) == (4, 2)  # 120 and 300 are followed by the recall; 20 and X not


@pytest.mark.data
def test_own_scorer_agrees_with_the_reference_script(tmp_path: Path) -> None:
    if not (NHTSA / "events.csv").exists():
        pytest.skip("../shared/data/nhtsa-dev is not here")
    events, truth = read_events(NHTSA / "events.csv"), read_truth(NHTSA / "truth.csv")
    for config in (
        BacktestConfig.load(DEFAULT_CONFIG),
        BacktestConfig().with_params(min_ratio=0.0, min_count=5),
    ):
        alarms = run(events, truth, config)
        write_alarms(alarms, tmp_path / "alarms.csv")
        reference = subprocess.run(
            [sys.executable, str(REFERENCE), "--events", str(NHTSA / "events.csv"), "--truth",
             str(NHTSA / "truth.csv"), "--alarms", str(tmp_path / "alarms.csv")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert json.loads(reference.stdout) == score_alarms(events, truth, alarms).as_dict()


@pytest.mark.data
def test_real_data_targets_with_the_shipped_config(tmp_path: Path) -> None:
    """The issue's targets on nhtsa-dev: precision >= 0.25, caught early >= 50 %, median lead >= 90 d."""
    if not (NHTSA / "events.csv").exists():
        pytest.skip("../shared/data/nhtsa-dev is not here")
    done = subprocess.run(
        [sys.executable, "-m", "recallwatch.cli", "backtest", "--events", str(NHTSA / "events.csv"),
         "--truth", str(NHTSA / "truth.csv"), "--alarms-out", str(tmp_path / "a.csv"), "--json"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    result = json.loads(done.stdout)
    assert result["precision"] >= 0.25 and result["caught_early_rate"] >= 0.5, result
    assert result["median_lead_days"] >= 90, result
    assert (tmp_path / "a.csv").read_text().startswith("model,batch,component,alarm_at")


def test_tune_writes_a_loadable_config_and_a_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events_path, truth_path = synthetic(tmp_path)
    small = {"window_days": (60, 90), "min_count": (3, 5), "min_ratio": (1.5, 2.0)}
    monkeypatch.setattr(tune, "GRID", small)
    from recallwatch.cli import main

    out, plot = tmp_path / "tuned.toml", tmp_path / "tradeoff.png"
    code = main(["tune", "--events", str(events_path), "--truth", str(truth_path), "--out", str(out),
                 "--plot", str(plot), "--min-caught", "0.5", "--min-lead", "30", "--quiet"])  # fmt: skip
    assert code == 0
    chosen = BacktestConfig.load(out)
    assert chosen.window_days in (60, 90) and dict(chosen.params)["min_count"] in (3, 5)
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_bad_config_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[backtest]\ndetector = "nope"\n')
    with pytest.raises(ValueError, match="unknown detector"):
        BacktestConfig.load(bad)
    bad.write_text("[backtest]\nwindow = 3\n")
    with pytest.raises(ValueError, match="unknown"):
        BacktestConfig.load(bad)


def test_history_event_order_is_deterministic(tmp_path: Path) -> None:
    events_path, _ = synthetic(tmp_path)
    events = read_events(events_path)
    assert events == sorted(events, key=lambda e: (e.t, e.event_id))
    assert isinstance(events[0], HistoryEvent)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("event_id,occurred_at,model,batch\ne1,2020-01-01,A,2020\n", "no column component"),
        (
            "event_id,occurred_at,model,batch,component\ne1,2020-01-01,A,2020,BRAKES\ne2,soon,A,2020,BRAKES\n",
            "events.csv:3: Invalid isoformat string: 'soon'",
        ),
        ("event_id,occurred_at,model,batch,component\ne1,2020-01-01,A,2020\n", "events.csv:2: "),
        ("event_id,occurred_at,model,batch,component\ne1,2020-01-01,A,2020,*\n", "'*' is reserved"),
    ],
)
def test_a_history_file_it_cannot_read_is_named_with_its_line(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from recallwatch.cli import main

    events = tmp_path / "events.csv"
    events.write_text(text)
    truth = tmp_path / "truth.csv"
    truth.write_text("model,batch,component,recall_date\nA,2020,BRAKES,2021-01-01\n")
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        read_events(events)
    code = main(
        ["backtest", "--events", str(events), "--truth", str(truth), "--alarms-out", str(tmp_path / "a.csv")]
    )
    assert code == 2 and message in capsys.readouterr().err  # a message, not a traceback
