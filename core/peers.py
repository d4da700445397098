"""Trailing counts of every key and its peers, updated event by event in event time.

A key is (model, batch, component). For each incoming incident :meth:`PeerWindows.observe` returns
the observation the disproportionality detector reads: the key's count and its cell's count over
the recent window, the same component's share among all other cells and among the model's other
batches over a long history, the key's count in the window before, how many of the key's recent
incidents were severe (crash, fire, injury) and how long its cell has been reporting. Everything is a running
counter over time-ordered deques, so one event costs O(1) amortised (a replay of years of
complaints takes seconds) and nothing after the event's time can influence it.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

DAY = 86_400
Key = tuple[str, str, str]
CRASH, FIRE, INJURY = 1, 2, 4
"""Severity bits of one incident (an injury includes a death)."""
_SEVERITY_BITS = (CRASH, FIRE, INJURY)


@dataclass
class PeerWindows:
    window_s: int = 90 * DAY
    history_s: int = 3650 * DAY
    _recent: deque[tuple[float, Key]] = field(default_factory=deque)
    _previous: deque[tuple[float, Key]] = field(default_factory=deque)  # between 1 and 2 windows ago
    _history: deque[tuple[float, Key]] = field(default_factory=deque)
    _severe: deque[tuple[float, Key, int]] = field(default_factory=deque)  # recent, severity bits
    key_recent: Counter[Key] = field(default_factory=Counter)
    cell_recent: Counter[tuple[str, str]] = field(default_factory=Counter)
    key_previous: Counter[Key] = field(default_factory=Counter)
    key_hist: Counter[Key] = field(default_factory=Counter)
    cell_hist: Counter[tuple[str, str]] = field(default_factory=Counter)
    component_hist: Counter[str] = field(default_factory=Counter)
    model_component_hist: Counter[tuple[str, str]] = field(default_factory=Counter)
    model_hist: Counter[str] = field(default_factory=Counter)
    key_severe_recent: Counter[tuple[Key, int]] = field(default_factory=Counter)  # (key, bit)
    cell_first_seen: dict[tuple[str, str], float] = field(default_factory=dict)
    total_hist: int = 0
    now: float = float("-inf")

    def observe(
        self, t: float, model: str, batch: str, component: str, severity: int = 0
    ) -> dict[str, float]:
        """Count one incident at ``t`` (non-decreasing) and return its key's observation.

        ``severity`` holds bits :data:`CRASH`, :data:`FIRE` and :data:`INJURY`.

        >>> w = PeerWindows(window_s=10, history_s=100)
        >>> _ = w.observe(0, "M", "B1", "brakes"); _ = w.observe(1, "M", "B2", "seat")
        >>> x = w.observe(2, "M", "B1", "brakes")
        >>> x["count"], x["exposure"], x["peer_count"], x["peer_exposure"]
        (2.0, 2.0, 0.0, 1.0)
        >>> w.observe(3, "M", "B1", "brakes", CRASH | INJURY)["injury_count"]
        1.0
        """
        if t < self.now:
            raise ValueError("events must arrive in event-time order")
        self.now = t
        key = (model, batch, component)
        cell = (model, batch)
        self._expire(t)
        self._recent.append((t, key))
        self._history.append((t, key))
        self.key_recent[key] += 1
        self.cell_recent[cell] += 1
        self.key_hist[key] += 1
        self.cell_hist[cell] += 1
        self.component_hist[component] += 1
        self.model_component_hist[(model, component)] += 1
        self.model_hist[model] += 1
        self.total_hist += 1
        first_seen = self.cell_first_seen.setdefault(cell, t)
        if severity:
            self._severe.append((t, key, severity))
            for bit in _SEVERITY_BITS:
                if severity & bit:
                    self.key_severe_recent[(key, bit)] += 1
        own = self.key_hist[key]
        return {
            "count": float(self.key_recent[key]),
            "exposure": float(self.cell_recent[cell]),
            "peer_count": float(self.component_hist[component] - own),
            "peer_exposure": float(self.total_hist - self.cell_hist[cell]),
            "model_peer_count": float(self.model_component_hist[(model, component)] - own),
            "model_peer_exposure": float(self.model_hist[model] - self.cell_hist[cell]),
            "previous_count": float(self.key_previous[key]),
            "crash_count": float(self.key_severe_recent[(key, CRASH)]),
            "fire_count": float(self.key_severe_recent[(key, FIRE)]),
            "injury_count": float(self.key_severe_recent[(key, INJURY)]),
            "cell_age_days": (t - first_seen) / DAY,
        }

    def _expire(self, t: float) -> None:
        while self._recent and self._recent[0][0] <= t - self.window_s:
            old_t, key = self._recent.popleft()
            self.key_recent[key] -= 1
            self.cell_recent[(key[0], key[1])] -= 1
            self._previous.append((old_t, key))
            self.key_previous[key] += 1
        while self._severe and self._severe[0][0] <= t - self.window_s:
            _, key, severity = self._severe.popleft()
            for bit in _SEVERITY_BITS:
                if severity & bit:
                    self.key_severe_recent[(key, bit)] -= 1
        while self._previous and self._previous[0][0] <= t - 2 * self.window_s:
            _, key = self._previous.popleft()
            self.key_previous[key] -= 1
        while self._history and self._history[0][0] <= t - self.history_s:
            _, key = self._history.popleft()
            model, batch, component = key
            self.key_hist[key] -= 1
            self.cell_hist[(model, batch)] -= 1
            self.component_hist[component] -= 1
            self.model_component_hist[(model, component)] -= 1
            self.model_hist[model] -= 1
            self.total_hist -= 1


@dataclass
class RecallMemory:
    """Recalls known so far, fed in time order: how many concern the same model and component."""

    by_model_component: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, model: str, component: str) -> None:
        self.by_model_component[(model, component)] += 1

    def related(self, model: str, component: str) -> int:
        return self.by_model_component[(model, component)]
