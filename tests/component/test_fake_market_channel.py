"""`FakeMarketChannel` (`polymarket_kafka.testing`): a real `httpx_ws` client, both backends.

The fake runs in its own threads, so each test drives it from the event loop exactly as the
client's tests will: pushes are plain calls that have written their frames when they return,
so a `PING` sent afterwards proves nothing else was queued before its `PONG`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import pytest
from httpx_ws import (
    AsyncWebSocketSession,
    WebSocketDisconnect,
    WebSocketNetworkError,
    WebSocketUpgradeError,
    aconnect_ws,
)

from polymarket_kafka.testing.fake_market_channel import FakeMarketChannel

pytestmark = pytest.mark.anyio

MARKET = "0x" + "5f" * 32
YES = "71321045679252212594626385532706912750332728571942532289631379312455583992563"
NO = "52114319501245915516055106046884209969926127482827954674443846427813813222426"
OTHER_MARKET = "0x" + "bd" * 32
OTHER = "65818619657568813474341868652308942079804919287380422192892211131408793125422"
UNKNOWN = "1154"
WAIT = 5


@pytest.fixture
def fake() -> Iterator[FakeMarketChannel]:
    with FakeMarketChannel() as server:
        server.add_asset(YES, market=MARKET, best_bid=0.48, best_ask=0.52, last_trade=0.49)
        server.add_asset(NO, market=MARKET, best_bid=0.48, best_ask=0.52)
        server.add_asset(OTHER, market=OTHER_MARKET, best_bid=0.2, best_ask=0.25)
        yield server


def subscription(*assets: str, **options: object) -> str:
    return json.dumps({"assets_ids": list(assets), "type": "market", **options})


@asynccontextmanager
async def connect(fake: FakeMarketChannel) -> AsyncIterator[AsyncWebSocketSession]:
    async with aconnect_ws(
        fake.url, keepalive_ping_interval_seconds=None, session_class=AsyncWebSocketSession
    ) as ws:
        yield ws


async def receive(ws: AsyncWebSocketSession) -> Any:
    with anyio.fail_after(WAIT):
        return json.loads(await ws.receive_text())


async def subscribed(ws: AsyncWebSocketSession, *assets: str) -> Any:
    """Subscribe (with the initial dump) and return the dump."""
    await ws.send_text(subscription(*assets))
    return await receive(ws)


async def assert_quiet(ws: AsyncWebSocketSession) -> None:
    """Nothing was sent before: the next frame after a PING is its PONG."""
    await ws.send_text("PING")
    with anyio.fail_after(WAIT):
        assert await ws.receive_text() == "PONG"


async def wait_subscribed(fake: FakeMarketChannel, *assets: str) -> None:
    await anyio.to_thread.run_sync(partial(fake.wait_subscribed, assets, WAIT))


async def closed_with(ws: AsyncWebSocketSession) -> WebSocketDisconnect:
    with pytest.raises(WebSocketDisconnect) as caught, anyio.fail_after(WAIT):
        await ws.receive_text()
    return caught.value


async def test_subscription_gets_one_dump_frame_with_the_best_levels_last(
    fake: FakeMarketChannel,
) -> None:
    async with connect(fake) as ws:
        dump = await subscribed(ws, YES, UNKNOWN, NO)

    assert isinstance(dump, list)
    assert [book["asset_id"] for book in dump] == [YES, NO]  # the unknown one is left out
    book = dump[0]
    assert book["event_type"] == "book"
    assert book["market"] == MARKET
    bids = [Decimal(level["price"]) for level in book["bids"]]
    asks = [Decimal(level["price"]) for level in book["asks"]]
    assert bids == sorted(bids) and bids[-1] == Decimal("0.48")  # best bid LAST
    assert asks == sorted(asks, reverse=True) and asks[-1] == Decimal("0.52")  # best ask LAST
    assert all(isinstance(level["size"], str) for level in book["bids"] + book["asks"])
    assert book["timestamp"].isdigit() and len(book["timestamp"]) == 13  # Unix ms, a string
    assert book["hash"].startswith("0x")
    assert book["tick_size"] == "0.01"
    assert book["last_trade_price"] == "0.49"
    assert dump[1]["last_trade_price"] == ""  # no trade yet


async def test_unknown_assets_get_an_empty_array_and_initial_dump_false_gets_nothing(
    fake: FakeMarketChannel,
) -> None:
    async with connect(fake) as ws:
        assert await subscribed(ws, UNKNOWN) == []
    async with connect(fake) as ws:
        await ws.send_text(subscription(YES, initial_dump=False))
        await assert_quiet(ws)
    assert fake.connection_count_total == 2


async def test_ping_gets_pong_and_the_connection_records_what_it_received(
    fake: FakeMarketChannel,
) -> None:
    async with connect(fake) as ws:
        await subscribed(ws, YES)
        await assert_quiet(ws)
        await assert_quiet(ws)
        (info,) = fake.connections()

    assert info.pings == 2
    assert info.messages == [subscription(YES), "PING", "PING"]
    assert info.assets == frozenset({YES})
    assert info.open and not info.custom_feature


@pytest.mark.parametrize(
    "first",
    [
        "PING",
        "not json",
        '["market"]',
        json.dumps({"type": "market"}),
        json.dumps({"assets_ids": YES, "type": "market"}),
        json.dumps({"assets_ids": [YES], "type": "user"}),
        json.dumps({"assets_ids": [YES], "type": "market", "initial_dump": "yes"}),
        json.dumps({"operation": "subscribe", "assets_ids": [YES]}),
    ],
    ids=[
        "ping",
        "not-json",
        "array",
        "no-assets",
        "assets-not-a-list",
        "wrong-type",
        "flag-not-bool",
        "operation-first",
    ],
)
async def test_anything_but_a_subscription_first_closes_with_1008(
    fake: FakeMarketChannel, first: str
) -> None:
    async with connect(fake) as ws:
        await ws.send_text(first)
        closed = await closed_with(ws)

    assert (closed.code, closed.reason) == (1008, "invalid subscription payload")


async def test_operations_add_with_a_dump_and_remove_without_frames(
    fake: FakeMarketChannel,
) -> None:
    async with connect(fake) as ws:
        await subscribed(ws, YES)
        await ws.send_text(json.dumps({"operation": "subscribe", "assets_ids": [OTHER]}))
        dump = await receive(ws)
        assert [book["asset_id"] for book in dump] == [OTHER]

        await ws.send_text(json.dumps({"operation": "unsubscribe", "assets_ids": [YES]}))
        await assert_quiet(ws)  # the unsubscription was handled before the PONG
        assert fake.move(YES, 0.6, 0.62) == 0
        await assert_quiet(ws)
        assert fake.move(OTHER, 0.3, 0.31) == 1
        change = await receive(ws)
        assert fake.connections()[0].assets == frozenset({OTHER})

    assert change["price_changes"][0]["asset_id"] == OTHER


async def test_move_reaches_the_subscribed_connections_only(fake: FakeMarketChannel) -> None:
    async with connect(fake) as on_yes, connect(fake) as on_other:
        await subscribed(on_yes, YES)
        await subscribed(on_other, OTHER)

        assert fake.move(YES, 0.5, 0.52, timestamp_ms=1757908892351) == 1
        change = await receive(on_yes)
        await assert_quiet(on_other)

    assert change["event_type"] == "price_change"
    assert change["market"] == MARKET
    assert change["timestamp"] == "1757908892351"
    (item,) = change["price_changes"]
    assert item["asset_id"] == YES
    assert (item["best_bid"], item["best_ask"]) == ("0.5", "0.52")
    assert {"price", "size", "side", "hash"} <= item.keys()


async def test_best_bid_ask_goes_to_custom_feature_connections_only(
    fake: FakeMarketChannel,
) -> None:
    async with connect(fake) as plain, connect(fake) as custom:
        await subscribed(plain, YES)
        await custom.send_text(subscription(YES, custom_feature_enabled=True, level=2))
        await receive(custom)

        assert fake.move(YES, 0.73, 0.77) == 2
        assert (await receive(plain))["event_type"] == "price_change"
        await assert_quiet(plain)
        assert (await receive(custom))["event_type"] == "price_change"
        quote = await receive(custom)

    assert quote["event_type"] == "best_bid_ask"
    assert (quote["asset_id"], quote["market"]) == (YES, MARKET)
    assert (quote["best_bid"], quote["best_ask"], quote["spread"]) == ("0.73", "0.77", "0.04")


async def test_resolve_trade_and_tick_size_change(fake: FakeMarketChannel) -> None:
    async with connect(fake) as plain, connect(fake) as custom:
        await subscribed(plain, NO)
        await custom.send_text(subscription(NO, custom_feature_enabled=True))
        await receive(custom)

        assert fake.trade(NO, 0.491) == 2
        trade = await receive(plain)
        assert fake.tick_size_change(NO, "0.001") == 2
        tick = await receive(plain)
        assert fake.resolve(MARKET, YES) == 1
        await assert_quiet(plain)
        await receive(custom)
        await receive(custom)
        resolved = await receive(custom)

        await plain.send_text(json.dumps({"operation": "subscribe", "assets_ids": [NO]}))
        (book,) = await receive(plain)

    assert (trade["event_type"], trade["price"], trade["market"]) == (
        "last_trade_price",
        "0.491",
        MARKET,
    )
    assert (tick["old_tick_size"], tick["new_tick_size"]) == ("0.01", "0.001")
    assert resolved["event_type"] == "market_resolved"
    assert resolved["assets_ids"] == [YES, NO]
    assert (resolved["winning_asset_id"], resolved["winning_outcome"]) == (YES, "Yes")
    assert resolved["id"].isdigit() and resolved["tags"] == []
    assert book["tick_size"] == "0.001"
    assert book["last_trade_price"] == "0.491"
    assert [level["price"] for level in book["bids"]][-2:] == ["0.479", "0.48"]


async def test_send_raw_goes_to_the_asset_or_to_everyone(fake: FakeMarketChannel) -> None:
    async with connect(fake) as on_yes, connect(fake) as on_other:
        await subscribed(on_yes, YES)
        await subscribed(on_other, OTHER)

        assert fake.send_raw("NO NEW ASSETS") == 2
        assert fake.send_raw("{not json", asset_id=OTHER) == 1
        with anyio.fail_after(WAIT):
            assert await on_yes.receive_text() == "NO NEW ASSETS"
            assert await on_other.receive_text() == "NO NEW ASSETS"
            assert await on_other.receive_text() == "{not json"
        await assert_quiet(on_yes)


async def test_freeze_keeps_pong_but_sends_no_data(fake: FakeMarketChannel) -> None:
    async with connect(fake) as ws:
        await subscribed(ws, YES)
        fake.freeze()
        assert fake.move(YES, 0.6, 0.62) == 0
        assert fake.send_raw("anything") == 0
        await ws.send_text(json.dumps({"operation": "subscribe", "assets_ids": [OTHER]}))
        await assert_quiet(ws)  # no dump either

        fake.freeze(False)
        assert fake.move(YES, 0.61, 0.63) == 1
        change = await receive(ws)

    assert change["price_changes"][0]["best_bid"] == "0.61"


async def test_pings_can_go_unanswered(fake: FakeMarketChannel) -> None:
    async with connect(fake) as ws:
        await subscribed(ws, YES)
        fake.answer_pings(False)
        await ws.send_text("PING")
        await ws.send_text(json.dumps({"operation": "subscribe", "assets_ids": [OTHER]}))
        after_ping = await receive(ws)  # handled in order: the dump, no PONG before it
        assert fake.connections()[0].pings == 1

        fake.answer_pings(True)
        await assert_quiet(ws)

    assert [book["asset_id"] for book in after_ping] == [OTHER]


async def test_close_all_closes_with_the_code_and_reason(fake: FakeMarketChannel) -> None:
    async with connect(fake) as ws:
        await subscribed(ws, YES)
        assert fake.close_all(1011, "going away for a bit") == 1
        closed = await closed_with(ws)
        assert fake.move(YES, 0.6, 0.62) == 0

    assert (closed.code, closed.reason) == (1011, "going away for a bit")


async def test_drop_all_cuts_the_connection_without_a_close_frame(
    fake: FakeMarketChannel,
) -> None:
    async with connect(fake) as ws:
        await subscribed(ws, YES)
        assert fake.drop_all() == 1
        with pytest.raises(WebSocketNetworkError), anyio.fail_after(WAIT):
            await ws.receive_text()


async def test_refused_upgrades_then_a_404_for_another_path(fake: FakeMarketChannel) -> None:
    fake.refuse_connections(2, status=429)
    for _ in range(2):
        with pytest.raises(WebSocketUpgradeError) as refused:
            async with connect(fake):
                pass
        assert refused.value.response.status_code == 429

    async with connect(fake) as ws:
        assert await subscribed(ws, UNKNOWN) == []
    with pytest.raises(WebSocketUpgradeError) as wrong_path:
        async with aconnect_ws(fake.url.replace("/ws/market", "/ws/user")):
            pass

    assert wrong_path.value.response.status_code == 404
    assert fake.connection_count_total == 1


async def test_flood_roughly_honours_its_rate_and_never_moves_the_mid(
    fake: FakeMarketChannel,
) -> None:
    async with connect(fake) as ws:
        await subscribed(ws, YES, UNKNOWN)
        flood = fake.flood([YES, UNKNOWN], per_second=200, seconds=0.5)
        await anyio.to_thread.run_sync(flood.join, WAIT)
        assert not flood.is_alive()
        fake.send_raw("END")
        frames = []
        with anyio.fail_after(WAIT):
            while (text := await ws.receive_text()) != "END":
                frames.append(json.loads(text))

    assert 20 <= len(frames) <= 101
    items = [item for frame in frames for item in frame["price_changes"]]
    assert {item["asset_id"] for item in items} == {YES, UNKNOWN}
    for item in items:
        mid = (Decimal(item["best_bid"]) + Decimal(item["best_ask"])) / 2
        assert abs(mid - Decimal("0.51")) <= Decimal("0.005")


async def test_past_the_asset_cap_a_connection_gets_no_data() -> None:
    with FakeMarketChannel(max_assets_per_connection=2) as fake:
        fake.add_asset(YES, market=MARKET, best_bid=0.48, best_ask=0.52)
        fake.add_asset(NO, market=MARKET, best_bid=0.48, best_ask=0.52)
        fake.add_asset(OTHER, market=OTHER_MARKET, best_bid=0.2, best_ask=0.25)
        async with connect(fake) as over, connect(fake) as within:
            await over.send_text(subscription(YES, NO, OTHER))
            await assert_quiet(over)  # no dump, but PONG
            assert len(await subscribed(within, YES, NO)) == 2

            assert fake.move(YES, 0.6, 0.62) == 1
            assert (await receive(within))["event_type"] == "price_change"
            await assert_quiet(over)

            await over.send_text(json.dumps({"operation": "unsubscribe", "assets_ids": [OTHER]}))
            await assert_quiet(over)
            assert fake.move(YES, 0.61, 0.63) == 2
            back = await receive(over)

    assert back["price_changes"][0]["best_bid"] == "0.61"


async def test_wait_subscribed_names_what_is_missing(fake: FakeMarketChannel) -> None:
    async with connect(fake) as ws:
        await ws.send_text(subscription(YES, initial_dump=False))
        await wait_subscribed(fake, YES)
        with pytest.raises(TimeoutError, match=rf"not subscribed after 0.1 s: \['{NO}'\]"):
            await anyio.to_thread.run_sync(partial(fake.wait_subscribed, [YES, NO], 0.1))


async def test_stop_ends_open_connections_promptly() -> None:
    fake = FakeMarketChannel().start()
    async with connect(fake) as ws:
        await subscribed(ws, UNKNOWN)
        with anyio.fail_after(WAIT):
            await anyio.to_thread.run_sync(fake.stop)
        with pytest.raises(WebSocketNetworkError), anyio.fail_after(WAIT):
            await ws.receive_text()

    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.url
