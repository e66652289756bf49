"""Build `PolymarketEvent`s from detected conviction changes (pure: no clock, no I/O).

Event ids are deterministic: a UUIDv5 of (market id, rule, detection episode). The episode of
a move is its (baseline time, trigger time) pair; a market's final event has the single
episode `final`. Rebuilding or re-sending the same change therefore yields the same id, and
consumers deduplicate on `event_id`.
"""

from __future__ import annotations

import uuid

from polymarket_kafka.detection import ConvictionChange
from polymarket_kafka.models import MarketSnapshot, PolymarketEvent

__all__ = ["EVENT_NAMESPACE", "build_event", "event_id_for"]

#: Namespace of all polymarket-kafka event ids (a fixed, random UUID: never change it).
EVENT_NAMESPACE = uuid.UUID("6f1f0c4e-3b0a-4d5e-9a57-2f6d8e1c7b42")


def event_id_for(change: ConvictionChange) -> str:
    """The deterministic UUIDv5 of a change's (market, rule, episode)."""
    if change.final:
        episode = "final"
    else:
        episode = f"{change.baseline_at.isoformat()}/{change.observed_at.isoformat()}"
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{change.market_id}|{change.rule}|{episode}"))


def build_event(change: ConvictionChange) -> PolymarketEvent:
    """The Kafka event for a change; `published_at` is left unset for the publisher."""
    snapshot = change.snapshot
    resolved = change.resolved
    price_change = change.price_change
    return PolymarketEvent(
        event_id=event_id_for(change),
        timestamp=snapshot.taken_at,
        market_id=snapshot.market_id,
        question=snapshot.question,
        yes_price=snapshot.yes_price,
        no_price=snapshot.no_price,
        direction=change.direction,
        baseline_yes_price=change.baseline_price,
        baseline_timestamp=change.baseline_at,
        price_change=price_change,
        abs_price_change=abs(price_change),
        log_odds_change=round(change.log_odds_change, 9),
        window_seconds=change.window_seconds,
        volume=snapshot.volume,
        liquidity=snapshot.liquidity,
        rule=change.rule,
        final=change.final,
        severity=change.severity,
        rules_version=resolved.rules_version if resolved is not None else None,
        rule_id=resolved.rule_id if resolved is not None else None,
        resolution=snapshot.resolution if change.final else None,
        catch_up=change.gap_seconds is not None,
        gap_seconds=change.gap_seconds,
        price_source=snapshot.source,
        price_age_seconds=_price_age(snapshot),
    )


def _price_age(snapshot: MarketSnapshot) -> float | None:
    """Observation time minus Polymarket's time of a streamed update (never negative: the
    two clocks differ by a little)."""
    if snapshot.source_at is None:
        return None
    return round(max(0.0, (snapshot.taken_at - snapshot.source_at).total_seconds()), 3)
