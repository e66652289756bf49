"""Decode market-channel frames into typed messages (pure: no I/O, no clock).

The market channel (shared/polymarket-api.md §4) sends text frames that are one JSON object,
a JSON array of them, or bare text (`PONG`, `NO NEW ASSETS`). Numbers arrive as strings,
timestamps as strings of Unix milliseconds, and the schema drifts (`price_change` moved its
fields into `price_changes[]` on 2025-09-15; both shapes are read). Decoding is tolerant per
message: one bad message in an array is reported (`Frame.errors`) and the others are kept;
a message of an unknown `event_type` is counted and skipped, never an error.

Every message names the asset (token or position id) it is about; the caller maps assets to
markets with its own metadata and does not trust `market` alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "BestBidAsk",
    "Book",
    "Frame",
    "LastTrade",
    "LevelChange",
    "MarketResolved",
    "Message",
    "TickSizeChange",
    "decode_frame",
    "exchange_time_of",
]

#: A price level as (price, size); size 0 removes the level.
Level = tuple[float, float]

#: Bare text frames the server sends that carry no market data.
_TEXT_FRAMES = {"PONG": "pong", "NO NEW ASSETS": "no_new_assets"}
#: Message types that carry nothing the service uses (counted, not decoded).
_IGNORED_TYPES = frozenset({"new_market"})
#: How much of a bad frame an error message quotes.
_EXCERPT = 120


@dataclass(frozen=True, slots=True)
class Book:
    """A full order book of one asset (`book`): replaces what was known of it."""

    asset_id: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    timestamp_ms: int | None
    last_trade: float | None = None


@dataclass(frozen=True, slots=True)
class LevelChange:
    """One level of one asset changed (`price_change`); `best_bid`/`best_ask` as the server
    computed them after the change, when it sent them."""

    asset_id: str
    side: Literal["BUY", "SELL"]
    price: float
    size: float
    best_bid: float | None
    best_ask: float | None
    timestamp_ms: int | None
    #: Which of `best_bid`/`best_ask` the server sent (`""`: that side is empty, None here);
    #: a side it left out is unknown, not empty.
    bid_sent: bool = False
    ask_sent: bool = False


@dataclass(frozen=True, slots=True)
class BestBidAsk:
    """The best bid and ask of one asset (`best_bid_ask`, custom feature); None: side empty."""

    asset_id: str
    best_bid: float | None
    best_ask: float | None
    timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class LastTrade:
    """A trade of one asset (`last_trade_price`)."""

    asset_id: str
    price: float
    timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class TickSizeChange:
    """The tick size of one asset changed: the local book is void until the next `book`."""

    asset_id: str
    timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class MarketResolved:
    """A market resolved (`market_resolved`, custom feature)."""

    market: str
    asset_ids: tuple[str, ...]
    winning_asset_id: str | None
    timestamp_ms: int | None


Message = Book | LevelChange | BestBidAsk | LastTrade | TickSizeChange | MarketResolved


@dataclass
class Frame:
    """What one text frame held: its messages, a count per message type (for metrics:
    `book`, `price_change`, ..., `pong`, `no_new_assets`, `empty`, `unknown`), and one line
    per message that could not be decoded."""

    messages: list[Message] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def count(self, kind: str, n: int = 1) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + n


class _Bad(ValueError):
    """A message that cannot be decoded (the reason, without the payload)."""


def decode_frame(text: str) -> Frame:
    """Decode one text frame; never raises (bad content lands in `Frame.errors`)."""
    frame = Frame()
    stripped = text.strip()
    kind = _TEXT_FRAMES.get(stripped)
    if kind is not None:
        frame.count(kind)
        return frame
    try:
        payload = json.loads(stripped)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        frame.count("malformed")
        frame.errors.append(f"not JSON: {_excerpt(text)}")
        return frame
    items: Sequence[Any] = payload if isinstance(payload, list) else [payload]
    if not items:
        frame.count("empty")  # `[]`: an unknown or closed asset; the connection is fine
    for item in items:
        _decode_message(item, frame)
    return frame


def _decode_message(item: Any, frame: Frame) -> None:
    if not isinstance(item, Mapping):
        frame.count("malformed")
        frame.errors.append(f"not a JSON object: {_excerpt(json.dumps(item))}")
        return
    event_type = item.get("event_type")
    if not isinstance(event_type, str):
        frame.count("malformed")
        frame.errors.append(f"no event_type: {_excerpt(json.dumps(item))}")
        return
    decoder = _DECODERS.get(event_type)
    if decoder is None:
        frame.count(event_type if event_type in _IGNORED_TYPES else "unknown")
        return
    try:
        decoder(item, frame)
    except _Bad as exc:
        frame.count("malformed")
        frame.errors.append(f"{event_type}: {exc}")
    else:
        frame.count(event_type)


def _book(item: Mapping[str, Any], frame: Frame) -> None:
    frame.messages.append(
        Book(
            asset_id=_asset(item, "asset_id"),
            bids=_levels(item.get("bids", []), "bids"),
            asks=_levels(item.get("asks", []), "asks"),
            timestamp_ms=_timestamp(item),
            last_trade=_optional_price(item, "last_trade_price"),
        )
    )


def _price_change(item: Mapping[str, Any], frame: Frame) -> None:
    timestamp = _timestamp(item)
    changes = item.get("price_changes")
    if changes is None:  # the shape before 2025-09-15: one change, at the top level
        changes = [item]
    if not isinstance(changes, list):
        raise _Bad("price_changes is not a list")
    decoded = []
    for change in changes:
        if not isinstance(change, Mapping):
            raise _Bad("a price_changes item is not an object")
        side = change.get("side")
        if side not in ("BUY", "SELL"):
            raise _Bad(f"side must be BUY or SELL, got {_excerpt(repr(side))}")
        decoded.append(
            LevelChange(
                asset_id=_asset(change, "asset_id"),
                side=side,
                price=_price(change, "price"),
                size=_size(change.get("size"), "size"),
                best_bid=_optional_price(change, "best_bid"),
                best_ask=_optional_price(change, "best_ask"),
                timestamp_ms=timestamp,
                bid_sent="best_bid" in change and change["best_bid"] is not None,
                ask_sent="best_ask" in change and change["best_ask"] is not None,
            )
        )
    frame.messages.extend(decoded)


def _best_bid_ask(item: Mapping[str, Any], frame: Frame) -> None:
    frame.messages.append(
        BestBidAsk(
            asset_id=_asset(item, "asset_id"),
            best_bid=_optional_price(item, "best_bid"),
            best_ask=_optional_price(item, "best_ask"),
            timestamp_ms=_timestamp(item),
        )
    )


def _last_trade(item: Mapping[str, Any], frame: Frame) -> None:
    frame.messages.append(
        LastTrade(_asset(item, "asset_id"), _price(item, "price"), _timestamp(item))
    )


def _tick_size_change(item: Mapping[str, Any], frame: Frame) -> None:
    frame.messages.append(TickSizeChange(_asset(item, "asset_id"), _timestamp(item)))


def _market_resolved(item: Mapping[str, Any], frame: Frame) -> None:
    assets = item.get("assets_ids", [])
    if not isinstance(assets, list) or not all(isinstance(a, str) and a for a in assets):
        raise _Bad("assets_ids is not a list of ids")
    winner = item.get("winning_asset_id")
    frame.messages.append(
        MarketResolved(
            market=_asset(item, "market"),
            asset_ids=tuple(assets),
            winning_asset_id=winner if isinstance(winner, str) and winner else None,
            timestamp_ms=_timestamp(item),
        )
    )


_DECODERS = {
    "book": _book,
    "price_change": _price_change,
    "best_bid_ask": _best_bid_ask,
    "last_trade_price": _last_trade,
    "tick_size_change": _tick_size_change,
    "market_resolved": _market_resolved,
}


# --- fields ---------------------------------------------------------------------------------


def _asset(item: Mapping[str, Any], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise _Bad(f"{key} missing or not a string")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _Bad(f"{what} is not a number: {_excerpt(repr(value))}")
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an integer beyond any float
        raise _Bad(f"{what} is not a number: {_excerpt(repr(value))}") from None
    if not math.isfinite(number):
        raise _Bad(f"{what} is not finite: {_excerpt(repr(value))}")
    return number


def _check_price(number: float, what: str) -> float:
    if not 0.0 <= number <= 1.0:
        raise _Bad(f"{what} {number!r} is outside [0, 1]")
    return number


def _price(item: Mapping[str, Any], key: str) -> float:
    return _check_price(_number(item.get(key), key), key)


def _optional_price(item: Mapping[str, Any], key: str) -> float | None:
    """A price that may be missing or `""` (an empty side, no trade yet)."""
    value = item.get(key)
    if value is None or value == "":
        return None
    return _check_price(_number(value, key), key)


def _size(value: Any, what: str) -> float:
    size = _number(value, what)
    if size < 0:
        raise _Bad(f"{what} {size!r} is negative")
    return size


def _levels(raw: Any, what: str) -> tuple[Level, ...]:
    if not isinstance(raw, list):
        raise _Bad(f"{what} is not a list")
    levels = []
    for level in raw:
        if not isinstance(level, Mapping):
            raise _Bad(f"a level of {what} is not an object")
        price = _check_price(_number(level.get("price"), f"{what} price"), f"{what} price")
        levels.append((price, _size(level.get("size"), f"{what} size")))
    return tuple(levels)


def _timestamp(item: Mapping[str, Any]) -> int | None:
    """Unix milliseconds, or None when missing or unreadable (the data is still good)."""
    value = item.get("timestamp")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def exchange_time_of(timestamp_ms: int | None) -> datetime | None:
    """A message's Unix-ms timestamp as an aware UTC datetime (None: missing or absurd)."""
    if timestamp_ms is None:
        return None
    try:
        return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _excerpt(text: str) -> str:
    """The start of `text` on one line (control characters escaped)."""
    cut = text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."
    return cut.encode("unicode_escape").decode("ascii")
