"""What the detector reports: conviction changes, reload resets and its counters (data).

`ConvictionChange` is what the event builder (`events.build_event`) turns into a
`PolymarketEvent`; `StateReset` is what a reload did to one market; `DetectorStats` counts
what the detector dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from polymarket_kafka.detection.moves import PRECISION, log_odds
from polymarket_kafka.models import ConvictionDirection, MarketSnapshot
from polymarket_kafka.ruleset.params import ResolvedRule

__all__ = ["ConvictionChange", "DetectorStats", "StateReset"]


@dataclass(frozen=True)
class ConvictionChange:
    """A detected conviction change: what the event builder turns into a `PolymarketEvent`."""

    snapshot: MarketSnapshot
    rule: str
    baseline_price: float
    baseline_at: datetime
    final: bool = False
    severity: str | None = None
    resolved: ResolvedRule | None = None
    #: Set when the move spans a gap in observation (after a restore): the gap's length.
    gap_seconds: float | None = None

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
        return round(self.price - self.baseline_price, PRECISION)

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


@dataclass(frozen=True)
class StateReset:
    """A market whose state-shaping parameters a reload changed: re-evaluated under the new
    ones (its prices kept), or dropped when the new rules no longer watch it."""

    market_id: str
    old_state_key: str
    new_state_key: str | None  # None: the market is no longer watched under the new rules
    #: True when a pending move no longer qualified under the new thresholds and was dropped.
    pending_dropped: bool = False


@dataclass
class DetectorStats:
    """Plain counters of what the detector dropped (exported by the metrics layer)."""

    glitches: int = 0
    stale: int = 0
    thin_book: int = 0
    unwatched: int = 0
    resets: int = 0
