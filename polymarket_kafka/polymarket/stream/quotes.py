"""The quotes of the streamed assets: order book, best bid and ask, last trade (pure).

`Quotes.apply` folds one decoded message (`frames`) into the quote of its asset and says
whether that asset's price may have changed; `Quotes.price` gives the YES price the REST path
would report (`displayed_price`): the midpoint of the best bid and ask or, when the spread is
wider than `DISPLAY_SPREAD`, the last trade, as Polymarket displays it (§5.7).

The best bid and ask come from the server when it sends them (`best_bid_ask`, or inside a
`price_change` item); otherwise from a local book kept from `book` snapshots and level
changes. A tick size change voids the local book until the next `book` (§4.2). Only tracked
assets are kept: a message for any other asset is counted and dropped.

Bounds: one quote per tracked asset; a book side holds at most one level per price, and
prices are validated in [0, 1] and rounded to `LEVEL_DECIMALS` places, so a side never holds
more than 10,001 levels (Polymarket's finest tick is 0.0001).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from polymarket_kafka.models import Resolution
from polymarket_kafka.polymarket.stream.frames import (
    BestBidAsk,
    Book,
    LastTrade,
    LevelChange,
    MarketResolved,
    Message,
    TickSizeChange,
)

__all__ = [
    "DISPLAY_SPREAD",
    "LEVEL_DECIMALS",
    "Quote",
    "Quotes",
    "displayed_price",
    "resolved_price",
]

#: Above this spread Polymarket displays the last trade instead of the midpoint.
DISPLAY_SPREAD = 0.10
#: Prices are rounded to this many decimals (the finest tick is 0.0001).
LEVEL_DECIMALS = 4
#: Float noise below this is not a price difference.
_PRECISION = 9


def displayed_price(
    best_bid: float, best_ask: float, last_trade: float | None
) -> tuple[float, float]:
    """(price, spread): the midpoint, or the last trade when the spread is wider than
    `DISPLAY_SPREAD` and a trade is known."""
    spread = round(best_ask - best_bid, _PRECISION)
    if spread > DISPLAY_SPREAD and last_trade is not None:
        return last_trade, spread
    return round((best_bid + best_ask) / 2, _PRECISION), spread


def resolved_price(
    message: MarketResolved, yes_asset: str, last: float | None
) -> tuple[Resolution, float] | None:
    """How a `market_resolved` message resolved the market whose YES asset is `yes_asset`,
    and its final YES price: 1 or 0 with a winner, else the `last` price seen (None when
    there is none to report)."""
    winner = message.winning_asset_id
    if winner == yes_asset:
        return "yes", 1.0
    if winner is not None and winner in message.asset_ids:
        return "no", 0.0
    return None if last is None else ("unknown", last)


@dataclass(slots=True)
class Quote:
    """What is known of one asset's market."""

    bids: dict[float, float] = field(default_factory=dict)
    asks: dict[float, float] = field(default_factory=dict)
    #: The local book reflects a `book` snapshot (and the changes since).
    has_book: bool = False
    best_bid: float | None = None
    best_ask: float | None = None
    #: The best bid/ask must be recomputed from the local book before use.
    dirty: bool = False
    last_trade: float | None = None
    #: Exchange time (Unix ms) of the latest message that touched the quote.
    timestamp_ms: int | None = None
    #: Messages folded in so far (tells whether the quote changed between two looks).
    updates: int = 0

    def best(self) -> tuple[float | None, float | None]:
        if self.dirty:
            self.best_bid = max(self.bids) if self.bids else None
            self.best_ask = min(self.asks) if self.asks else None
            self.dirty = False
        return self.best_bid, self.best_ask

    def sides(self) -> tuple[float, float] | None:
        """(best bid, best ask) when both are known and not crossed, else None."""
        bid, ask = self.best()
        if bid is None or ask is None or bid > ask:
            return None
        return bid, ask

    def price(self) -> tuple[float, float] | None:
        """(YES price, spread), or None without both sides (or with a crossed book)."""
        sides = self.sides()
        return None if sides is None else displayed_price(*sides, self.last_trade)

    def priced(self) -> bool:
        """Both sides known and not crossed: `price()` and `midpoint()` give a value."""
        return self.sides() is not None

    def midpoint(self) -> float | None:
        """The plain midpoint (what REST's `/midpoints` reports), when both sides are known."""
        sides = self.sides()
        return None if sides is None else round((sides[0] + sides[1]) / 2, _PRECISION)


def _key(price: float) -> float:
    return round(price, LEVEL_DECIMALS)


def _side(levels: tuple[tuple[float, float], ...]) -> dict[float, float]:
    return {_key(price): size for price, size in levels if size > 0}


@dataclass
class Quotes:
    """The quotes of every tracked asset (see the module notes)."""

    _quotes: dict[str, Quote] = field(default_factory=dict)
    #: Messages dropped because their asset is not tracked.
    untracked: int = 0

    def track(self, asset_id: str) -> None:
        self._quotes.setdefault(asset_id, Quote())

    def untrack(self, asset_id: str) -> None:
        self._quotes.pop(asset_id, None)

    def reset(self, asset_id: str) -> None:
        """Forget what is known of a tracked asset (it waits for a new `book`)."""
        if asset_id in self._quotes:
            self._quotes[asset_id] = Quote()

    def __contains__(self, asset_id: object) -> bool:
        return asset_id in self._quotes

    def __len__(self) -> int:
        return len(self._quotes)

    def get(self, asset_id: str) -> Quote | None:
        return self._quotes.get(asset_id)

    def price(self, asset_id: str) -> tuple[float, float] | None:
        quote = self._quotes.get(asset_id)
        return None if quote is None else quote.price()

    def apply(self, message: Message) -> str | None:
        """Fold `message` in; return the asset whose price may have changed, else None.

        `MarketResolved` concerns a market, not a quote: the caller handles it (None here).
        """
        if isinstance(message, MarketResolved):
            return None
        quote = self._quotes.get(message.asset_id)
        if quote is None:
            self.untracked += 1
            return None
        quote.updates += 1
        if message.timestamp_ms is not None:
            quote.timestamp_ms = message.timestamp_ms
        if isinstance(message, LevelChange):
            _apply_change(quote, message)
        elif isinstance(message, BestBidAsk):
            quote.best_bid, quote.best_ask, quote.dirty = message.best_bid, message.best_ask, False
        elif isinstance(message, Book):
            quote.bids, quote.asks = _side(message.bids), _side(message.asks)
            quote.has_book, quote.dirty = True, True
            if message.last_trade is not None:
                quote.last_trade = message.last_trade
        elif isinstance(message, LastTrade):
            quote.last_trade = message.price
        else:
            assert isinstance(message, TickSizeChange)
            quote.bids, quote.asks = {}, {}
            quote.has_book, quote.dirty = False, False
            quote.best_bid = quote.best_ask = None
        return message.asset_id


def _apply_change(quote: Quote, change: LevelChange) -> None:
    if quote.has_book:
        side = quote.bids if change.side == "BUY" else quote.asks
        key = _key(change.price)
        if change.size > 0:
            side[key] = change.size
        else:
            side.pop(key, None)
    if quote.has_book:
        quote.dirty = True
    if change.bid_sent or change.ask_sent:
        # The server's own view after the change is authoritative (`""`: an empty side); a
        # side it left out is the local book's (or, without a book, the last one known).
        bid, ask = quote.best()
        quote.best_bid = change.best_bid if change.bid_sent else bid
        quote.best_ask = change.best_ask if change.ask_sent else ask
