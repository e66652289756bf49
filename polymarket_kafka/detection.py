"""Conviction-change detection: a pure state machine over market snapshots.

The detector never reads a clock, never logs and never does I/O. The caller feeds it
snapshots with `observe(snapshot, rules, now)` and gets back the conviction changes to publish
(a list, usually empty). The same code runs in the service and in replays, so a replay of a
recorded history emits exactly what the service would have.

Design (first detector; the YAML rule engine replaces `DetectionRules` but keeps `observe`):

* **Baseline.** The first snapshot of a market sets its baseline and emits nothing: a price
  with no history says nothing about a *change* of conviction.
* **Rolling window.** Each market keeps the observations of the last `window_seconds`, but
  never older than its last event. A snapshot fires when the YES price is at least
  `threshold` away from some observation still in that window; the baseline of the event is
  the observation farthest from the current price (the earliest one on ties). So a fast move
  fires, a slow drift that never moves `threshold` within one window does not.
* **Re-anchoring.** After an event the window restarts at the emitted price: while the price
  stays put nothing repeats, and the next event needs a new move of `threshold` from there.
* **Cooldown.** For `cooldown_seconds` after an event nothing fires (observations are still
  recorded), so a price oscillating around the threshold cannot spam; a move that persists
  past the cooldown fires once when the cooldown ends.
* **Gaps.** If no snapshot arrived for longer than the window, the history is stale: the
  baseline is reset to the new price and nothing fires.
* **Out of order / repeats.** A snapshot not newer than the last one seen is ignored, so
  re-delivering the same snapshot never fires twice.
* **Closing.** A tracked market that reports `closed` emits one final event (rule
  `market_closed`, `final=True`), measured from its current baseline, and is then dropped;
  later snapshots of it are ignored. A market that is already closed when first seen emits
  nothing: we never saw it trade.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from polymarket_kafka.models import ConvictionDirection, MarketSnapshot

__all__ = [
    "CLOSED_RULE",
    "ConvictionChange",
    "DetectionRules",
    "Detector",
    "log_odds",
]

CLOSED_RULE = "market_closed"

# Prices are quoted on a 0.001 tick at best; comparing at 1e-9 absorbs float noise such as
# 0.60 - 0.55 = 0.04999999999999993 without ever merging two distinct ticks.
_PRECISION = 9
_LOGIT_CLAMP = 0.001


def log_odds(price: float) -> float:
    """logit(p) with p clamped to [0.001, 0.999], so 0 and 1 stay finite."""
    p = min(max(price, _LOGIT_CLAMP), 1.0 - _LOGIT_CLAMP)
    return math.log(p / (1.0 - p))


@dataclass(frozen=True)
class DetectionRules:
    """Parameters of the first detector (fixed, documented defaults).

    `threshold` is an absolute move of the YES price in probability units (0.05 = 5 points).
    Per-market overrides carried on a snapshot (from its subscription document) win.
    """

    name: str = "conviction_move"
    threshold: float = 0.05
    window_seconds: float = 3600.0
    cooldown_seconds: float = 600.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.window_seconds <= 0.0:
            raise ValueError(f"window_seconds must be > 0, got {self.window_seconds}")
        if self.cooldown_seconds < 0.0:
            raise ValueError(f"cooldown_seconds must be >= 0, got {self.cooldown_seconds}")

    def for_snapshot(self, snapshot: MarketSnapshot) -> DetectionRules:
        """These rules with the snapshot's per-market overrides applied."""
        return replace(
            self,
            threshold=snapshot.threshold if snapshot.threshold is not None else self.threshold,
            window_seconds=snapshot.window_seconds
            if snapshot.window_seconds is not None
            else self.window_seconds,
            cooldown_seconds=snapshot.cooldown_seconds
            if snapshot.cooldown_seconds is not None
            else self.cooldown_seconds,
        )


@dataclass(frozen=True)
class ConvictionChange:
    """A detected conviction change: what the event builder turns into a `PolymarketEvent`."""

    snapshot: MarketSnapshot
    rule: str
    baseline_price: float
    baseline_at: datetime
    final: bool = False

    @property
    def market_id(self) -> str:
        return self.snapshot.market_id

    @property
    def price(self) -> float:
        return self.snapshot.yes_price

    @property
    def observed_at(self) -> datetime:
        return self.snapshot.taken_at

    @property
    def price_change(self) -> float:
        """Signed move of the YES price, rounded to absorb float noise."""
        return round(self.price - self.baseline_price, _PRECISION)

    @property
    def direction(self) -> ConvictionDirection:
        change = self.price_change
        if change > 0 or (change == 0 and self.price >= 0.5):
            return ConvictionDirection.TOWARD_YES
        return ConvictionDirection.TOWARD_NO

    @property
    def log_odds_change(self) -> float:
        return log_odds(self.price) - log_odds(self.baseline_price)

    @property
    def window_seconds(self) -> float:
        return max(0.0, (self.observed_at - self.baseline_at).total_seconds())


@dataclass
class _MarketState:
    history: deque[tuple[datetime, float]]
    last_seen: datetime
    cooldown_until: datetime | None = None

    @classmethod
    def starting_at(cls, at: datetime, price: float) -> _MarketState:
        return cls(history=deque([(at, price)]), last_seen=at)


@dataclass
class Detector:
    """Per-market detection state. Pure: no clock, no I/O; `now` is always passed in."""

    _markets: dict[str, _MarketState] = field(default_factory=dict)
    _closed: set[str] = field(default_factory=set)

    def observe(
        self, snapshot: MarketSnapshot, rules: DetectionRules, now: datetime
    ) -> list[ConvictionChange]:
        """Feed one snapshot; return the conviction changes it triggers (usually none)."""
        market_id = snapshot.market_id
        if market_id in self._closed:
            return []
        state = self._markets.get(market_id)
        if snapshot.closed:
            return self._close(snapshot, state)

        effective = rules.for_snapshot(snapshot)
        at, price = snapshot.taken_at, snapshot.yes_price
        if state is None or (at - state.last_seen).total_seconds() > effective.window_seconds:
            self._markets[market_id] = _MarketState.starting_at(at, price)
            return []
        if at <= state.last_seen:
            return []

        state.last_seen = at
        horizon = at.timestamp() - effective.window_seconds
        while state.history and state.history[0][0].timestamp() < horizon:
            state.history.popleft()
        baseline = _farthest(state.history, price)
        state.history.append((at, price))

        if state.cooldown_until is not None and now < state.cooldown_until:
            return []
        if baseline is None:
            return []
        baseline_at, baseline_price = baseline
        if round(abs(price - baseline_price), _PRECISION) < round(effective.threshold, _PRECISION):
            return []

        state.history = deque([(at, price)])
        state.cooldown_until = _after(now, effective.cooldown_seconds)
        return [
            ConvictionChange(
                snapshot=snapshot,
                rule=effective.name,
                baseline_price=baseline_price,
                baseline_at=baseline_at,
            )
        ]

    def _close(
        self, snapshot: MarketSnapshot, state: _MarketState | None
    ) -> list[ConvictionChange]:
        self._closed.add(snapshot.market_id)
        self._markets.pop(snapshot.market_id, None)
        if state is None:
            return []
        baseline_at, baseline_price = state.history[0]
        return [
            ConvictionChange(
                snapshot=snapshot,
                rule=CLOSED_RULE,
                baseline_price=baseline_price,
                baseline_at=baseline_at,
                final=True,
            )
        ]

    def forget(self, market_id: str) -> None:
        """Drop all state of a market (unsubscribed): a later snapshot starts afresh."""
        self._markets.pop(market_id, None)
        self._closed.discard(market_id)

    def tracked(self) -> frozenset[str]:
        """Markets with live detection state."""
        return frozenset(self._markets)

    def is_closed(self, market_id: str) -> bool:
        """True once a market's final event was emitted (it will not be tracked again)."""
        return market_id in self._closed


def _farthest(
    history: deque[tuple[datetime, float]], price: float
) -> tuple[datetime, float] | None:
    """The observation farthest from `price` (earliest on ties), or None if empty."""
    best: tuple[datetime, float] | None = None
    best_distance = -1.0
    for at, past in history:
        distance = round(abs(price - past), _PRECISION)
        if distance > best_distance:
            best, best_distance = (at, past), distance
    return best


def _after(now: datetime, seconds: float) -> datetime | None:
    if seconds <= 0:
        return None
    return now + timedelta(seconds=seconds)
