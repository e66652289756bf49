"""`Quotes`: the book, the server's best bid/ask and the last trade of each tracked asset,
and the price Polymarket displays (`displayed_price`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polymarket_kafka.polymarket.stream.frames import (
    BestBidAsk,
    Book,
    LastTrade,
    LevelChange,
    MarketResolved,
    TickSizeChange,
    decode_frame,
)
from polymarket_kafka.polymarket.stream.quotes import (
    DISPLAY_SPREAD,
    Quote,
    Quotes,
    displayed_price,
)

A = "asset-a"
B = "asset-b"
T = 1757908892351

#: The doc's book, worst-first: best bid 0.50, best ask 0.52.
BOOK = Book(
    asset_id=A,
    bids=((0.48, 30.0), (0.49, 20.0), (0.50, 15.0)),
    asks=((0.54, 10.0), (0.53, 60.0), (0.52, 25.0)),
    timestamp_ms=T,
)


def tracked(*assets: str) -> Quotes:
    quotes = Quotes()
    for asset in assets:
        quotes.track(asset)
    return quotes


def change(
    side: str,
    price: float,
    size: float,
    *,
    best_bid: float | None = None,
    best_ask: float | None = None,
    asset: str = A,
    timestamp_ms: int | None = T + 1,
    empty: str = "",
) -> LevelChange:
    """A level change; the server sent the best prices given, and `empty` names a side it
    sent as `""` (empty)."""
    assert side in ("BUY", "SELL")
    return LevelChange(
        asset,
        "BUY" if side == "BUY" else "SELL",
        price,
        size,
        best_bid,
        best_ask,
        timestamp_ms,
        bid_sent=best_bid is not None or empty == "bid",
        ask_sent=best_ask is not None or empty == "ask",
    )


def quote(quotes: Quotes, asset: str = A) -> Quote:
    found = quotes.get(asset)
    assert found is not None
    return found


# --- displayed_price ------------------------------------------------------------------------------


def test_displayed_price_is_the_midpoint_of_a_tight_spread() -> None:
    assert displayed_price(0.50, 0.52, 0.9) == (0.51, 0.02)


def test_displayed_price_is_the_last_trade_above_the_display_spread() -> None:
    assert displayed_price(0.30, 0.50, 0.47) == (0.47, 0.2)


def test_displayed_price_is_the_midpoint_of_a_wide_spread_without_a_trade() -> None:
    assert displayed_price(0.30, 0.50, None) == (0.4, 0.2)


def test_a_spread_of_exactly_the_display_spread_is_the_midpoint() -> None:
    """0.55 - 0.45 is 0.10000000000000003 in floats: rounded, it is not above 0.10."""
    assert DISPLAY_SPREAD < 0.55 - 0.45
    assert displayed_price(0.45, 0.55, 0.9) == (0.5, 0.1)


def test_a_spread_just_above_the_display_spread_is_the_last_trade() -> None:
    assert displayed_price(0.45, 0.5501, 0.9) == (0.9, 0.1001)


def test_the_midpoint_is_rounded_to_drop_float_noise() -> None:
    price, spread = displayed_price(0.1, 0.2, None)
    assert price == 0.15  # (0.1 + 0.2) / 2 is 0.15000000000000002
    assert spread == 0.1


@given(
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.none() | st.integers(0, 10_000),
)
def test_displayed_price_is_a_probability_between_or_the_trade(
    bid_ticks: int, ask_ticks: int, trade_ticks: int | None
) -> None:
    bid, ask = sorted((bid_ticks / 10_000, ask_ticks / 10_000))
    trade = None if trade_ticks is None else trade_ticks / 10_000
    price, spread = displayed_price(bid, ask, trade)
    assert 0.0 <= price <= 1.0
    assert spread == round(ask - bid, 9)
    if spread > DISPLAY_SPREAD and trade is not None:
        assert price == trade
    else:
        assert bid <= price <= ask


# --- tracking -------------------------------------------------------------------------------------


def test_untracked_assets_are_counted_and_dropped() -> None:
    quotes = tracked(A)
    assert quotes.apply(BOOK) == A
    assert quotes.apply(LastTrade(B, 0.4, T)) is None
    assert quotes.apply(BestBidAsk(B, 0.1, 0.2, T)) is None
    assert quotes.untracked == 2
    assert B not in quotes
    assert quotes.get(B) is None
    assert quotes.price(B) is None
    assert len(quotes) == 1


def test_track_keeps_what_is_known_and_untrack_forgets() -> None:
    quotes = tracked(A)
    quotes.apply(BOOK)
    quotes.track(A)  # again: nothing lost
    assert quotes.price(A) == (0.51, 0.02)
    quotes.untrack(A)
    assert A not in quotes
    assert len(quotes) == 0
    assert quotes.apply(BOOK) is None
    assert quotes.untracked == 1
    quotes.untrack(A)  # not tracked: no error
    assert len(quotes) == 0


def test_reset_forgets_the_quote_but_keeps_tracking() -> None:
    quotes = tracked(A)
    quotes.apply(BOOK)
    quotes.apply(LastTrade(A, 0.5, T))
    quotes.reset(A)
    assert A in quotes
    assert quote(quotes) == Quote()
    assert quotes.price(A) is None
    quotes.reset(B)  # not tracked: stays untracked
    assert B not in quotes


def test_a_market_resolved_is_left_to_the_caller() -> None:
    quotes = tracked(A)
    assert quotes.apply(MarketResolved("0xm", (A,), A, T)) is None
    assert quotes.untracked == 0
    assert quote(quotes) == Quote()


# --- the book -------------------------------------------------------------------------------------


def test_a_worst_first_book_gives_the_best_levels() -> None:
    quotes = tracked(A)
    assert quotes.apply(BOOK) == A
    q = quote(quotes)
    assert q.best() == (0.50, 0.52)
    assert quotes.price(A) == (0.51, 0.02)
    assert q.has_book
    assert q.timestamp_ms == T


def test_a_book_replaces_what_was_known() -> None:
    quotes = tracked(A)
    quotes.apply(BOOK)
    quotes.apply(Book(A, ((0.2, 1.0),), ((0.25, 1.0),), T + 5))
    q = quote(quotes)
    assert q.bids == {0.2: 1.0}
    assert q.asks == {0.25: 1.0}
    assert quotes.price(A) == (0.225, 0.05)
    assert q.timestamp_ms == T + 5


def test_a_book_drops_zero_size_levels_and_rounds_prices() -> None:
    quotes = tracked(A)
    quotes.apply(Book(A, ((0.4, 0.0), (0.30000000001, 2.0)), ((0.6, 0.0), (0.5, 1.0)), T))
    q = quote(quotes)
    assert q.bids == {0.3: 2.0}
    assert q.asks == {0.5: 1.0}
    assert q.best() == (0.3, 0.5)


def test_a_book_with_the_same_price_twice_keeps_the_last_level() -> None:
    quotes = tracked(A)
    quotes.apply(Book(A, ((0.4, 1.0), (0.40001, 7.0)), (), T))
    assert quote(quotes).bids == {0.4: 7.0}


def test_the_last_trade_of_a_book_is_kept_and_a_book_without_one_keeps_the_old() -> None:
    quotes = tracked(A)
    quotes.apply(Book(A, BOOK.bids, BOOK.asks, T, last_trade=0.49))
    assert quote(quotes).last_trade == 0.49
    quotes.apply(BOOK)  # no last trade in it
    assert quote(quotes).last_trade == 0.49


@pytest.mark.parametrize(
    ("bids", "asks"),
    [((), ((0.5, 1.0),)), (((0.5, 1.0),), ()), ((), ())],
)
def test_a_one_sided_or_empty_book_has_no_price(
    bids: tuple[tuple[float, float], ...], asks: tuple[tuple[float, float], ...]
) -> None:
    quotes = tracked(A)
    assert quotes.apply(Book(A, bids, asks, T)) == A
    assert quotes.price(A) is None


def test_a_crossed_book_has_no_price() -> None:
    quotes = tracked(A)
    quotes.apply(Book(A, ((0.55, 1.0),), ((0.50, 1.0),), T))
    assert quote(quotes).best() == (0.55, 0.50)
    assert quotes.price(A) is None


def test_a_locked_book_prices_at_the_common_price() -> None:
    quotes = tracked(A)
    quotes.apply(Book(A, ((0.5, 1.0),), ((0.5, 1.0),), T))
    assert quotes.price(A) == (0.5, 0.0)


def test_a_wide_book_shows_the_last_trade() -> None:
    quotes = tracked(A)
    quotes.apply(Book(A, ((0.2, 1.0),), ((0.8, 1.0),), T))
    assert quotes.price(A) == (0.5, 0.6)  # no trade yet: the midpoint
    assert quotes.apply(LastTrade(A, 0.71, T + 1)) == A
    assert quotes.price(A) == (0.71, 0.6)


def test_no_price_before_anything_arrives() -> None:
    quotes = tracked(A)
    assert quotes.price(A) is None
    assert quotes.apply(LastTrade(A, 0.4, T)) == A
    assert quotes.price(A) is None  # a trade alone is no quote


# --- level changes --------------------------------------------------------------------------------


def test_a_level_change_updates_the_local_book() -> None:
    quotes = tracked(A)
    quotes.apply(BOOK)
    assert quotes.apply(change("BUY", 0.51, 5.0)) == A
    assert quote(quotes).bids[0.51] == 5.0
    assert quotes.price(A) == (0.515, 0.01)
    assert quotes.apply(change("SELL", 0.515, 3.0)) == A
    assert quotes.price(A) == (0.5125, 0.005)


def test_a_size_zero_removes_the_level() -> None:
    quotes = tracked(A)
    quotes.apply(BOOK)
    quotes.apply(change("SELL", 0.52, 0.0))
    assert 0.52 not in quote(quotes).asks
    assert quotes.price(A) == (0.515, 0.03)
    quotes.apply(change("BUY", 0.50, 0.0))
    assert quotes.price(A) == (0.51, 0.04)


def test_removing_a_level_that_is_not_there_changes_nothing() -> None:
    quotes = tracked(A)
    quotes.apply(BOOK)
    quotes.apply(change("BUY", 0.10, 0.0))
    assert quote(quotes).bids == {0.48: 30.0, 0.49: 20.0, 0.5: 15.0}
    assert quotes.price(A) == (0.51, 0.02)


def test_a_level_change_price_is_rounded_to_the_book_key() -> None:
    quotes = tracked(A)
    quotes.apply(BOOK)
    quotes.apply(change("SELL", 0.52000000001, 0.0))
    assert 0.52 not in quote(quotes).asks


def test_removing_the_last_level_of_a_side_leaves_no_price() -> None:
    quotes = tracked(A)
    quotes.apply(Book(A, ((0.4, 1.0),), ((0.6, 1.0),), T))
    quotes.apply(change("BUY", 0.4, 0.0))
    assert quote(quotes).best() == (None, 0.6)
    assert quotes.price(A) is None


def test_a_level_change_without_a_book_or_best_prices_changes_nothing() -> None:
    quotes = tracked(A)
    assert quotes.apply(change("BUY", 0.5, 5.0)) == A  # may have changed: the caller looks
    q = quote(quotes)
    assert q.bids == {}
    assert not q.dirty
    assert quotes.price(A) is None
    assert q.timestamp_ms == T + 1


def test_the_server_best_bid_ask_of_a_change_overrides_the_local_book() -> None:
    quotes = tracked(A)
    quotes.apply(BOOK)
    # The local book says 0.51/0.52 after this change; the server says 0.50/0.53.
    quotes.apply(change("BUY", 0.51, 5.0, best_bid=0.50, best_ask=0.53))
    assert quote(quotes).bids[0.51] == 5.0  # the book is still kept
    assert quotes.price(A) == (0.515, 0.03)


def test_the_server_best_bid_ask_of_a_change_without_a_book() -> None:
    quotes = tracked(A)
    quotes.apply(change("BUY", 0.5, 200.0, best_bid=0.5, best_ask=1.0))
    q = quote(quotes)
    assert not q.has_book
    assert q.bids == {}
    assert q.best() == (0.5, 1.0)
    assert quotes.price(A) == (0.75, 0.5)


def test_a_change_with_one_server_side_empty_has_no_price() -> None:
    quotes = tracked(A)
    quotes.apply(BOOK)
    quotes.apply(change("SELL", 0.52, 0.0, best_bid=0.5, empty="ask"))
    assert quote(quotes).best() == (0.5, None)
    assert quotes.price(A) is None


def test_a_side_the_server_left_out_comes_from_the_local_book() -> None:
    quotes = tracked(A)
    quotes.apply(BOOK)  # best bid 0.50, best ask 0.52
    quotes.apply(change("BUY", 0.51, 5.0, best_bid=0.51))  # no best_ask key at all
    assert quote(quotes).best() == (0.51, 0.52)
    assert quotes.price(A) == (0.515, 0.01)


def test_a_later_change_without_best_prices_recomputes_from_the_book() -> None:
    quotes = tracked(A)
    quotes.apply(BOOK)
    quotes.apply(change("BUY", 0.51, 5.0, best_bid=0.40, best_ask=0.60))
    assert quotes.price(A) == (0.5, 0.2)
    quotes.apply(change("BUY", 0.30, 1.0))  # no server view: the book decides again
    assert quotes.price(A) == (0.515, 0.01)


# --- best_bid_ask ---------------------------------------------------------------------------------


def test_best_bid_ask_overrides_the_local_book() -> None:
    quotes = tracked(A)
    quotes.apply(BOOK)
    assert quotes.apply(BestBidAsk(A, 0.73, 0.77, T + 2)) == A
    assert quotes.price(A) == (0.75, 0.04)
    assert quote(quotes).bids == {0.48: 30.0, 0.49: 20.0, 0.5: 15.0}  # the book stays
    assert quote(quotes).timestamp_ms == T + 2


def test_best_bid_ask_without_a_book() -> None:
    quotes = tracked(A)
    quotes.apply(BestBidAsk(A, 0.73, 0.77, T))
    assert quotes.price(A) == (0.75, 0.04)


@pytest.mark.parametrize(("bid", "ask"), [(None, 0.77), (0.73, None), (None, None)])
def test_best_bid_ask_with_an_empty_side_has_no_price(bid: float | None, ask: float | None) -> None:
    quotes = tracked(A)
    quotes.apply(BOOK)
    quotes.apply(BestBidAsk(A, bid, ask, T))
    assert quotes.price(A) is None


def test_best_bid_ask_crossed_has_no_price() -> None:
    quotes = tracked(A)
    quotes.apply(BestBidAsk(A, 0.6, 0.5, T))
    assert quotes.price(A) is None


def test_a_book_after_best_bid_ask_decides_again() -> None:
    quotes = tracked(A)
    quotes.apply(BestBidAsk(A, 0.1, 0.2, T))
    quotes.apply(BOOK)
    assert quotes.price(A) == (0.51, 0.02)


def test_a_message_without_a_timestamp_keeps_the_last_one() -> None:
    quotes = tracked(A)
    quotes.apply(BOOK)
    quotes.apply(BestBidAsk(A, 0.73, 0.77, None))
    assert quote(quotes).timestamp_ms == T


# --- tick size changes ----------------------------------------------------------------------------


def test_a_tick_size_change_voids_the_book_until_the_next_one() -> None:
    quotes = tracked(A)
    quotes.apply(Book(A, BOOK.bids, BOOK.asks, T, last_trade=0.5))
    assert quotes.apply(TickSizeChange(A, T + 3)) == A
    q = quote(quotes)
    assert (q.bids, q.asks, q.has_book, q.dirty) == ({}, {}, False, False)
    assert q.best() == (None, None)
    assert quotes.price(A) is None
    assert q.last_trade == 0.5  # a trade is still a trade
    assert q.timestamp_ms == T + 3
    # Level changes do not rebuild a void book...
    quotes.apply(change("BUY", 0.5, 1.0))
    quotes.apply(change("SELL", 0.52, 1.0))
    assert quotes.price(A) is None
    assert quote(quotes).bids == {}
    # ... the next book does.
    quotes.apply(BOOK)
    assert quotes.price(A) == (0.51, 0.02)


def test_a_tick_size_change_drops_the_server_best_too() -> None:
    quotes = tracked(A)
    quotes.apply(BestBidAsk(A, 0.73, 0.77, T))
    quotes.apply(TickSizeChange(A, None))
    assert quotes.price(A) is None


# --- one asset does not touch another -------------------------------------------------------------


def test_assets_are_independent() -> None:
    quotes = tracked(A, B)
    quotes.apply(BOOK)
    quotes.apply(BestBidAsk(B, 0.2, 0.3, T))
    quotes.apply(TickSizeChange(A, T))
    assert quotes.price(A) is None
    assert quotes.price(B) == (0.25, 0.1)


def test_decoded_real_frames_end_to_end() -> None:
    """The doc's frames, decoded and folded in: the book, then a level removal, a server best
    bid/ask and a trade."""
    quotes = tracked(A)
    frames = [
        '[{"event_type":"book","asset_id":"asset-a","market":"0xm",'
        '"bids":[{"price":"0.48","size":"30"},{"price":"0.49","size":"20"},'
        '{"price":"0.50","size":"15"}],'
        '"asks":[{"price":"0.54","size":"10"},{"price":"0.53","size":"60"},'
        '{"price":"0.52","size":"25"}],"timestamp":"1757908892351","last_trade_price":""}]',
        '{"event_type":"price_change","market":"0xm","timestamp":"1757908892352",'
        '"price_changes":[{"asset_id":"asset-a","price":"0.50","size":"0","side":"BUY"}]}',
    ]
    for text in frames:
        for message in decode_frame(text).messages:
            quotes.apply(message)
    assert quotes.price(A) == (0.505, 0.03)
    for message in decode_frame(
        '{"event_type":"best_bid_ask","asset_id":"asset-a","best_bid":"0.3","best_ask":"0.6",'
        '"timestamp":"1757908892353"}'
    ).messages:
        quotes.apply(message)
    assert quotes.price(A) == (0.45, 0.3)
    for message in decode_frame(
        '{"event_type":"last_trade_price","asset_id":"asset-a","price":"0.58",'
        '"timestamp":"1757908892354"}'
    ).messages:
        quotes.apply(message)
    assert quotes.price(A) == (0.58, 0.3)
    assert quote(quotes).timestamp_ms == 1757908892354


def test_resolved_price_names_the_winner_or_falls_back_to_the_last_price() -> None:
    from polymarket_kafka.polymarket.stream.frames import MarketResolved
    from polymarket_kafka.polymarket.stream.quotes import resolved_price

    def resolved(winner: str | None) -> MarketResolved:
        return MarketResolved("0xm", ("yes", "no"), winner, 1_700_000_000_000)

    assert resolved_price(resolved("yes"), "yes", 0.4) == ("yes", 1.0)
    assert resolved_price(resolved("no"), "yes", 0.4) == ("no", 0.0)
    # No winner, or one that is not an asset of the market: the last price, if any.
    assert resolved_price(resolved(None), "yes", 0.4) == ("unknown", 0.4)
    assert resolved_price(resolved("other"), "yes", 0.4) == ("unknown", 0.4)
    assert resolved_price(resolved(None), "yes", None) is None
