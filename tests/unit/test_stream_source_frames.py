"""`MarketStream.frame` in isolation (no socket): what one frame does to quotes, coalescer,
counters and distrust, and that a frame whose handling raises is logged and skipped."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from polymarket_kafka.models import PolymarketSubscription
from polymarket_kafka.polymarket.parsing import MarketMetadata
from polymarket_kafka.polymarket.stream import source
from polymarket_kafka.polymarket.stream.connection import Shard, StreamSettings
from polymarket_kafka.polymarket.stream.source import MarketStream, StreamedMarket
from tests.factories import T0

MARKET = "0x" + "ab" * 32
ASSET = "123456789"

pytestmark = pytest.mark.anyio


def _stream() -> tuple[MarketStream, Shard]:
    stream = MarketStream(
        StreamSettings(url="ws://127.0.0.1:9/ws/market"),
        httpx.AsyncClient(),
        coalesce_seconds=0.0,
        clock=lambda: T0,
    )
    subscription = PolymarketSubscription(market_id=MARKET, ref_count=1)
    metadata = MarketMetadata(market_id=MARKET, question="Q?", yes_token_id=ASSET)
    stream.set_markets({MARKET: StreamedMarket(subscription, metadata, ASSET)})
    (shard,) = stream.connections
    return stream, shard


def _book(bid: str, ask: str) -> str:
    return json.dumps(
        {
            "event_type": "book",
            "asset_id": ASSET,
            "market": MARKET,
            "bids": [{"price": bid, "size": "10"}],
            "asks": [{"price": ask, "size": "10"}],
            "timestamp": "1730761200000",
        }
    )


async def test_a_book_prices_the_market_and_offers_it(anyio_backend: str) -> None:
    stream, shard = _stream()
    stream.frame(shard, _book("0.40", "0.42"))
    assert stream.price(MARKET) == pytest.approx(0.41)
    assert stream.coalescer.pending == 1
    assert stream.stats.messages["book"] == 1
    snapshot = stream._snapshot(MARKET)
    assert snapshot is not None
    assert (snapshot.yes_price, snapshot.source, snapshot.spread) == (0.41, "ws", 0.02)


async def test_a_distrusted_market_waits_for_a_fresh_book(anyio_backend: str) -> None:
    stream, shard = _stream()
    stream.frame(shard, _book("0.40", "0.42"))
    stream.coalescer.take_due(1e12)
    stream.distrust(MARKET)
    move = {
        "event_type": "best_bid_ask",
        "asset_id": ASSET,
        "market": MARKET,
        "best_bid": "0.60",
        "best_ask": "0.62",
    }
    stream.frame(shard, json.dumps(move))
    assert stream.coalescer.pending == 0  # the quote moved, but nothing is sent on
    assert stream.price(MARKET) == pytest.approx(0.61)
    stream.frame(shard, _book("0.50", "0.52"))
    assert stream.coalescer.pending == 1


async def test_a_frame_whose_handling_raises_is_logged_and_skipped(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stream, shard = _stream()

    def broken(text: str) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(source, "decode_frame", broken)
    with caplog.at_level(logging.ERROR, logger=source.__name__):
        stream.frame(shard, _book("0.40", "0.42"))
    assert stream.stats.frame_errors == 1
    assert "could not be handled" in caplog.text
    assert "RuntimeError: a bug" in caplog.text
