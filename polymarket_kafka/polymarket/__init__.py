"""Polymarket adapter: batched, rate-limited, retrying access to the CLOB and Gamma APIs.

The public surface:

- `open_polymarket_client(config, *, transport=None, ...)` → `PolymarketClient` with
  `fetch_midpoints(token_ids) -> PriceBatch` and `fetch_markets(condition_ids) -> MetadataBatch`.
- `MarketMetadata` and the pure parsers (`parse_market`, `parse_markets`, `parse_midpoints`).
- `RateLimiter`, `RetryPolicy`: the pacing and retry building blocks, injectable for tests.
- The `PolymarketError` hierarchy.
"""

from polymarket_kafka.polymarket.client import PolymarketClient, open_polymarket_client
from polymarket_kafka.polymarket.errors import (
    MalformedPayloadError,
    PolymarketBlockedError,
    PolymarketError,
    PolymarketHTTPError,
    PolymarketUnavailableError,
)
from polymarket_kafka.polymarket.parsing import (
    MalformedItemError,
    MarketMetadata,
    parse_market,
    parse_markets,
    parse_midpoints,
)
from polymarket_kafka.polymarket.ratelimit import RateLimiter
from polymarket_kafka.polymarket.results import ClientStats, MetadataBatch, PriceBatch
from polymarket_kafka.polymarket.retry import RetryPolicy

__all__ = [
    "ClientStats",
    "MalformedItemError",
    "MalformedPayloadError",
    "MarketMetadata",
    "MetadataBatch",
    "PolymarketBlockedError",
    "PolymarketClient",
    "PolymarketError",
    "PolymarketHTTPError",
    "PolymarketUnavailableError",
    "PriceBatch",
    "RateLimiter",
    "RetryPolicy",
    "open_polymarket_client",
    "parse_market",
    "parse_markets",
    "parse_midpoints",
]
