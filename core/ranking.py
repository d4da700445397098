"""What the alarm ranker reads of a candidate alarm: a fixed vector of scale-free features.

A detector says *that* a key stands out; the ranker (``models/alarm_ranker.py``) says how likely
that is to end in a recall, from what quality engineers weigh: the severity mix of the recent
incidents (crash, fire, injury), growth against the window before and against the same model's
other batches, and the component's history (how common it is everywhere, and recalls already
known on it). Every feature is a log ratio, a share or a log count, never a raw volume, so a
ranker trained on one maker's history can read another's.

The input is the observation the detectors read (see ``core.peers``); fields a source cannot give
are absent and take a neutral value (no evidence either way), listed in :data:`NEUTRAL`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

FEATURES: tuple[str, ...] = (
    "log_count",
    "log_ratio_vs_peers",
    "log_ratio_vs_model_batches",
    "log_growth",
    "crash_share",
    "fire_share",
    "injury_share",
    "log_related_recalls",
    "log_component_prevalence",
    "log_cell_age_days",
)

NEUTRAL: dict[str, float] = {
    "log_ratio_vs_peers": 0.0,
    "log_ratio_vs_model_batches": 0.0,
    "log_growth": 0.0,
    "log_related_recalls": 0.0,
    "log_component_prevalence": math.log(0.05),
    "log_cell_age_days": math.log1p(365.0),
}
"""Values of features whose inputs are missing: no difference from peers, a common component."""


def _rate(count: float, exposure: float) -> float:
    # +0.5 / +1: a key with no incidents yet is rare, not impossible (as in the detectors).
    return (count + 0.5) / (exposure + 1.0)


def alarm_features(x: Mapping[str, float]) -> list[float]:
    """The candidate alarm's features, in :data:`FEATURES` order.

    >>> f = dict(zip(FEATURES, alarm_features({"count": 9, "exposure": 30, "previous_count": 2,
    ...     "crash_count": 3, "peer_count": 40, "peer_exposure": 4000})))
    >>> round(f["log_count"], 3), round(f["crash_share"], 3), round(f["log_growth"], 3)
    (2.303, 0.333, 1.204)
    >>> f["log_ratio_vs_model_batches"] == NEUTRAL["log_ratio_vs_model_batches"]
    True
    """
    count = max(0.0, float(x["count"]))
    exposure = max(0.0, float(x["exposure"]))
    own = _rate(count, exposure)
    values = dict(NEUTRAL)
    values["log_count"] = math.log1p(count)
    if "peer_count" in x:
        peer = _rate(float(x["peer_count"]), float(x["peer_exposure"]))
        values["log_ratio_vs_peers"] = math.log(own / peer)
        values["log_component_prevalence"] = math.log(peer)
    if "model_peer_count" in x:
        values["log_ratio_vs_model_batches"] = math.log(
            own / _rate(float(x["model_peer_count"]), float(x["model_peer_exposure"]))
        )
    if "previous_count" in x:
        values["log_growth"] = math.log((count + 1.0) / (float(x["previous_count"]) + 1.0))
    for name in ("crash", "fire", "injury"):
        severe = float(x.get(f"{name}_count", 0.0))
        values[f"{name}_share"] = min(1.0, severe / count) if count > 0 else 0.0
    if "related_recalls" in x:
        values["log_related_recalls"] = math.log1p(max(0.0, float(x["related_recalls"])))
    if "cell_age_days" in x:
        values["log_cell_age_days"] = math.log1p(max(0.0, float(x["cell_age_days"])))
    return [values[name] for name in FEATURES]
