"""What the client returns and counts: `PriceBatch`, `MetadataBatch`, `ClientStats`.

Both batches keep a simple promise: every id the caller asked for is in exactly one of the two
maps, its value or the reason it has none. Nothing here does I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from polymarket_kafka.histogram import Histogram
from polymarket_kafka.polymarket.parsing import MarketMetadata

__all__ = ["ClientStats", "MetadataBatch", "PriceBatch"]


@dataclass
class ClientStats:
    """Plain counters for one client; a metrics layer reads them.

    `requests` counts attempts by `(endpoint, outcome)`, the outcome being the HTTP status
    (`"200"`, `"429"`...) or `"timeout"` / `"transport_error"` / `"decoding_error"`.
    `latency` holds the duration of every attempt, by endpoint, whatever its outcome.
    """

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    latency: dict[str, Histogram] = field(default_factory=dict)
    retries: int = 0
    rate_limit_waits: int = 0
    #: Seconds spent waiting for the rate limiter (paced, not failed, requests).
    rate_limit_wait_seconds: float = 0.0
    malformed_payloads: int = 0
    malformed_items: int = 0
    bisections: int = 0

    def record(self, endpoint: str, outcome: str, seconds: float | None = None) -> None:
        """Count one attempt; `seconds` (how long it took) adds it to `latency`."""
        self.requests[(endpoint, outcome)] += 1
        if seconds is not None:
            self.latency.setdefault(endpoint, Histogram()).observe(seconds)

    def total_requests(self, endpoint: str | None = None) -> int:
        """Attempts made, for one endpoint or all of them."""
        return sum(n for (ep, _), n in self.requests.items() if endpoint in (None, ep))


@dataclass(frozen=True)
class PriceBatch:
    """Midpoints by token id; every requested token is in exactly one of the two maps."""

    prices: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MetadataBatch:
    """Market metadata by condition id; every requested id is in exactly one of the maps."""

    markets: dict[str, MarketMetadata] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
