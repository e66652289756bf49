"""`build_snapshot`: one builder for polled and streamed snapshots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from polymarket_kafka.models import MarketSnapshot, PolymarketSubscription
from polymarket_kafka.polymarket.parsing import MarketMetadata
from polymarket_kafka.polymarket.snapshots import build_snapshot
from tests.factories import MARKET, T0

SUBSCRIPTION = PolymarketSubscription(
    market_id=MARKET,
    ref_count=2,
    question="Cached question?",
    threshold=0.07,
    window_seconds=1800.0,
    cooldown_seconds=600.0,
)
METADATA = MarketMetadata(
    market_id=MARKET,
    question="Will Donald Trump win the 2024 US Presidential Election?",
    yes_token_id="21742633143463906290569050155826241533067272736897614950488156847949938836455",
    volume=1_500_000.0,
    liquidity=250_000.0,
    category="Politics",
    tags=("elections", "us"),
    spread=0.01,
)
CLOSED = MarketMetadata(
    market_id=MARKET, question="q", closed=True, resolution="yes", yes_outcome_price=1.0
)


def test_a_polled_snapshot_carries_the_metadata_and_the_overrides() -> None:
    snapshot = build_snapshot(SUBSCRIPTION, METADATA, 0.58, T0)
    assert snapshot == MarketSnapshot(
        market_id=MARKET,
        question="Will Donald Trump win the 2024 US Presidential Election?",
        yes_price=0.58,
        taken_at=T0,
        closed=False,
        resolution=None,
        volume=1_500_000.0,
        liquidity=250_000.0,
        category="Politics",
        tags=("elections", "us"),
        spread=0.01,
        threshold=0.07,
        window_seconds=1800.0,
        cooldown_seconds=600.0,
        source="rest",
        source_at=None,
    )


def test_a_streamed_snapshot_carries_exactly_what_a_polled_one_does() -> None:
    source_at = T0 - timedelta(milliseconds=250)
    polled = build_snapshot(SUBSCRIPTION, METADATA, 0.58, T0)
    streamed = build_snapshot(
        SUBSCRIPTION, METADATA, 0.58, T0, spread=0.01, source="ws", source_at=source_at
    )
    assert (streamed.source, streamed.source_at) == ("ws", source_at)
    assert streamed.model_dump(exclude={"source", "source_at"}) == polled.model_dump(
        exclude={"source", "source_at"}
    )


def test_the_streamed_spread_replaces_gamma_s() -> None:
    assert build_snapshot(SUBSCRIPTION, METADATA, 0.5, T0, spread=0.2).spread == 0.2


def test_a_zero_spread_is_a_spread_not_a_missing_one() -> None:
    assert build_snapshot(SUBSCRIPTION, METADATA, 0.5, T0, spread=0.0).spread == 0.0


def test_no_spread_anywhere() -> None:
    metadata = MarketMetadata(market_id=MARKET)
    assert build_snapshot(SUBSCRIPTION, metadata, 0.5, T0).spread is None


@pytest.mark.parametrize(
    ("metadata_question", "subscription_question", "expected"),
    [
        ("From Gamma?", "Cached?", "From Gamma?"),
        (None, "Cached?", "Cached?"),
        ("", "Cached?", "Cached?"),
        (None, None, ""),
    ],
)
def test_the_question_comes_from_gamma_then_the_subscription(
    metadata_question: str | None, subscription_question: str | None, expected: str
) -> None:
    subscription = PolymarketSubscription(market_id=MARKET, question=subscription_question)
    metadata = MarketMetadata(market_id=MARKET, question=metadata_question)
    assert build_snapshot(subscription, metadata, 0.5, T0).question == expected


def test_without_overrides_the_snapshot_has_none() -> None:
    subscription = PolymarketSubscription(market_id=MARKET, ref_count=1)
    snapshot = build_snapshot(subscription, METADATA, 0.5, T0)
    assert (snapshot.threshold, snapshot.window_seconds, snapshot.cooldown_seconds) == (
        None,
        None,
        None,
    )


def test_closed_and_resolution_default_to_the_metadata() -> None:
    snapshot = build_snapshot(SUBSCRIPTION, CLOSED, 1.0, T0)
    assert (snapshot.closed, snapshot.resolution) == (True, "yes")


def test_an_open_market_s_resolution_in_the_metadata_is_not_carried() -> None:
    """Only a closed market has a resolution (the snapshot would refuse one otherwise)."""
    metadata = MarketMetadata(market_id=MARKET, closed=False, resolution="no")
    snapshot = build_snapshot(SUBSCRIPTION, metadata, 0.5, T0)
    assert (snapshot.closed, snapshot.resolution) == (False, None)


def test_a_stream_resolution_overrides_the_metadata() -> None:
    """`market_resolved` on the stream: closed before Gamma knows it."""
    snapshot = build_snapshot(
        SUBSCRIPTION, METADATA, 0.0, T0, closed=True, resolution="no", source="ws"
    )
    assert (snapshot.closed, snapshot.resolution, snapshot.yes_price) == (True, "no", 0.0)


def test_an_explicit_open_overrides_closed_metadata() -> None:
    snapshot = build_snapshot(SUBSCRIPTION, CLOSED, 0.5, T0, closed=False)
    assert (snapshot.closed, snapshot.resolution) == (False, None)


def test_closed_without_a_resolution_when_given_explicitly() -> None:
    snapshot = build_snapshot(SUBSCRIPTION, CLOSED, 0.5, T0, closed=True)
    assert (snapshot.closed, snapshot.resolution) == (True, None)


def test_times_are_utc() -> None:
    eastern = timezone(timedelta(hours=-5))
    taken = datetime(2024, 11, 5, 20, 0, tzinfo=eastern)
    snapshot = build_snapshot(SUBSCRIPTION, METADATA, 0.5, taken, source_at=taken, source="ws")
    assert snapshot.taken_at == datetime(2024, 11, 6, 1, 0, tzinfo=UTC)
    assert snapshot.source_at == snapshot.taken_at
    assert snapshot.taken_at.tzinfo == UTC


@pytest.mark.parametrize("price", [-0.01, 1.01, float("nan"), float("inf")])
def test_a_price_the_contract_refuses_raises(price: float) -> None:
    with pytest.raises(ValidationError):
        build_snapshot(SUBSCRIPTION, METADATA, price, T0)


def test_a_resolution_on_an_open_market_raises() -> None:
    with pytest.raises(ValidationError, match="resolution is only set on a closed market"):
        build_snapshot(SUBSCRIPTION, METADATA, 0.5, T0, closed=False, resolution="yes")


def test_a_negative_spread_raises() -> None:
    with pytest.raises(ValidationError):
        build_snapshot(SUBSCRIPTION, METADATA, 0.5, T0, spread=-0.01)
