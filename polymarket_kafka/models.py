"""Data contracts shared with downstream consumers, and the internal market snapshot.

`PolymarketEvent` is the Kafka value of the `polymarket-events` topic and
`PolymarketSubscription` is the MongoDB document of `polymarket_subscriptions`. Both shapes
are fixed by the downstream consumer: required fields stay, unknown fields are rejected
(`extra="forbid"`) and events are immutable (`frozen=True`). New optional fields may be added.

`MarketSnapshot` is internal: one observation of one market, produced by the poller and read
by the (pure) detector.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from enum import Enum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

__all__ = [
    "SOURCE",
    "ConvictionDirection",
    "MarketSnapshot",
    "PolymarketEvent",
    "PolymarketSubscription",
    "PriceSource",
    "Resolution",
    "SignalType",
    "utc",
]


def utc(value: datetime) -> datetime:
    """Return `value` as an aware UTC datetime; naive values are taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(utc)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
#: Where a price came from: a REST poll (`/midpoints`, Gamma for closed markets) or the
#: market channel (WebSocket).
PriceSource = Literal["rest", "ws"]
#: How a closed market resolved: YES won, NO won, no winner (void), or not clear from the
#: outcome prices Gamma reports (a 50-50 resolution, or closed but still settling).
Resolution = Literal["yes", "no", "void", "unknown"]


#: The `source` of every event this service produces (fixed by the downstream contract).
SOURCE: Final = "polymarket-kafka"


class SignalType(str, Enum):
    """Kinds of signal on the platform's buses (shared enum with the OHLCV feed)."""

    OHLCV = "ohlcv"
    POLYMARKET = "polymarket"


class ConvictionDirection(str, Enum):
    """Which way the crowd moved: toward YES (YES price rose) or toward NO (it fell)."""

    TOWARD_YES = "toward_yes"
    TOWARD_NO = "toward_no"

    def mirrored(self) -> ConvictionDirection:
        """The direction seen from the NO side of the same market."""
        if self is ConvictionDirection.TOWARD_YES:
            return ConvictionDirection.TOWARD_NO
        return ConvictionDirection.TOWARD_YES


def _check_uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise ValueError(f"event_id must be a UUID, got {value!r}") from exc


class PolymarketEvent(BaseModel):
    """A conviction change in one Polymarket market: the Kafka value (JSON, UTF-8).

    The Kafka key is `market_id`. Every timestamp is UTC and serialised as ISO-8601.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- required by the downstream contract -------------------------------------------
    event_id: Annotated[str, AfterValidator(_check_uuid)] = Field(
        description="Deterministic UUIDv5 of (market_id, detection episode, rule): a re-sent "
        "event carries the same id, so consumers can deduplicate on it."
    )
    timestamp: UtcDatetime = Field(description="When the triggering snapshot was taken (UTC).")
    market_id: str = Field(min_length=1, description="Polymarket condition id (0x + 64 hex).")
    question: str = Field(description="The market question.")
    yes_price: Probability = Field(description="YES price (implied probability) at `timestamp`.")
    no_price: Probability = Field(description="NO price at `timestamp`.")
    source: Literal["polymarket-kafka"] = Field(
        default=SOURCE, description="Producer of the event: always `polymarket-kafka`."
    )
    published_at: UtcDatetime | None = Field(
        default=None, description="When the service handed the event to Kafka (UTC)."
    )
    signal_type: Literal[SignalType.POLYMARKET] = Field(
        default=SignalType.POLYMARKET, description="Always `polymarket` on this topic."
    )

    # --- conviction: direction and magnitude --------------------------------------------
    direction: ConvictionDirection = Field(description="`toward_yes` or `toward_no`.")
    baseline_yes_price: Probability = Field(description="The YES price the move is measured from.")
    baseline_timestamp: UtcDatetime = Field(description="When the baseline price was observed.")
    price_change: float = Field(
        ge=-1.0, le=1.0, description="yes_price - baseline_yes_price (signed, in probability)."
    )
    abs_price_change: float = Field(ge=0.0, le=1.0, description="|price_change|.")
    log_odds_change: float = Field(
        allow_inf_nan=False,
        description="logit(yes_price) - logit(baseline_yes_price), prices clamped to "
        "[0.001, 0.999]; the same sign as price_change.",
    )
    window_seconds: NonNegative = Field(
        description="Span the move was measured over: timestamp - baseline_timestamp."
    )
    volume: NonNegative | None = Field(
        default=None, description="Market volume in USDC at detection (Gamma), if known."
    )
    liquidity: NonNegative | None = Field(
        default=None, description="Market liquidity in USDC at detection (Gamma), if known."
    )
    rule: str = Field(min_length=1, description="Name of the detection rule that fired.")
    final: bool = Field(
        default=False,
        description="True on the single last event of a market that closed/resolved.",
    )
    severity: str | None = Field(
        default=None,
        description="Severity band the move reached under the rules in force (e.g. minor, "
        "major, extreme).",
    )
    rules_version: str | None = Field(
        default=None,
        description="Version (content hash) of the rules file in force when the event fired.",
    )
    rule_id: str | None = Field(
        default=None,
        description="Identity (hash) of the resolved parameters that fired for this market; "
        "`polymarket-kafka rules explain` shows them.",
    )
    resolution: Resolution | None = Field(
        default=None,
        description="How the market resolved, on its final event only (null on every other "
        "event): `yes`, `no`, `void` (closed with no winner: yes_price is then the last price "
        "observed before it closed, not a payout), or `unknown` (no clear winner in the final "
        "outcome prices, e.g. a 50-50 resolution or a market still settling).",
    )

    catch_up: bool = Field(
        default=False,
        description="True when the move spans a gap in observation: its baseline was seen "
        "before the service stopped (or restarted) and this price after, so it happened at an "
        "unknown moment within `gap_seconds` and is reported late.",
    )
    gap_seconds: NonNegative | None = Field(
        default=None,
        description="On a catch-up event: how long the service saw no price of this market "
        "(from the last observation before the stop to the first after it); null otherwise.",
    )

    price_source: PriceSource | None = Field(
        default=None,
        description="Where the triggering price came from: `ws` (Polymarket's market channel, "
        "streamed) or `rest` (a poll). Added with the WebSocket source: older events have no "
        "such key.",
    )
    price_age_seconds: NonNegative | None = Field(
        default=None,
        description="How old the triggering price was when the service observed it: "
        "`timestamp` minus Polymarket's own timestamp of the update (`ws` only; null for "
        "`rest`, whose price is as of the poll). Added with `price_source`.",
    )

    @field_validator("price_change", "abs_price_change")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value

    @model_validator(mode="after")
    def _resolution_only_when_final(self) -> PolymarketEvent:
        if self.resolution is not None and not self.final:
            raise ValueError("resolution is only set on a final event")
        if (self.gap_seconds is not None) != self.catch_up:
            raise ValueError("gap_seconds is set on a catch-up event, and only there")
        return self

    @field_serializer("timestamp", "published_at", "baseline_timestamp")
    def _iso(self, value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    def to_kafka_value(self) -> bytes:
        """The UTF-8 JSON bytes published as the Kafka message value (`model_dump_json`,
        as bytes straight from the serializer: no decode and encode again)."""
        return self.__pydantic_serializer__.to_json(self)

    @property
    def kafka_key(self) -> bytes:
        """The Kafka message key: the market's condition id."""
        return self.market_id.encode("utf-8")


class PolymarketSubscription(BaseModel):
    """A MongoDB subscription document: a market is watched while `ref_count > 0`."""

    model_config = ConfigDict(extra="forbid")

    market_id: str = Field(min_length=1, description="Polymarket condition id.")
    ref_count: int = Field(default=0, description="Number of subscribers; active when > 0.")
    # Optional, as in the platform's `CandleSubscription`: a document written by another tool
    # (or by hand) without them is still a valid subscription.
    created_at: UtcDatetime | None = Field(default=None, description="Creation timestamp.")
    updated_at: UtcDatetime | None = Field(default=None, description="Last update timestamp.")
    question: str | None = Field(default=None, description="Cached question text, if known.")
    threshold: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Per-market override of the absolute move threshold (probability units).",
    )
    # Finite: an infinite window or cooldown is no setting, and could not be written to
    # the state topic (its JSON has no infinity).
    window_seconds: float | None = Field(
        default=None,
        gt=0.0,
        allow_inf_nan=False,
        description="Per-market override of the rolling window.",
    )
    cooldown_seconds: float | None = Field(
        default=None,
        ge=0.0,
        allow_inf_nan=False,
        description="Per-market override of the cooldown.",
    )

    def is_active(self) -> bool:
        """A subscription is active while somebody holds a reference to it."""
        return self.ref_count > 0

    def subscription_key(self) -> str:
        """Unique key of the subscription (one document per market)."""
        return f"{SignalType.POLYMARKET.value}:{self.market_id}"

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> PolymarketSubscription:
        """Validate a raw MongoDB document, ignoring MongoDB's own `_id`."""
        return cls.model_validate({k: v for k, v in document.items() if k != "_id"})


class MarketSnapshot(BaseModel):
    """One observation of one market (internal; produced by the poller).

    A closed market's snapshot carries its final YES outcome price and how it resolved
    (`resolution`, when known). For a `void` market that price (from Gamma's `["0", "0"]`) is
    no price at all: the detector reports the last price it observed instead.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    market_id: str
    question: str
    yes_price: Probability
    taken_at: UtcDatetime
    closed: bool = False
    resolution: Resolution | None = None
    volume: NonNegative | None = None
    liquidity: NonNegative | None = None
    category: str | None = None
    tags: tuple[str, ...] = ()
    spread: NonNegative | None = None
    threshold: float | None = None
    window_seconds: float | None = None
    cooldown_seconds: float | None = None
    #: Where the price came from, and (streamed only) Polymarket's timestamp of the update.
    source: PriceSource = "rest"
    source_at: UtcDatetime | None = None

    @model_validator(mode="after")
    def _resolution_only_when_closed(self) -> MarketSnapshot:
        if self.resolution is not None and not self.closed:
            raise ValueError("resolution is only set on a closed market")
        return self

    @property
    def no_price(self) -> float:
        """NO price of a binary market: the complement of YES."""
        return round(1.0 - self.yes_price, 10)
