"""Offline tools over the production detector: replay recorded histories, score a replay
against labelled moments, plot it, and run rule unit tests (`polymarket-kafka replay`,
`polymarket-kafka rules test`). Nothing here touches the network or a clock.
"""

from polymarket_kafka.replay.engine import ReplayResult, replay
from polymarket_kafka.replay.history import (
    HistoryError,
    PriceSeries,
    ReplayMarket,
    load_history,
    market_for,
)

__all__ = [
    "HistoryError",
    "PriceSeries",
    "ReplayMarket",
    "ReplayResult",
    "load_history",
    "market_for",
    "replay",
]
