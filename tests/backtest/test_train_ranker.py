"""Training the alarm ranker from labelled history, validating it out of time, and using it."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.peers import CRASH, DAY, INJURY
from core.scoring import YEAR
from models.alarm_ranker import AlarmRanker
from recallwatch.backtest import DEFAULT_CONFIG, BacktestConfig, HistoryEvent, run
from recallwatch.train_ranker import candidates, recall_follows, train

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_500_000_000
MODELS, BATCHES, PARTS = (
    ("A", "B", "C", "D"),
    ("1", "2", "3", "4", "5"),
    ("ENGINE", "BRAKES", "SEATS", "AIRBAG"),
)


def history(seed: int = 4) -> tuple[list[HistoryEvent], dict[tuple[str, str, str], list[int]]]:
    """Six years of background complaints; every few months a key surges with a severe mix, and
    those surges are recalled. Busy keys that surge without severity are never recalled."""
    rng = random.Random(seed)
    events: list[HistoryEvent] = []
    truth: dict[tuple[str, str, str], list[int]] = {}
    n = 0

    def add(t: float, key: tuple[str, str, str], severity: int) -> None:
        nonlocal n
        n += 1
        events.append(HistoryEvent(int(t), *key, f"e{n}", severity))

    for model in MODELS:
        for batch in BATCHES:
            for part in PARTS:
                t = T0 + rng.uniform(0, 30) * DAY
                while t < T0 + 6 * YEAR:
                    add(t, (model, batch, part), 0)
                    t += rng.expovariate(1 / 40) * DAY
    for i in range(24):
        key = (rng.choice(MODELS), rng.choice(BATCHES), rng.choice(PARTS))
        onset = T0 + (150 + i * 80) * DAY
        severe = i % 2 == 0
        for j in range(25):
            add(onset + j * 3 * DAY, key, (CRASH | INJURY) if severe and j % 2 == 0 else 0)
        if severe:
            truth.setdefault(key, []).append(int(onset + 120 * DAY))
    events.sort(key=lambda e: (e.t, e.event_id))
    return events, truth


def _config() -> BacktestConfig:
    return dataclasses.replace(
        BacktestConfig.load(DEFAULT_CONFIG), params=(("min_count", 3),), window_days=60
    )


def test_recall_follows_is_the_scorers_hit_rule() -> None:
    assert recall_follows([10 * DAY], 10 * DAY) == 1  # the same day counts
    assert recall_follows([10 * DAY + YEAR], 10 * DAY) == 1
    assert recall_follows([10 * DAY + YEAR + 1], 10 * DAY) == 0
    assert recall_follows([5 * DAY], 10 * DAY) == 0  # a recall before the alarm is not foreseen


def test_candidates_are_labelled_and_carry_the_detector_verdict() -> None:
    events, truth = history()
    found = candidates(events, truth, _config(), min_count=3)
    assert found and all(c.features for c in found)
    assert {c.label for c in found} == {0, 1}
    assert any(c.detector_alarm for c in found)


def test_training_ranks_the_severe_surges_first_out_of_time() -> None:
    events, truth = history()
    validate_from = T0 + 3 * YEAR
    ranker, report = train(events, truth, _config(), version="t", validate_from=validate_from)
    assert report["positives"] > 0 and report["candidates"] > report["positives"]
    quality = report["validation"]["all_candidates"]
    # Fitted on the first two years only, it still ranks the later recalls well above chance.
    assert quality["roc_auc"] > 0.75, report
    assert quality["precision_top_fifth"] > quality["precision_all"]
    assert report["coefficients"]["crash_share"] > 0
    assert ranker.meta["window_days"] == 60


def test_a_backtest_config_with_a_ranker_drops_low_ranked_alarms(tmp_path: Path) -> None:
    events, truth = history()
    ranker, _ = train(events, truth, _config(), version="t")
    ranker.save(tmp_path / "ranker.json")
    base = _config()
    plain = run(events, truth, base)
    ranked_all = run(events, truth, dataclasses.replace(base, ranker_file=str(tmp_path / "ranker.json")))
    assert ranked_all == plain  # min_rank 0 keeps every alarm
    strict = dataclasses.replace(base, ranker_file=str(tmp_path / "ranker.json"), min_rank=0.5)
    kept = run(events, truth, strict)
    assert 0 < len(kept) < len(plain) and set(kept) <= set(plain)
    # The config file names the ranker relative to itself, and round-trips through to_toml.
    (tmp_path / "bt.toml").write_text(dataclasses.replace(strict, ranker_file="ranker.json").to_toml())
    loaded = BacktestConfig.load(tmp_path / "bt.toml")
    assert loaded.ranker_file == str(tmp_path / "ranker.json") and loaded.min_rank == 0.5


def test_a_config_naming_a_missing_ranker_fails_at_load(tmp_path: Path) -> None:
    (tmp_path / "bt.toml").write_text('[backtest]\n[backtest.ranker]\nfile = "nope.json"\n')
    with pytest.raises(ValueError, match="cannot read ranker file"):
        BacktestConfig.load(tmp_path / "bt.toml")


def test_train_ranker_cli_writes_a_loadable_versioned_file(tmp_path: Path) -> None:
    events, truth = history()
    with (tmp_path / "events.csv").open("w") as f:
        f.write("event_id,kind,occurred_at,model,batch,component,crash,fire,injuries,deaths\n")
        for e in events:
            day = datetime.fromtimestamp(e.t, UTC).date()
            f.write(f"{e.event_id},complaint,{day},{e.model},{e.batch},{e.component},"
                    f"{int(bool(e.severity & CRASH))},0,{int(bool(e.severity & INJURY))},0\n")  # fmt: skip
    with (tmp_path / "truth.csv").open("w") as f:
        f.write("campaign,model,batch,component,recall_date\n")
        for (m, b, c), dates in truth.items():
            for d in dates:
                day = datetime.fromtimestamp(d, UTC).date()
                f.write(f"X,{m},{b},{c},{day}\n")
    out = tmp_path / "ranker" / "v9.json"
    result = subprocess.run(
        [sys.executable, "-m", "recallwatch.cli", "train-ranker", "--events", str(tmp_path / "events.csv"),
         "--truth", str(tmp_path / "truth.csv"), "--out", str(out), "--version", "v9",
         "--validate-from", "2020-07-01", "--json"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert report["version"] == "v9" and report["validation"]["all_candidates"]["roc_auc"] > 0.6
    ranker = AlarmRanker.load(out)
    assert ranker.version == "v9" and len(ranker.meta["data_sha256"]) == 16
