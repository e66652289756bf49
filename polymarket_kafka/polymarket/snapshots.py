"""A `MarketSnapshot` from a price and what is known of its market (pure).

One builder for both sources, so a streamed snapshot carries exactly what a polled one
carries (question, volume, liquidity, category, tags, the subscription's overrides): the
detector resolves a market's rules from these, and the two sources must not disagree on them.
"""

from __future__ import annotations

from datetime import datetime

from polymarket_kafka.models import MarketSnapshot, PolymarketSubscription, PriceSource, Resolution
from polymarket_kafka.polymarket.parsing import MarketMetadata

__all__ = ["build_snapshot"]


def build_snapshot(
    subscription: PolymarketSubscription,
    metadata: MarketMetadata,
    price: float,
    taken_at: datetime,
    *,
    spread: float | None = None,
    closed: bool | None = None,
    resolution: Resolution | None = None,
    source: PriceSource = "rest",
    source_at: datetime | None = None,
) -> MarketSnapshot:
    """Raises pydantic's `ValidationError` for a price or field the contract refuses.

    `spread` defaults to Gamma's (`metadata.spread`); `closed` (with `resolution`) to the
    metadata's.
    """
    if closed is None:
        closed, resolution = metadata.closed, metadata.resolution if metadata.closed else None
    return MarketSnapshot(
        market_id=subscription.market_id,
        question=metadata.question or subscription.question or "",
        yes_price=price,
        taken_at=taken_at,
        closed=closed,
        resolution=resolution,
        volume=metadata.volume,
        liquidity=metadata.liquidity,
        category=metadata.category,
        tags=metadata.tags,
        spread=metadata.spread if spread is None else spread,
        threshold=subscription.threshold,
        window_seconds=subscription.window_seconds,
        cooldown_seconds=subscription.cooldown_seconds,
        source=source,
        source_at=source_at,
    )
