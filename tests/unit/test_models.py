"""The consumer-facing contracts: required fields, extra=forbid, frozen, ISO timestamps, UUIDs."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from polymarket_kafka.models import (
    ConvictionDirection,
    MarketSnapshot,
    PolymarketEvent,
    PolymarketSubscription,
    SignalType,
)
from tests.factories import MARKET, T0, event_fields


def problems(error: ValidationError) -> list[tuple[str, tuple[int | str, ...]]]:
    """pydantic's error types and locations: its API, unlike its messages' wording."""
    return [(e["type"], tuple(e["loc"])) for e in error.errors()]


def test_signal_type_values() -> None:
    assert SignalType.POLYMARKET.value == "polymarket"
    assert SignalType.OHLCV.value == "ohlcv"
    assert isinstance(SignalType.POLYMARKET, str)


@pytest.mark.parametrize(
    "required",
    [
        "event_id",
        "timestamp",
        "market_id",
        "question",
        "yes_price",
        "no_price",
        "direction",
        "baseline_yes_price",
        "baseline_timestamp",
        "price_change",
        "abs_price_change",
        "log_odds_change",
        "window_seconds",
        "rule",
    ],
)
def test_event_required_fields(required: str) -> None:
    fields = event_fields()
    del fields[required]
    with pytest.raises(ValidationError) as caught:
        PolymarketEvent(**fields)
    assert problems(caught.value) == [("missing", (required,))]


def test_event_defaults() -> None:
    event = PolymarketEvent(**event_fields())
    assert event.source == "polymarket-kafka"
    assert event.published_at is None
    assert event.signal_type is SignalType.POLYMARKET
    assert event.final is False
    assert event.volume is None and event.liquidity is None
    assert event.resolution is None


@pytest.mark.parametrize("resolution", ["yes", "no", "void", "unknown"])
def test_a_final_event_may_say_how_the_market_resolved(resolution: str) -> None:
    event = PolymarketEvent(**event_fields(final=True, resolution=resolution))
    assert event.resolution == resolution


def test_only_a_final_event_carries_a_resolution() -> None:
    with pytest.raises(ValidationError, match="only set on a final event"):
        PolymarketEvent(**event_fields(resolution="yes"))
    with pytest.raises(ValidationError) as caught:
        PolymarketEvent(**event_fields(final=True, resolution="maybe"))
    assert [loc for _, loc in problems(caught.value)] == [("resolution",)]


def test_event_forbids_extra_fields() -> None:
    with pytest.raises(ValidationError) as caught:
        PolymarketEvent(**event_fields(surprise=1))
    assert problems(caught.value) == [("extra_forbidden", ("surprise",))]


def test_event_is_frozen() -> None:
    event = PolymarketEvent(**event_fields())
    with pytest.raises(ValidationError) as caught:
        event.yes_price = 0.9  # type: ignore[misc]
    assert problems(caught.value) == [("frozen_instance", ("yes_price",))]
    updated = event.model_copy(update={"published_at": T0})
    assert updated.published_at == T0 and event.published_at is None


@pytest.mark.parametrize("field", ["yes_price", "no_price", "baseline_yes_price"])
@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), float("inf")])
def test_event_prices_are_probabilities(field: str, bad: float) -> None:
    with pytest.raises(ValidationError) as caught:
        PolymarketEvent(**event_fields(**{field: bad}))
    assert [loc for _, loc in problems(caught.value)] == [(field,)]


def test_event_id_must_be_uuid() -> None:
    with pytest.raises(ValidationError) as caught:
        PolymarketEvent(**event_fields(event_id="not-a-uuid"))
    assert problems(caught.value) == [("value_error", ("event_id",))]


def test_event_json_has_iso_utc_timestamps() -> None:
    cet = timezone(timedelta(hours=1))
    event = PolymarketEvent(
        **event_fields(timestamp=datetime(2024, 11, 6, 2, 0, tzinfo=cet), published_at=T0)
    )
    payload = json.loads(event.to_kafka_value().decode("utf-8"))
    assert payload["timestamp"] == "2024-11-06T01:00:00+00:00"
    assert payload["published_at"] == "2024-11-06T01:00:00+00:00"
    assert payload["baseline_timestamp"] == "2024-11-06T00:00:00+00:00"
    assert payload["direction"] == "toward_yes"
    assert payload["signal_type"] == "polymarket"
    assert uuid.UUID(payload["event_id"])
    assert PolymarketEvent.model_validate_json(event.to_kafka_value()) == event
    assert event.kafka_key == MARKET.encode()


def test_naive_timestamps_are_taken_as_utc() -> None:
    event = PolymarketEvent(**event_fields(timestamp=datetime(2024, 11, 6, 1, 0)))
    assert event.timestamp == T0 and event.timestamp.tzinfo is not None


def test_direction_mirror() -> None:
    assert ConvictionDirection.TOWARD_YES.mirrored() is ConvictionDirection.TOWARD_NO
    assert ConvictionDirection.TOWARD_NO.mirrored() is ConvictionDirection.TOWARD_YES


def test_subscription_contract() -> None:
    sub = PolymarketSubscription(market_id=MARKET, created_at=T0, updated_at=T0)
    assert sub.ref_count == 0 and not sub.is_active()
    assert sub.model_copy(update={"ref_count": 2}).is_active()
    assert sub.subscription_key() == f"polymarket:{MARKET}"
    with pytest.raises(ValidationError) as caught:
        PolymarketSubscription.model_validate(
            {"market_id": MARKET, "created_at": T0, "updated_at": T0, "other": 1}
        )
    assert problems(caught.value) == [("extra_forbidden", ("other",))]


@pytest.mark.parametrize("field", ["window_seconds", "cooldown_seconds"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_subscription_overrides_are_finite(field: str, bad: float) -> None:
    """An infinite window or cooldown is no setting, and the detector state that carries
    it could not be written to the state topic (JSON has no infinity)."""
    with pytest.raises(ValidationError, match=field):
        PolymarketSubscription(market_id=MARKET, **{field: bad})


def test_subscription_timestamps_are_optional_as_in_the_specification() -> None:
    # The specification's fields, as in the platform's CandleSubscription: created_at and
    # updated_at are Optional[datetime] = None, so neither is needed to build one...
    sub = PolymarketSubscription(market_id=MARKET, ref_count=1)
    assert (sub.created_at, sub.updated_at, sub.is_active()) == (None, None, True)
    # ... nor in a document written by another tool.
    doc = PolymarketSubscription.from_document({"_id": "x", "market_id": MARKET, "ref_count": 2})
    assert (doc.ref_count, doc.created_at, doc.updated_at) == (2, None, None)
    fields = PolymarketSubscription.model_fields
    assert not fields["created_at"].is_required() and fields["created_at"].default is None
    assert not fields["updated_at"].is_required() and fields["updated_at"].default is None


def test_event_source_is_always_polymarket_kafka() -> None:
    assert PolymarketEvent(**event_fields()).source == "polymarket-kafka"
    with pytest.raises(ValidationError) as caught:
        PolymarketEvent(**event_fields(source="someone-else"))
    assert [loc for _, loc in problems(caught.value)] == [("source",)]


def test_subscription_from_document_ignores_mongo_id() -> None:
    doc = {
        "_id": "abc",
        "market_id": MARKET,
        "ref_count": 3,
        "created_at": T0,
        "updated_at": T0,
        "threshold": 0.1,
    }
    sub = PolymarketSubscription.from_document(doc)
    assert sub.ref_count == 3 and sub.threshold == 0.1


def test_snapshot_no_price_is_complement() -> None:
    snap = MarketSnapshot(market_id=MARKET, question="q", yes_price=0.7, taken_at=T0)
    assert snap.no_price == pytest.approx(0.3)
    with pytest.raises(ValidationError):
        MarketSnapshot(market_id=MARKET, question="q", yes_price=1.5, taken_at=T0)


def test_only_a_closed_snapshot_carries_a_resolution() -> None:
    fields = {"market_id": MARKET, "question": "q", "yes_price": 0.0, "taken_at": T0}
    assert MarketSnapshot(**fields, closed=True, resolution="void").resolution == "void"
    assert MarketSnapshot(**fields, closed=True).resolution is None
    with pytest.raises(ValidationError, match="only set on a closed market"):
        MarketSnapshot(**fields, resolution="no")
