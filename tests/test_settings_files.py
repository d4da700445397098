"""Config files carry everything but secrets: those come from the environment only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import ConfigFileError, load_settings


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in list(os.environ):
        if name.startswith("RW_"):
            monkeypatch.delenv(name)

    def write(text: str) -> Path:
        path = tmp_path / "site.toml"
        path.write_text(text)
        monkeypatch.setenv("RW_CONFIG_FILE", str(path))
        return path

    return write


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[slack]\ntoken = "xoxb-committed"\n', "slack.token"),
        ('[slack]\nsigning_secret = "s3cret"\n', "slack.signing_secret"),
        ('[api]\nkeys = { "k-123" = "admin" }\n', "api.keys"),
    ],
)
def test_a_config_file_that_sets_a_secret_is_refused_with_the_reason(
    config_file, text: str, named: str
) -> None:
    path = config_file(text)
    with pytest.raises(ConfigFileError) as refused:
        load_settings()
    assert str(path) in str(refused.value) and named in str(refused.value)
    assert "environment only" in str(refused.value)


def test_the_same_secret_from_the_environment_and_other_settings_from_a_file_are_taken(
    config_file, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file('[slack]\nchannel = "C0123"\n')
    monkeypatch.setenv("RW_SLACK__TOKEN", "xoxb-from-env")
    settings = load_settings()
    assert settings.slack.channel == "C0123"
    assert settings.slack.token is not None and settings.slack.token.get_secret_value() == "xoxb-from-env"


def test_the_shipped_defaults_set_no_secret(config_file) -> None:
    config_file("")
    settings = load_settings()
    assert settings.slack.token is None and settings.slack.signing_secret is None and settings.api.keys == {}


def test_the_cli_says_why_and_stops_without_a_traceback(config_file, tmp_path: Path) -> None:
    config_file('[slack]\ntoken = "xoxb-committed"\n')
    done = subprocess.run(
        [sys.executable, "-m", "recallwatch.cli", "registry", "import", str(tmp_path / "none.csv")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=os.environ.copy(),
    )  # fmt: skip
    assert done.returncode == 1
    assert "bad configuration" in done.stderr and "slack.token" in done.stderr
    assert "Traceback" not in done.stderr


def test_detection_settings_whose_cells_could_outgrow_one_changelog_record_are_refused(config_file) -> None:
    # Hourly buckets over a 30-day window: 720 buckets of history per failure mode. With 200 modes a
    # cell's snapshot could pass the producer's 1,000,000-byte limit, and its partition would never
    # be acked again; the worker must say so at startup instead.
    config_file("[detection]\nbucket_s = 3600\n")
    with pytest.raises(ValueError, match="max_failure_modes"):
        load_settings()
    config_file("[detection]\nbucket_s = 3600\nmax_failure_modes = 100\n")
    assert load_settings().detection.to_core().max_failure_modes == 100


def test_the_shipped_detection_settings_cap_failure_modes_and_event_lead(config_file) -> None:
    config_file("")
    cfg = load_settings().detection.to_core()
    assert (cfg.max_failure_modes, cfg.max_event_lead_s) == (200, 86_400)


def test_a_detector_parameter_the_detector_does_not_take_is_a_settings_error(config_file) -> None:
    # Settings build every detector to bound a cell's size: a bad parameter must read as a
    # setting's error, not a TypeError from deep inside a detector's constructor.
    config_file('[[detection.detectors]]\nname = "poisson_cusum"\nparams = { bogus = 1 }\n')
    with pytest.raises(ValueError, match=r"detection\.detectors: .*bogus"):
        load_settings()
