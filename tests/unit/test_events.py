"""Event building: fields, deterministic ids, serialisation."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from polymarket_kafka.detection import ConvictionChange
from polymarket_kafka.events import EVENT_NAMESPACE, build_event, event_id_for
from polymarket_kafka.models import (
    ConvictionDirection,
    MarketSnapshot,
    PolymarketEvent,
    Resolution,
)

T0 = datetime(2024, 11, 6, 1, 0, tzinfo=UTC)
MARKET = "0xdd22472e552920b8438158ea7238bfadfa4f736aa4cee91a6b86c39ead110917"


def change(
    price: float = 0.706,
    baseline: float = 0.58,
    *,
    final: bool = False,
    rule: str = "conviction_move",
    at: datetime = T0,
    closed: bool | None = None,
    resolution: Resolution | None = None,
) -> ConvictionChange:
    snapshot = MarketSnapshot(
        market_id=MARKET,
        question="Will Trump win?",
        yes_price=price,
        taken_at=at,
        volume=1.5e9,
        liquidity=2.5e6,
        closed=final if closed is None else closed,
        resolution=resolution,
    )
    return ConvictionChange(
        snapshot=snapshot,
        rule=rule,
        baseline_price=baseline,
        baseline_at=at - timedelta(hours=1),
        final=final,
    )


def test_build_event_fields() -> None:
    event = build_event(change())
    assert isinstance(event, PolymarketEvent)
    assert event.market_id == MARKET and event.question == "Will Trump win?"
    assert event.yes_price == 0.706 and event.no_price == 0.294
    assert event.direction is ConvictionDirection.TOWARD_YES
    assert event.baseline_yes_price == 0.58
    assert event.baseline_timestamp == T0 - timedelta(hours=1)
    assert event.price_change == 0.126 and event.abs_price_change == 0.126
    assert event.log_odds_change > 0
    assert event.window_seconds == 3600
    assert event.volume == 1.5e9 and event.liquidity == 2.5e6
    assert event.rule == "conviction_move" and event.final is False
    assert event.published_at is None and event.resolution is None
    assert uuid.UUID(event.event_id).version == 5


@pytest.mark.parametrize("resolution", ["yes", "no", "void", "unknown"])
def test_a_final_event_says_how_the_market_resolved(resolution: Resolution) -> None:
    event = build_event(change(0.42, final=True, rule="market_closed", resolution=resolution))

    assert event.resolution == resolution
    assert json.loads(event.to_kafka_value())["resolution"] == resolution


def test_a_non_final_event_never_carries_a_resolution() -> None:
    # Even built from a closed snapshot (the detector never does that), only `final` decides.
    event = build_event(change(closed=True, resolution="yes"))

    assert event.final is False and event.resolution is None


def test_event_id_is_deterministic_per_episode() -> None:
    assert build_event(change()).event_id == build_event(change()).event_id
    assert event_id_for(change()) != event_id_for(change(rule="other"))
    assert event_id_for(change()) != event_id_for(change(at=T0 + timedelta(minutes=1)))
    expected = uuid.uuid5(
        EVENT_NAMESPACE,
        f"{MARKET}|conviction_move|{(T0 - timedelta(hours=1)).isoformat()}/{T0.isoformat()}",
    )
    assert event_id_for(change()) == str(expected)


def test_final_event_has_one_id_per_market() -> None:
    a = change(1.0, final=True, rule="market_closed")
    b = change(1.0, final=True, rule="market_closed", at=T0 + timedelta(days=1))
    assert event_id_for(a) == event_id_for(b)
    assert build_event(a).final is True


def test_downward_event() -> None:
    event = build_event(change(0.38, 0.625))
    assert event.direction is ConvictionDirection.TOWARD_NO
    assert event.price_change == -0.245 and event.abs_price_change == 0.245
    assert event.log_odds_change < 0
