"""An alert's config version names the detection settings that raised it: any change to them
gives another version, and the same settings always give the same one (issue 4)."""

from __future__ import annotations

from typing import Any

import pytest

from config.settings import DetectionSettings

BASE: dict[str, Any] = {
    "bucket_s": 86_400,
    "windows_s": [604_800],
    "cooldown_buckets": 14,
    "detectors": [{"name": "poisson_cusum", "params": {"threshold": 9.16}}],
}


def version(**changes: Any) -> str:
    return DetectionSettings.model_validate({**BASE, **changes}).to_core().version


def test_the_same_settings_give_the_same_version() -> None:
    assert version() == version() == DetectionSettings.model_validate(dict(BASE)).to_core().version


@pytest.mark.parametrize(
    "changes",
    [
        {"detectors": [{"name": "poisson_cusum", "params": {"threshold": 9.17}}]},
        {"detectors": [{"name": "ewma_rate", "params": {"threshold": 9.16}}]},
        {"bucket_s": 3_600},
        {"windows_s": [2_592_000]},
        {"cooldown_buckets": 7},
    ],
)
def test_any_change_to_detection_gives_another_version(changes: dict[str, Any]) -> None:
    assert version(**changes) != version()
