"""`decode_frame`: the market channel's real frame shapes (shared/polymarket-api.md §4.2),
tolerant per message, and never raising (hypothesis)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polymarket_kafka.polymarket.stream.frames import (
    BestBidAsk,
    Book,
    Frame,
    LastTrade,
    LevelChange,
    MarketResolved,
    TickSizeChange,
    decode_frame,
)

ASSET = "65818619657568813474341868652308942079804919287380422192892211131408793125422"
MARKET = "0xbd31dc8a20211944f6b70f31557f1001557b59905b7738480ca09bd4532f84af"
OTHER = "21742633143463906290569050155826241533067272736897614950488156847949938836455"

#: The doc's `book` example, levels worst-first (bids ascending, asks descending), plus the
#: live additions `tick_size` and `last_trade_price`.
BOOK: dict[str, Any] = {
    "event_type": "book",
    "asset_id": ASSET,
    "market": MARKET,
    "bids": [
        {"price": "0.48", "size": "30"},
        {"price": "0.49", "size": "20"},
        {"price": "0.50", "size": "15"},
    ],
    "asks": [
        {"price": "0.54", "size": "10"},
        {"price": "0.53", "size": "60"},
        {"price": "0.52", "size": "25"},
    ],
    "timestamp": "1757908892351",
    "hash": "0xabc123",
    "tick_size": "0.01",
    "last_trade_price": "0.51",
}

#: The current `price_change` shape (since 2025-09-15): the changes in `price_changes[]`.
PRICE_CHANGE: dict[str, Any] = {
    "event_type": "price_change",
    "market": MARKET,
    "price_changes": [
        {
            "asset_id": ASSET,
            "price": "0.5",
            "size": "200",
            "side": "BUY",
            "hash": "56621a121a47ed9333273e21c83b660cff37ae50",
            "best_bid": "0.5",
            "best_ask": "1",
        }
    ],
    "timestamp": "1757908892351",
}

#: The `price_change` shape before 2025-09-15: one change at the top level.
OLD_PRICE_CHANGE: dict[str, Any] = {
    "event_type": "price_change",
    "market": MARKET,
    "asset_id": ASSET,
    "price": "0.47",
    "size": "0",
    "side": "SELL",
    "hash": "0xdef",
    "timestamp": "1724564136087",
}

BEST_BID_ASK: dict[str, Any] = {
    "event_type": "best_bid_ask",
    "market": MARKET,
    "asset_id": ASSET,
    "best_bid": "0.73",
    "best_ask": "0.77",
    "spread": "0.04",
    "timestamp": "1766789469958",
}

LAST_TRADE: dict[str, Any] = {
    "event_type": "last_trade_price",
    "asset_id": ASSET,
    "market": MARKET,
    "price": "0.491",
    "side": "SELL",
    "size": "85.36",
    "fee_rate_bps": "0",
    "timestamp": "1724564136087",
}

TICK_SIZE_CHANGE: dict[str, Any] = {
    "event_type": "tick_size_change",
    "asset_id": ASSET,
    "market": MARKET,
    "old_tick_size": "0.01",
    "new_tick_size": "0.001",
    "timestamp": "1739068041853",
}

MARKET_RESOLVED: dict[str, Any] = {
    "event_type": "market_resolved",
    "id": "1031769",
    "market": MARKET,
    "assets_ids": [ASSET, OTHER],
    "winning_asset_id": ASSET,
    "winning_outcome": "Yes",
    "timestamp": "1766790415550",
    "tags": ["stocks"],
}

NEW_MARKET: dict[str, Any] = {
    "event_type": "new_market",
    "id": "1",
    "question": "Will it?",
    "market": MARKET,
    "slug": "will-it",
    "assets_ids": [ASSET, OTHER],
    "outcomes": ["Yes", "No"],
    "event_message": {"id": "2", "ticker": "t", "slug": "s", "title": "T"},
    "tags": [],
    "active": True,
    "clob_token_ids": [ASSET, OTHER],
    "order_price_min_tick_size": "0.01",
}


def decode(*items: Any) -> Frame:
    return decode_frame(json.dumps(list(items) if len(items) != 1 else items[0]))


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


def without(base: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k != key}


def only_error(frame: Frame) -> str:
    assert frame.messages == []
    assert frame.kinds == {"malformed": 1}
    (error,) = frame.errors
    return error


# --- the real shapes ------------------------------------------------------------------------------


def test_book_keeps_the_levels_as_sent_worst_first() -> None:
    frame = decode(BOOK)
    assert frame.messages == [
        Book(
            asset_id=ASSET,
            bids=((0.48, 30.0), (0.49, 20.0), (0.50, 15.0)),
            asks=((0.54, 10.0), (0.53, 60.0), (0.52, 25.0)),
            timestamp_ms=1757908892351,
            last_trade=0.51,
        )
    ]
    assert frame.kinds == {"book": 1}
    assert frame.errors == []


def test_book_of_an_empty_market_has_empty_sides_and_no_trade() -> None:
    (book,) = decode(with_(BOOK, bids=[], asks=[], last_trade_price="")).messages
    assert book == Book(ASSET, (), (), 1757908892351, None)


def test_book_without_a_last_trade_price_key() -> None:
    (book,) = decode(without(BOOK, "last_trade_price")).messages
    assert isinstance(book, Book)
    assert book.last_trade is None


@pytest.mark.parametrize("side", ["bids", "asks"])
def test_book_with_a_side_left_out_reads_it_as_empty(side: str) -> None:
    """`_book` defaults a missing side to `()`, i.e. means to read it as an empty side; the
    side check then refuses that very default, and the whole book is lost."""
    frame = decode(without(BOOK, side))
    assert frame.errors == []
    (book,) = frame.messages
    assert isinstance(book, Book)
    assert getattr(book, side) == ()


def test_initial_dump_is_one_array_with_a_book_per_asset() -> None:
    frame = decode(BOOK, with_(BOOK, asset_id=OTHER))
    assert [m.asset_id for m in frame.messages if isinstance(m, Book)] == [ASSET, OTHER]
    assert frame.kinds == {"book": 2}


def test_price_change_current_shape() -> None:
    frame = decode(PRICE_CHANGE)
    assert frame.messages == [
        LevelChange(
            asset_id=ASSET,
            side="BUY",
            price=0.5,
            size=200.0,
            best_bid=0.5,
            best_ask=1.0,
            timestamp_ms=1757908892351,
            bid_sent=True,
            ask_sent=True,
        )
    ]
    assert frame.kinds == {"price_change": 1}


def test_price_change_tells_an_empty_side_from_one_left_out() -> None:
    item = {"asset_id": ASSET, "price": "0.5", "size": "1", "side": "BUY", "best_bid": ""}
    (change,) = decode({"event_type": "price_change", "price_changes": [item]}).messages
    assert isinstance(change, LevelChange)
    assert (change.best_bid, change.bid_sent) == (None, True)  # sent empty: no bid
    assert (change.best_ask, change.ask_sent) == (None, False)  # not sent: unknown


def test_price_change_with_several_items_all_take_the_message_timestamp() -> None:
    second = {"asset_id": OTHER, "price": "0.3", "size": "0", "side": "SELL"}
    frame = decode(with_(PRICE_CHANGE, price_changes=[*PRICE_CHANGE["price_changes"], second]))
    assert frame.messages[1] == LevelChange(OTHER, "SELL", 0.3, 0.0, None, None, 1757908892351)
    assert len(frame.messages) == 2
    assert frame.kinds == {"price_change": 1}  # one message, two changes


def test_price_change_items_without_best_bid_ask() -> None:
    item = {"asset_id": ASSET, "price": "0.4", "size": "5", "side": "BUY"}
    (change,) = decode(with_(PRICE_CHANGE, price_changes=[item])).messages
    assert isinstance(change, LevelChange)
    assert (change.best_bid, change.best_ask) == (None, None)


def test_price_change_with_an_empty_side_in_best_bid_ask() -> None:
    item = {**PRICE_CHANGE["price_changes"][0], "best_bid": "", "best_ask": "0.6"}
    (change,) = decode(with_(PRICE_CHANGE, price_changes=[item])).messages
    assert isinstance(change, LevelChange)
    assert (change.best_bid, change.best_ask) == (None, 0.6)


def test_price_change_before_2025_09_15_at_the_top_level() -> None:
    frame = decode(OLD_PRICE_CHANGE)
    assert frame.messages == [LevelChange(ASSET, "SELL", 0.47, 0.0, None, None, 1724564136087)]
    assert frame.kinds == {"price_change": 1}


def test_price_change_with_an_empty_list_has_no_change() -> None:
    frame = decode(with_(PRICE_CHANGE, price_changes=[]))
    assert frame.messages == []
    assert frame.kinds == {"price_change": 1}
    assert frame.errors == []


def test_best_bid_ask() -> None:
    frame = decode(BEST_BID_ASK)
    assert frame.messages == [BestBidAsk(ASSET, 0.73, 0.77, 1766789469958)]
    assert frame.kinds == {"best_bid_ask": 1}


@pytest.mark.parametrize(
    ("bid", "ask", "expected"),
    [("", "0.77", (None, 0.77)), ("0.73", "", (0.73, None)), ("", "", (None, None))],
)
def test_best_bid_ask_with_an_empty_side(
    bid: str, ask: str, expected: tuple[float | None, float | None]
) -> None:
    (message,) = decode(with_(BEST_BID_ASK, best_bid=bid, best_ask=ask)).messages
    assert isinstance(message, BestBidAsk)
    assert (message.best_bid, message.best_ask) == expected


def test_best_bid_ask_with_a_side_missing() -> None:
    (message,) = decode(without(BEST_BID_ASK, "best_ask")).messages
    assert isinstance(message, BestBidAsk)
    assert (message.best_bid, message.best_ask) == (0.73, None)


def test_last_trade_price() -> None:
    frame = decode(LAST_TRADE)
    assert frame.messages == [LastTrade(ASSET, 0.491, 1724564136087)]
    assert frame.kinds == {"last_trade_price": 1}


def test_tick_size_change() -> None:
    frame = decode(TICK_SIZE_CHANGE)
    assert frame.messages == [TickSizeChange(ASSET, 1739068041853)]
    assert frame.kinds == {"tick_size_change": 1}


def test_market_resolved() -> None:
    frame = decode(MARKET_RESOLVED)
    assert frame.messages == [MarketResolved(MARKET, (ASSET, OTHER), ASSET, 1766790415550)]
    assert frame.kinds == {"market_resolved": 1}


@pytest.mark.parametrize("winner", [None, "", 7])
def test_market_resolved_without_a_usable_winner(winner: Any) -> None:
    (message,) = decode(with_(MARKET_RESOLVED, winning_asset_id=winner)).messages
    assert isinstance(message, MarketResolved)
    assert message.winning_asset_id is None
    assert message.asset_ids == (ASSET, OTHER)


def test_market_resolved_without_assets_ids() -> None:
    (message,) = decode(without(MARKET_RESOLVED, "assets_ids")).messages
    assert isinstance(message, MarketResolved)
    assert message.asset_ids == ()


@pytest.mark.parametrize("assets", ["x", [ASSET, ""], [ASSET, 3], {"a": 1}])
def test_market_resolved_with_bad_assets_ids(assets: Any) -> None:
    error = only_error(decode(with_(MARKET_RESOLVED, assets_ids=assets)))
    assert error == "market_resolved: assets_ids is not a list of ids"


def test_market_resolved_without_a_market() -> None:
    error = only_error(decode(without(MARKET_RESOLVED, "market")))
    assert error == "market_resolved: market missing or not a string"


def test_new_market_is_counted_and_ignored() -> None:
    frame = decode(NEW_MARKET)
    assert frame == Frame(messages=[], kinds={"new_market": 1}, errors=[])


def test_an_unknown_event_type_is_counted_not_an_error() -> None:
    frame = decode({"event_type": "mystery", "asset_id": ASSET})
    assert frame == Frame(messages=[], kinds={"unknown": 1}, errors=[])


# --- bare text and empty frames -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [("PONG", "pong"), ("  PONG\n", "pong"), ("NO NEW ASSETS", "no_new_assets")],
)
def test_bare_text_frames(text: str, kind: str) -> None:
    assert decode_frame(text) == Frame(messages=[], kinds={kind: 1}, errors=[])


def test_pong_is_case_sensitive_and_otherwise_not_json() -> None:
    frame = decode_frame("pong")
    assert frame.kinds == {"malformed": 1}
    assert frame.errors == ["not JSON: pong"]


def test_an_empty_array_is_an_unknown_or_closed_asset() -> None:
    assert decode_frame("[]") == Frame(messages=[], kinds={"empty": 1}, errors=[])


@pytest.mark.parametrize("text", ["", "   ", "{", "PING", '{"event_type": "book",}'])
def test_non_json_is_one_malformed_frame(text: str) -> None:
    frame = decode_frame(text)
    assert frame.messages == []
    assert frame.kinds == {"malformed": 1}
    assert frame.errors == [f"not JSON: {text}"]


def test_a_long_bad_frame_is_quoted_in_part() -> None:
    text = "x" * 500
    (error,) = decode_frame(text).errors
    assert error == "not JSON: " + "x" * 120 + "..."


def test_an_error_quoting_exactly_the_limit_is_not_cut() -> None:
    text = "y" * 120
    assert decode_frame(text).errors == ["not JSON: " + text]


# --- arrays mixing good and bad messages ----------------------------------------------------------


def test_one_bad_message_in_an_array_does_not_lose_the_others() -> None:
    frame = decode(
        BOOK,
        with_(LAST_TRADE, price="1.5"),
        "text",
        {"no": "event_type"},
        NEW_MARKET,
        {"event_type": "what"},
        BEST_BID_ASK,
    )
    assert [type(m) for m in frame.messages] == [Book, BestBidAsk]
    assert frame.kinds == {
        "book": 1,
        "malformed": 3,
        "new_market": 1,
        "unknown": 1,
        "best_bid_ask": 1,
    }
    assert frame.errors == [
        "last_trade_price: price 1.5 is outside [0, 1]",
        'not a JSON object: "text"',
        'no event_type: {"no": "event_type"}',
    ]


@pytest.mark.parametrize("item", [1, None, [1, 2], True])
def test_an_item_that_is_not_an_object(item: Any) -> None:
    frame = decode_frame(json.dumps([item]))
    assert frame.kinds == {"malformed": 1}
    assert frame.errors == [f"not a JSON object: {json.dumps(item)}"]


def test_a_bare_json_scalar_is_one_bad_item() -> None:
    assert decode_frame("42").errors == ["not a JSON object: 42"]


@pytest.mark.parametrize("event_type", [None, 3, ["book"]])
def test_an_event_type_that_is_not_a_string(event_type: Any) -> None:
    frame = decode(with_(BOOK, event_type=event_type))
    assert frame.kinds == {"malformed": 1}
    assert frame.errors[0].startswith("no event_type: ")


def test_a_long_bad_item_is_quoted_in_part() -> None:
    (error,) = decode({"x": "z" * 500}).errors
    assert error.startswith('no event_type: {"x": "zzz')
    assert error.endswith("...")
    assert len(error) == len("no event_type: ") + 120 + 3


def test_a_bad_price_change_item_rejects_the_whole_message() -> None:
    good = PRICE_CHANGE["price_changes"][0]
    bad = {**good, "side": "HOLD"}
    frame = decode(with_(PRICE_CHANGE, price_changes=[good, bad]))
    assert only_error(frame) == "price_change: side must be BUY or SELL, got 'HOLD'"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ("x", "price_change: price_changes is not a list"),
        ({"asset_id": ASSET}, "price_change: price_changes is not a list"),
        (["x"], "price_change: a price_changes item is not an object"),
        (
            [{"asset_id": ASSET, "price": "0.5", "size": "1"}],
            "price_change: side must be BUY or SELL, got None",
        ),
        (
            [{"asset_id": ASSET, "price": "0.5", "size": "1", "side": "buy"}],
            "price_change: side must be BUY or SELL, got 'buy'",
        ),
        (
            [{"price": "0.5", "size": "1", "side": "BUY"}],
            "price_change: asset_id missing or not a string",
        ),
        (
            [{"asset_id": ASSET, "price": "0.5", "size": "-1", "side": "BUY"}],
            "price_change: size -1.0 is negative",
        ),
        (
            [{"asset_id": ASSET, "price": "0.5", "size": "1", "side": "BUY", "best_ask": "2"}],
            "price_change: best_ask 2.0 is outside [0, 1]",
        ),
    ],
)
def test_bad_price_changes(changes: Any, error: str) -> None:
    assert only_error(decode(with_(PRICE_CHANGE, price_changes=changes))) == error


def test_old_price_change_without_a_side() -> None:
    error = only_error(decode(without(OLD_PRICE_CHANGE, "side")))
    assert error == "price_change: side must be BUY or SELL, got None"


def test_a_long_bad_side_is_quoted_in_part() -> None:
    item = {**PRICE_CHANGE["price_changes"][0], "side": "S" * 300}
    error = only_error(decode(with_(PRICE_CHANGE, price_changes=[item])))
    assert error == "price_change: side must be BUY or SELL, got '" + "S" * 119 + "..."


# --- numbers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "expected"),
    [("0", 0.0), ("1", 1.0), ("0.491", 0.491), (0.25, 0.25), (1, 1.0), (0, 0.0), (" 0.5 ", 0.5)],
)
def test_prices_as_strings_or_json_numbers(price: Any, expected: float) -> None:
    (trade,) = decode(with_(LAST_TRADE, price=price)).messages
    assert isinstance(trade, LastTrade)
    assert trade.price == expected


@pytest.mark.parametrize(
    ("price", "error"),
    [
        ("1.0001", "last_trade_price: price 1.0001 is outside [0, 1]"),
        ("-0.01", "last_trade_price: price -0.01 is outside [0, 1]"),
        (2, "last_trade_price: price 2.0 is outside [0, 1]"),
        ("NaN", "last_trade_price: price is not finite: 'NaN'"),
        ("nan", "last_trade_price: price is not finite: 'nan'"),
        ("Infinity", "last_trade_price: price is not finite: 'Infinity'"),
        ("-inf", "last_trade_price: price is not finite: '-inf'"),
        ("", "last_trade_price: price is not a number: ''"),
        ("abc", "last_trade_price: price is not a number: 'abc'"),
        (True, "last_trade_price: price is not a number: True"),
        (False, "last_trade_price: price is not a number: False"),
        (None, "last_trade_price: price is not a number: None"),
        ([0.5], "last_trade_price: price is not a number: [0.5]"),
        ({"v": 1}, "last_trade_price: price is not a number: {'v': 1}"),
    ],
)
def test_bad_prices(price: Any, error: str) -> None:
    assert only_error(decode(with_(LAST_TRADE, price=price))) == error


def test_a_missing_price() -> None:
    error = only_error(decode(without(LAST_TRADE, "price")))
    assert error == "last_trade_price: price is not a number: None"


@pytest.mark.parametrize("nonfinite", ["NaN", "Infinity", "-Infinity"])
def test_bare_json_nan_and_infinity_are_refused(nonfinite: str) -> None:
    """Python's `json` reads the bare literals `NaN`/`Infinity` as floats: still refused."""
    text = json.dumps(with_(LAST_TRADE, price=0.5)).replace("0.5", nonfinite)
    error = only_error(decode_frame(text))
    assert error.startswith("last_trade_price: price is not finite: ")


def test_a_price_too_large_for_a_float_is_refused_not_raised() -> None:
    """A JSON integer of 400 digits is a valid JSON number; `float()` of it raises
    `OverflowError`, which `_number` does not catch."""
    text = json.dumps(with_(LAST_TRADE, price=0.5)).replace("0.5", "1" + "0" * 400)
    frame = decode_frame(text)
    assert frame.messages == []
    assert frame.kinds == {"malformed": 1}
    assert len(frame.errors) == 1


def test_a_size_too_large_for_a_float_is_refused_not_raised() -> None:
    item = {**PRICE_CHANGE["price_changes"][0], "size": 12345}
    text = json.dumps(with_(PRICE_CHANGE, price_changes=[item]))
    frame = decode_frame(text.replace("12345", "9" * 400))
    assert frame.messages == []
    assert frame.kinds == {"malformed": 1}


def test_a_deeply_nested_frame_is_malformed_not_raised() -> None:
    """`json.loads` raises `RecursionError` (not a `ValueError`) on deep nesting."""
    frame = decode_frame("[" * 100_000 + "]" * 100_000)
    assert frame.messages == []
    assert frame.kinds == {"malformed": 1}


@pytest.mark.parametrize(
    ("level", "error"),
    [
        ({"price": "0.5", "size": "-1"}, "book: bids size -1.0 is negative"),
        ({"price": "0.5", "size": "-0.0001"}, "book: bids size -0.0001 is negative"),
        ({"price": "1.5", "size": "1"}, "book: bids price 1.5 is outside [0, 1]"),
        ({"price": "NaN", "size": "1"}, "book: bids price is not finite: 'NaN'"),
        ({"price": "0.5", "size": "Infinity"}, "book: bids size is not finite: 'Infinity'"),
        ({"price": "0.5", "size": True}, "book: bids size is not a number: True"),
        ({"size": "1"}, "book: bids price is not a number: None"),
        ({"price": "0.5"}, "book: bids size is not a number: None"),
        (["0.5", "1"], "book: a level of bids is not an object"),
    ],
)
def test_bad_book_levels(level: Any, error: str) -> None:
    bids = [{"price": "0.4", "size": "1"}, level]
    assert only_error(decode(with_(BOOK, bids=bids))) == error


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"asks": "[]"}, "book: asks is not a list"),
        ({"asks": None}, "book: asks is not a list"),
        ({"asks": [{"price": "0.5", "size": "x"}]}, "book: asks size is not a number: 'x'"),
        ({"asset_id": ""}, "book: asset_id missing or not a string"),
        ({"asset_id": 12}, "book: asset_id missing or not a string"),
        ({"last_trade_price": "2"}, "book: last_trade_price 2.0 is outside [0, 1]"),
        ({"last_trade_price": "x"}, "book: last_trade_price is not a number: 'x'"),
    ],
)
def test_bad_books(changes: dict[str, Any], error: str) -> None:
    assert only_error(decode(with_(BOOK, **changes))) == error


def test_zero_sizes_are_kept_by_the_decoder() -> None:
    """Size 0 removes a level: the decoder passes it on, the book drops it (`quotes`)."""
    (book,) = decode(with_(BOOK, bids=[{"price": "0.4", "size": "0"}], asks=[])).messages
    assert isinstance(book, Book)
    assert book.bids == ((0.4, 0.0),)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (with_(BEST_BID_ASK, best_bid="1.2"), "best_bid_ask: best_bid 1.2 is outside [0, 1]"),
        (with_(BEST_BID_ASK, best_ask="NaN"), "best_bid_ask: best_ask is not finite: 'NaN'"),
        (with_(BEST_BID_ASK, best_ask=True), "best_bid_ask: best_ask is not a number: True"),
        (without(BEST_BID_ASK, "asset_id"), "best_bid_ask: asset_id missing or not a string"),
        (without(LAST_TRADE, "asset_id"), "last_trade_price: asset_id missing or not a string"),
        (
            with_(TICK_SIZE_CHANGE, asset_id=None),
            "tick_size_change: asset_id missing or not a string",
        ),
    ],
)
def test_bad_fields_of_each_type(message: dict[str, Any], error: str) -> None:
    assert only_error(decode(message)) == error


def test_a_false_best_side_is_not_an_empty_side() -> None:
    """Only a missing side and `""` mean empty; `false` is no number."""
    error = only_error(decode(with_(BEST_BID_ASK, best_bid=False)))
    assert error == "best_bid_ask: best_bid is not a number: False"


def test_a_zero_best_side_is_a_price_not_an_empty_side() -> None:
    (message,) = decode(with_(BEST_BID_ASK, best_bid=0, best_ask="0")).messages
    assert isinstance(message, BestBidAsk)
    assert (message.best_bid, message.best_ask) == (0.0, 0.0)


# --- timestamps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("1724564136087", 1724564136087),
        (1724564136087, 1724564136087),
        (" 1724564136087 ", 1724564136087),
        ("0", 0),
        ("", None),
        ("soon", None),
        ("1724564136087.5", None),
        (1724564136087.0, None),
        (True, None),
        (False, None),
        (None, None),
        (["1"], None),
        ("1" * 5000, None),  # past int()'s digit limit: a ValueError, read as unknown
    ],
)
def test_timestamps_missing_or_unreadable_are_none_and_the_data_is_kept(
    timestamp: Any, expected: int | None
) -> None:
    (trade,) = decode(with_(LAST_TRADE, timestamp=timestamp)).messages
    assert trade == LastTrade(ASSET, 0.491, expected)


def test_a_missing_timestamp_is_none() -> None:
    (message,) = decode(without(TICK_SIZE_CHANGE, "timestamp")).messages
    assert message == TickSizeChange(ASSET, None)


def test_frame_count_adds_up() -> None:
    frame = Frame()
    frame.count("book")
    frame.count("book", 3)
    frame.count("pong")
    assert frame.kinds == {"book": 4, "pong": 1}


# --- never raises (hypothesis) --------------------------------------------------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["", "0", "0.5", "1", "NaN", "Infinity", "-1", "BUY", "SELL", ASSET])
)
_json = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_event_types = st.sampled_from(
    [
        "book",
        "price_change",
        "best_bid_ask",
        "last_trade_price",
        "tick_size_change",
        "market_resolved",
        "new_market",
        "other",
    ]
)
_field_names = st.sampled_from(
    [
        "asset_id",
        "market",
        "bids",
        "asks",
        "price",
        "size",
        "side",
        "best_bid",
        "best_ask",
        "price_changes",
        "timestamp",
        "last_trade_price",
        "assets_ids",
        "winning_asset_id",
    ]
)
_level = st.fixed_dictionaries({"price": _json_scalars, "size": _json_scalars})
_messages = st.builds(
    lambda event_type, fields: {"event_type": event_type, **fields},
    _event_types,
    st.dictionaries(_field_names, _json | st.lists(_level, max_size=3), max_size=8),
)


def _check(frame: Frame) -> None:
    assert isinstance(frame, Frame)
    assert all(isinstance(n, int) and n > 0 for n in frame.kinds.values())
    assert frame.kinds.get("malformed", 0) == len(frame.errors)


@given(st.text())
def test_never_raises_on_arbitrary_text(text: str) -> None:
    _check(decode_frame(text))


@given(_json)
def test_never_raises_on_arbitrary_json(payload: Any) -> None:
    _check(decode_frame(json.dumps(payload)))


@given(st.lists(_messages, max_size=5) | _messages)
def test_never_raises_on_message_like_json(payload: Any) -> None:
    frame = decode_frame(json.dumps(payload))
    _check(frame)
    items = payload if isinstance(payload, list) else [payload]
    # Every item is accounted for: decoded (once per type), ignored, unknown or malformed.
    assert sum(frame.kinds.values()) == max(len(items), 1)
