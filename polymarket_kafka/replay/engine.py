"""Replay a recorded history through the production detector (pure: no clock, no I/O).

Each point of the series becomes the `MarketSnapshot` the poller would have produced at that
time, and goes through the very `Detector.observe` and `build_event` the service runs, with
`now = snapshot.taken_at`: the replay judges every point as if it had just been polled, so
the stale-data guard never drops recorded data and the output does not depend on when the
replay runs. The JSON form of an event is exactly its Kafka value.

A replay never emits the closing event (`market_closed`): a price history says nothing about
when the market closed, and the last recorded point is usually just the end of the download.
Each history gets a fresh detector, so two files of the same market (hourly and daily, say)
never share state.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime

from polymarket_kafka.detection import Detector, RuleSource
from polymarket_kafka.events import build_event
from polymarket_kafka.models import MarketSnapshot, PolymarketEvent
from polymarket_kafka.replay.history import PriceSeries, ReplayMarket

__all__ = ["ReplayResult", "replay", "snapshots"]


@dataclass(frozen=True)
class ReplayResult:
    """The events one history produced, with what the detector dropped along the way."""

    series: PriceSeries
    market: ReplayMarket
    events: tuple[PolymarketEvent, ...]
    #: The detector's counters after the replay (glitches, thin_book, unwatched, ...).
    detector_stats: Mapping[str, int] = field(default_factory=dict)

    def event_times(self) -> tuple[datetime, ...]:
        return tuple(event.timestamp for event in self.events)


def snapshots(series: PriceSeries, market: ReplayMarket) -> Iterator[MarketSnapshot]:
    """The snapshots the poller would have produced for `series`, in time order."""
    for point in series.points:
        yield MarketSnapshot(
            market_id=market.market_id,
            question=market.question,
            yes_price=point.price,
            taken_at=point.at,
            volume=market.volume,
            liquidity=market.liquidity,
            category=market.category,
            tags=market.tags,
        )


def replay(series: PriceSeries, market: ReplayMarket, rules: RuleSource) -> ReplayResult:
    """Feed `series` through a fresh production `Detector` under `rules`."""
    detector = Detector()
    events: list[PolymarketEvent] = []
    for snapshot in snapshots(series, market):
        for change in detector.observe(snapshot, rules, now=snapshot.taken_at):
            events.append(build_event(change))
    return ReplayResult(
        series=series,
        market=market,
        events=tuple(events),
        detector_stats={k: v for k, v in asdict(detector.stats).items() if isinstance(v, int)},
    )
