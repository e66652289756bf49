"""`MarketStream` (shards, quotes, coalescer, flusher) against the fake market channel.

Real sockets throughout: the stream's httpx-ws connections talk to `FakeMarketChannel` on
loopback (its own threads), on both backends. Each test drives the fake (pushes, closes,
freezes...) and asserts what came out: snapshots, `live_markets()`, the stats counters, the
reasons the shards reported (`RecordingStream`) and what the fake recorded the client send.

Timing: waits poll their condition (`wait_for`, 10 s bound); intervals are small but nothing
asserts a tight deadline, so a busy machine running the suite with `-n auto` stays green.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import pytest
from httpx_ws import AsyncWebSocketSession

from polymarket_kafka.config import PolymarketConfig
from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.polymarket.stream import (
    StreamSettings,
    open_market_stream,
    stream_settings,
)
from polymarket_kafka.polymarket.stream import connection as connection_module
from polymarket_kafka.polymarket.stream import source as source_module
from polymarket_kafka.polymarket.stream.frames import Frame, decode_frame
from polymarket_kafka.testing.fake_market_channel import FakeMarketChannel
from tests.component.stream_helpers import (
    NOW,
    WAIT,
    BinaryFrameServer,
    Polled,
    Running,
    SilentServer,
    free_port,
    ids,
    streamed,
    streaming,
    wait_for,
    wait_subscribed,
)

pytestmark = pytest.mark.anyio

M1, Y1, N1 = ids(1)
M2, Y2, N2 = ids(2)
M3, Y3, N3 = ids(3)
#: An exchange timestamp (Unix ms) and the `source_at` it stands for.
STAMP_MS = 1757908892351
STAMP = datetime(2025, 9, 15, 4, 1, 32, 351000, tzinfo=UTC)


@pytest.fixture
def fake() -> Iterator[FakeMarketChannel]:
    """M1: a tight book (mid 0.5); M2: a wide book, no trade; M3: a wide book with a trade."""
    with FakeMarketChannel() as server:
        server.add_asset(Y1, market=M1, best_bid=0.48, best_ask=0.52, last_trade=0.49)
        server.add_asset(N1, market=M1, best_bid=0.48, best_ask=0.52)
        server.add_asset(Y2, market=M2, best_bid=0.2, best_ask=0.4)
        server.add_asset(N2, market=M2, best_bid=0.6, best_ask=0.8)
        server.add_asset(Y3, market=M3, best_bid=0.2, best_ask=0.4, last_trade=0.33)
        yield server


def subscription(*assets: str) -> dict[str, Any]:
    """The first message of a connection, as the client must send it."""
    return {"assets_ids": sorted(assets), "type": "market", "custom_feature_enabled": True}


def operation(name: str, *assets: str) -> dict[str, Any]:
    return {"operation": name, "assets_ids": sorted(assets), "custom_feature_enabled": True}


def sent(fake: FakeMarketChannel, index: int = 0) -> list[Any]:
    """What the client sent on the fake's `index`-th open connection (JSON decoded)."""
    messages = fake.connections()[index].messages
    return [m if m == "PING" else json.loads(m) for m in messages]


def sent_first(messages: list[str]) -> Any:
    return json.loads(messages[0])


def raw(event_type: str, asset_id: str, market: str, **fields: object) -> str:
    """A single-object frame as the channel sends it (numbers as strings)."""
    body = {"event_type": event_type, "asset_id": asset_id, "market": market, **fields}
    return json.dumps({"timestamp": str(STAMP_MS), **body})


def live(run: Running, *market_ids: str) -> Callable[[], bool]:
    return lambda: set(market_ids) <= run.stream.live_markets()


# --- 1, 2: subscription, dump, moves ---------------------------------------------------------


async def test_subscribes_with_custom_features_and_prices_the_dump(
    fake: FakeMarketChannel,
) -> None:
    markets = {m: streamed(m, y, volume=1234.5) for m, y in ((M1, Y1), (M2, Y2), (M3, Y3))}
    before = datetime.now(UTC).replace(microsecond=0)
    async with streaming(fake.url, markets) as run:
        got = {}
        for _ in range(3):
            snapshot = await run.next()
            got[snapshot.market_id] = snapshot
        after = datetime.now(UTC)
        await wait_for(live(run, M1, M2, M3))
        (info,) = fake.connections()

        assert sent(fake) == [subscription(Y1, Y2, Y3)]  # the first message, and the only one
        assert info.custom_feature and info.assets == {Y1, Y2, Y3}
        assert run.stream.live_markets() == {M1, M2, M3}
        assert run.stream.price(M1) == pytest.approx(0.5)
        assert run.stream.price("0xnot-streamed") is None
        assert {m.market_id for m in run.stream.streamed()} == {M1, M2, M3}
        assert run.stream.markets == 3
        assert len(run.stream.connections) == 1

    assert set(got) == {M1, M2, M3}
    tight, wide, traded = got[M1], got[M2], got[M3]
    assert tight.yes_price == pytest.approx(0.5)  # the midpoint (the trade is ignored)
    assert tight.spread == pytest.approx(0.04)
    assert wide.yes_price == pytest.approx(0.3)  # wide, but no trade known: the midpoint
    assert wide.spread == pytest.approx(0.2)
    assert traded.yes_price == pytest.approx(0.33)  # wide with a trade: the last trade
    for snapshot in got.values():
        assert snapshot.source == "ws"
        assert not snapshot.closed and snapshot.resolution is None
        assert snapshot.taken_at == NOW
        assert snapshot.source_at is not None and before <= snapshot.source_at <= after
        assert snapshot.volume == 1234.5
        assert snapshot.question == f"Will {snapshot.market_id[:8]} happen?"
    stats = run.stream.stats
    assert stats.connects == 1 and not stats.disconnects
    assert stats.frames == 1 and stats.messages == {"book": 3}
    assert stats.snapshots == 3


async def test_a_move_gives_the_new_midpoint_and_a_wide_spread_the_last_trade(
    fake: FakeMarketChannel,
) -> None:
    async with streaming(fake.url, {M1: streamed(M1, Y1)}) as run:
        await run.next(M1)
        assert fake.move(Y1, 0.6, 0.64, timestamp_ms=STAMP_MS) == 1
        moved = await run.next(M1, lambda s: s.yes_price != 0.5)

        assert fake.trade(Y1, 0.37) == 1
        assert fake.move(Y1, 0.3, 0.45, timestamp_ms=STAMP_MS + 1000) == 1
        wide = await run.next(M1, lambda s: s.spread is not None and s.spread > 0.1)
        assert run.stream.price(M1) == pytest.approx(0.37)

    assert moved.yes_price == pytest.approx(0.62)
    assert moved.spread == pytest.approx(0.04)
    assert moved.source_at == STAMP
    assert wide.yes_price == pytest.approx(0.37)
    assert wide.spread == pytest.approx(0.15)
    assert wide.source_at == datetime.fromtimestamp((STAMP_MS + 1000) / 1000, UTC)
    assert run.stream.stats.messages["price_change"] == 2
    assert run.stream.stats.messages["best_bid_ask"] == 2  # custom features were on
    assert run.stream.stats.messages["last_trade_price"] == 1


# --- 3-6: heartbeat, server closes, silence, refusals ----------------------------------------


async def test_heartbeat_pings_after_subscribing_and_a_missing_pong_reconnects(
    fake: FakeMarketChannel,
) -> None:
    async with streaming(fake.url, {M1: streamed(M1, Y1)}, ping_interval_seconds=0.25) as run:
        await wait_for(live(run, M1))
        await wait_for(lambda: fake.connections()[0].pings >= 2)  # two PINGs, both answered
        first = sent(fake)
        assert first[0] == subscription(Y1)
        assert set(first[1:]) == {"PING"}
        assert not run.stream.lost and fake.connection_count_total == 1

        fake.answer_pings(False)
        await wait_for(lambda: run.stream.lost)
        fake.answer_pings(True)
        await wait_for(lambda: fake.connection_count_total >= 2 and live(run, M1)())
        again = sent(fake)

    lost = run.stream.lost[0]
    assert lost.reason == "no PONG within 0.25s of a PING"
    assert M1 not in lost.live  # given up: not live while down
    assert again[0] == subscription(Y1)  # the whole subscription again
    assert run.stream.stats.connects >= 2
    assert run.stream.stats.disconnects["no_pong"] >= 1


@pytest.mark.parametrize(
    ("stuck", "what"),
    [('"type": "market"', "the subscription"), ('"operation": "subscribe"', "a subscription")],
    ids=["first_message", "operation"],
)
async def test_a_send_the_peer_does_not_take_in_time_ends_the_connection(
    fake: FakeMarketChannel, monkeypatch: pytest.MonkeyPatch, stuck: str, what: str
) -> None:
    """A peer that stops reading leaves a send waiting for ever once the socket buffers are
    full: here the session's `send_text` never returns for the first message containing
    `stuck` (the bound, not the kernel's buffers, is under test)."""
    original = connection_module.CappedSession.send_text
    blocked: list[str] = []

    async def send_text(self: AsyncWebSocketSession, data: str) -> None:
        if stuck in data and not blocked:
            blocked.append(data)
            await anyio.sleep_forever()
        await original(self, data)

    monkeypatch.setattr(connection_module.CappedSession, "send_text", send_text)
    async with streaming(
        fake.url, {M1: streamed(M1, Y1)}, ping_interval_seconds=0.3, connect_timeout_seconds=0.3
    ) as run:
        if what == "a subscription":
            await wait_for(live(run, M1))
            run.stream.set_markets({M1: streamed(M1, Y1), M2: streamed(M2, Y2)})
        await wait_for(lambda: run.stream.lost)
        await wait_for(live(run, M1))
        if what == "a subscription":
            await wait_for(live(run, M1, M2))
        info = fake.connections()[-1]

    (lost,) = run.stream.lost
    assert lost.reason == f"could not send {what} within 0.3s"
    assert run.stream.stats.disconnects == {"send_timeout": 1}
    assert sent_first(info.messages) == subscription(*run.stream.connections[0].assets)


@pytest.mark.parametrize(
    ("cut", "kind", "reason"),
    [
        (lambda fake: fake.close_all(1001, "going away"), "server_closed", "closed by the server"),
        (lambda fake: fake.drop_all(), "network", "network error"),
    ],
    ids=["close_all", "drop_all"],
)
async def test_a_server_cut_reconnects_and_resubscribes_everything(
    fake: FakeMarketChannel, cut: Callable[[FakeMarketChannel], int], kind: str, reason: str
) -> None:
    markets = {M1: streamed(M1, Y1), M2: streamed(M2, Y2)}
    async with streaming(fake.url, markets) as run:
        await wait_for(live(run, M1, M2))
        assert cut(fake) == 1
        await wait_for(lambda: run.stream.lost)
        await wait_for(lambda: fake.connection_count_total == 2 and live(run, M1, M2)())
        reconnected = sent(fake)
        assert run.stream.live_markets() == {M1, M2}

    (lost,) = run.stream.lost
    assert lost.reason.startswith(reason)
    assert not lost.live  # both markets dropped out while the connection was down
    first, second = run.stream.connects
    assert first.live == frozenset() and second.live == frozenset()  # live only after the dump
    assert second.generation == first.generation + 1
    assert reconnected == [subscription(Y1, Y2)]
    assert run.stream.stats.disconnects == {kind: 1}
    assert run.stream.stats.messages == {"book": 4}


async def test_close_reason_names_the_code_and_text(fake: FakeMarketChannel) -> None:
    """The close frame arrives inside the session's task groups (nested exception groups):
    the shard must still see the `WebSocketDisconnect`, report its code and reason, and go on
    (not let an error out of `MarketStream.run`)."""
    async with streaming(fake.url, {M1: streamed(M1, Y1)}) as run:
        await wait_for(live(run, M1))
        fake.close_all(1001, "going away")
        await wait_for(lambda: run.stream.lost)

    assert run.stream.lost[0].reason == "closed by the server: 1001 going away"


async def test_a_dropped_socket_reason_names_the_network_error(fake: FakeMarketChannel) -> None:
    """The reason (logged, and the base of the metric label) names the error, not the
    exception group that wrapped it."""
    async with streaming(fake.url, {M1: streamed(M1, Y1)}) as run:
        await wait_for(live(run, M1))
        fake.drop_all()
        await wait_for(lambda: run.stream.lost)

    reason = run.stream.lost[0].reason
    assert reason.startswith("network error: WebSocketNetworkError"), reason


async def test_a_silent_connection_hands_its_markets_to_rest_until_a_frame(
    fake: FakeMarketChannel, caplog: pytest.LogCaptureFixture
) -> None:
    """Quiet markets: no data frame for `silence_seconds` makes the connection silent (its
    markets leave `live_markets`), and the next frame -- of any of its assets -- ends the
    silence of all of them, on the same connection."""
    caplog.set_level(logging.WARNING, logger="polymarket_kafka.polymarket.stream.source")
    markets = {M1: streamed(M1, Y1), M2: streamed(M2, Y2)}
    async with streaming(fake.url, markets, silence_seconds=0.5) as run:
        await wait_for(lambda: run.stream.stats.silences >= 1)
        (shard,) = run.stream.connections
        assert shard.connected
        assert run.stream.heard[0].live == {M1, M2}  # the dump made both live
        first = run.stream.silences[0]
        assert first.live == frozenset()  # silent: both handed to REST at once
        assert (first.shard, first.generation) == (shard.index, shard.generation)

        heard = len(run.stream.heard)
        assert fake.move(Y1, 0.6, 0.62) == 1
        await wait_for(lambda: len(run.stream.heard) >= heard + 2)
        # The frame ends the silence: both markets live again, on the same connection.
        assert [h.live for h in run.stream.heard[heard:]] == [{M1, M2}] * 2  # price_change, bba
        assert run.stream.heard[-1].generation == first.generation
        assert run.stream.price(M1) == pytest.approx(0.61)
        # Quiet again: silent again; still no reconnect.
        await wait_for(lambda: run.stream.stats.silences >= 2)
        assert M1 not in run.stream.live_markets()
        (info,) = fake.connections()

    assert fake.connection_count_total == 1
    assert not run.stream.lost and not run.stream.stats.disconnects
    assert sent_first(info.messages) == subscription(Y1, Y2) and len(info.messages) == 1
    silent_lines = [r for r in caplog.records if "silent for 0.5s" in r.getMessage()]
    assert silent_lines and "its 2 market(s) go to REST" in silent_lines[0].getMessage()


async def test_a_silent_connection_is_given_up_when_rest_shows_its_market_moved(
    fake: FakeMarketChannel,
) -> None:
    markets = {M1: streamed(M1, Y1), M2: streamed(M2, Y2)}
    async with streaming(fake.url, markets, silence_seconds=0.5, ping_interval_seconds=1.0) as run:
        await wait_for(lambda: run.stream.stats.silences >= 1)
        (shard,) = run.stream.connections
        (before,) = fake.connections()

        # REST agrees with the stream's last midpoints (M1 0.5, M2 0.3): a quiet market.
        run.stream.rest_observed(M1, 0.5)
        run.stream.rest_observed(M2, 0.3 + 5e-7)  # within the 1e-6 of "the same"
        run.stream.rest_observed("0xnot-streamed", 0.9)  # nothing to compare
        # The connection stays open: the heartbeat goes on (PONGs are no data).
        await wait_for(lambda: fake.connections()[0].pings >= before.pings + 1)
        assert [c.id for c in fake.connections()] == [before.id]
        assert shard.silent and shard.connected and not run.stream.lost

        # REST has M1 elsewhere: the silence is a frozen socket, the connection is given up.
        generation = shard.generation
        run.stream.rest_observed(M1, 0.7)
        run.stream.rest_observed(M2, 0.9)  # the same connection: given up once
        await wait_for(lambda: run.stream.lost)
        await wait_for(
            lambda: any(h.generation > generation and h.live == {M1, M2} for h in run.stream.heard)
        )
        (after,) = fake.connections()

    (lost,) = run.stream.lost
    assert lost.reason == (
        f"silent for over 0.5s while its markets trade (REST has {M1} at 0.7, "
        "the stream last said 0.5)"
    )
    assert lost.live == frozenset()
    assert run.stream.stats.disconnects == {"silent": 1}
    assert fake.connection_count_total == 2 and after.id != before.id
    assert sent_first(after.messages) == subscription(Y1, Y2)  # the whole set again
    assert run.stream.stats.messages["book"] == 4  # two dumps of two books


async def test_rest_prices_of_a_connection_that_is_not_silent_change_nothing(
    fake: FakeMarketChannel,
) -> None:
    async with streaming(fake.url, {M1: streamed(M1, Y1)}) as run:
        await wait_for(live(run, M1))
        run.stream.rest_observed(M1, 0.9)  # not silent: REST's price is no verdict on it
        assert fake.move(Y1, 0.6, 0.62) == 1
        await run.next(M1, lambda s: s.yes_price == pytest.approx(0.61))
        await wait_for(live(run, M1))

    assert fake.connection_count_total == 1
    assert not run.stream.lost and not run.stream.stats.disconnects
    assert run.stream.stats.silences == 0


async def test_refused_upgrades_are_counted_then_it_connects(fake: FakeMarketChannel) -> None:
    fake.refuse_connections(2)
    async with streaming(fake.url, {M1: streamed(M1, Y1)}) as run:
        snapshot = await run.next(M1)
        await wait_for(live(run, M1))

    assert snapshot.yes_price == pytest.approx(0.5)
    assert [lost.reason for lost in run.stream.lost] == ["upgrade refused: HTTP 503"] * 2
    assert run.stream.stats.disconnects == {"refused": 2}
    assert run.stream.stats.connects == 1
    assert fake.connection_count_total == 1
    assert run.stream.connections[0].reconnects == 2


# --- 7-9: live subscription changes, sharding, distrust --------------------------------------


async def test_set_markets_changes_the_subscription_live_without_reconnecting(
    fake: FakeMarketChannel,
) -> None:
    async with streaming(fake.url, {M1: streamed(M1, Y1)}) as run:
        await wait_for(live(run, M1))

        run.stream.set_markets({M1: streamed(M1, Y1), M2: streamed(M2, Y2)})
        added = await run.next(M2)
        await wait_for(live(run, M1, M2))

        run.stream.set_markets({M2: streamed(M2, Y2)})
        removed_at = len(run.seen)
        assert run.stream.live_markets() == {M2}  # at once, before the server knows
        await wait_for(lambda: fake.connections()[0].assets == {Y2})
        assert fake.move(Y1, 0.7, 0.72) == 0  # the server sends nothing more about it
        assert fake.move(Y2, 0.25, 0.27) == 1
        await run.next(M2, lambda s: s.yes_price == pytest.approx(0.26))
        messages = sent(fake)
        later = run.drain()

    assert added.yes_price == pytest.approx(0.3)
    assert messages == [
        subscription(Y1),
        operation("subscribe", Y2),
        operation("unsubscribe", Y1),
    ]
    assert all(s.market_id != M1 for s in [*run.seen[removed_at:], *later])
    assert fake.connection_count_total == 1
    assert not run.stream.stats.disconnects
    assert [m.market_id for m in run.stream.streamed()] == [M2]


async def test_a_market_whose_yes_asset_changed_is_streamed_under_the_new_one(
    fake: FakeMarketChannel,
) -> None:
    markets = {M1: streamed(M1, Y1), M2: streamed(M2, Y2)}
    async with streaming(fake.url, markets) as run:
        await wait_for(live(run, M1, M2))
        run.stream.set_markets({M1: streamed(M1, N1), M2: streamed(M2, Y2)})
        assert run.stream.live_markets() == {M2}  # no quote of the new asset yet
        await wait_for(live(run, M1, M2))
        await wait_for(lambda: fake.connections()[0].assets == {N1, Y2})
        messages = sent(fake)

    assert messages == [
        subscription(Y1, Y2),
        operation("unsubscribe", Y1),
        operation("subscribe", N1),
    ]
    assert run.stream.price(M1) == pytest.approx(0.5)  # the NO asset's book, 0.48/0.52
    assert fake.connection_count_total == 1


async def test_shards_hold_at_most_assets_per_connection_and_an_emptied_one_ends() -> None:
    markets = {}
    with FakeMarketChannel() as fake:
        for n in range(10, 16):
            market_id, yes, _ = ids(n)
            fake.add_asset(yes, market=market_id, best_bid=0.3 + n / 100, best_ask=0.32 + n / 100)
            markets[market_id] = streamed(market_id, yes)
        first_five = dict(list(markets.items())[:5])
        async with streaming(fake.url, first_five, assets_per_connection=2) as run:
            await wait_for(live(run, *first_five))
            conns = fake.connections()
            shards = run.stream.connections
            assert len(conns) == 3 and len(shards) == 3
            assert sorted(len(c.assets) for c in conns) == [1, 2, 2]
            assert {frozenset(c.assets) for c in conns} == {frozenset(s.assets) for s in shards}
            for info in conns:
                assert sent_first(info.messages) == subscription(*info.assets)

            emptied = shards[1]
            gone = {m for m, s in first_five.items() if s.yes_asset in emptied.assets}
            kept = {m: s for m, s in first_five.items() if m not in gone}
            run.stream.set_markets(kept)
            assert run.stream.connections == [shards[0], shards[2]]
            # It ends at once (no waiting for a frame on its quiet socket, 30 s heartbeat).
            await wait_for(lambda: len(fake.connections()) == 2, within=5)
            await wait_for(lambda: not emptied.connected)
            assert not run.stream.stats.disconnects  # ending an emptied shard is no loss
            assert not run.stream.lost

            # A new market fills the room left on a running shard: no new connection.
            sixth_id, sixth = list(markets.items())[5]
            run.stream.set_markets({**kept, sixth_id: sixth})
            await wait_for(live(run, *kept, sixth_id))
            assert len(run.stream.connections) == 2
            assert fake.connection_count_total == 3
            assert run.stream.live_markets() == {*kept, sixth_id}
            assert all(len(c.assets) <= 2 for c in fake.connections())


async def test_distrust_resubscribes_and_waits_for_a_fresh_book(fake: FakeMarketChannel) -> None:
    async with streaming(fake.url, {M1: streamed(M1, Y1)}) as run:
        await wait_for(live(run, M1))
        # The stream now believes 0.71; the server's book still says 0.5.
        fake.send_raw(raw("best_bid_ask", Y1, M1, best_bid="0.7", best_ask="0.72"))
        await run.next(M1, lambda s: s.yes_price == pytest.approx(0.71))

        run.stream.distrust(M1)
        run.stream.distrust("0xnot-streamed")  # nothing to do
        assert M1 not in run.stream.live_markets()
        fresh = await run.next(M1)
        await wait_for(live(run, M1))
        messages = sent(fake)

    assert fresh.yes_price == pytest.approx(0.5)  # the fresh book's, nothing in between
    assert messages == [
        subscription(Y1),
        operation("unsubscribe", Y1),
        operation("subscribe", Y1),
    ]
    assert fake.connection_count_total == 1
    assert run.stream.stats.messages["book"] == 2


async def test_a_distrusted_market_sends_nothing_on_until_a_book(
    fake: FakeMarketChannel,
) -> None:
    _, asset, _ = ids(9)  # the server has no book of it: its (re)subscription dumps `[]`
    async with streaming(fake.url, {M1: streamed(M1, asset)}) as run:
        await wait_subscribed(fake, asset)
        fake.send_raw(raw("best_bid_ask", asset, M1, best_bid="0.7", best_ask="0.72"))
        await run.next(M1)
        await wait_for(live(run, M1))

        run.stream.distrust(M1)
        await wait_for(lambda: run.stream.stats.messages["empty"] == 2)  # resubscribed
        fake.send_raw(raw("best_bid_ask", asset, M1, best_bid="0.6", best_ask="0.62"))
        await wait_for(lambda: run.stream.stats.messages["best_bid_ask"] == 2)
        assert M1 not in run.stream.live_markets()
        await wait_for(lambda: run.stream.coalescer.pending == 0)
        assert run.drain() == []  # the update was not sent on

        bids, asks = [{"price": "0.44", "size": "5"}], [{"price": "0.46", "size": "5"}]
        fake.send_raw(raw("book", asset, M1, bids=bids, asks=asks))
        fresh = await run.next(M1)
        await wait_for(live(run, M1))

    assert fresh.yes_price == pytest.approx(0.45)


async def test_distrust_of_a_market_whose_connection_has_not_started_yet(
    fake: FakeMarketChannel,
) -> None:
    """`set_markets` opens a new shard for M2; the REST reconciliation distrusts M2 in the same
    tick, before the stream's task started that shard."""
    async with streaming(fake.url, {M1: streamed(M1, Y1)}, assets_per_connection=1) as run:
        await wait_for(live(run, M1))
        run.stream.set_markets({M1: streamed(M1, Y1), M2: streamed(M2, Y2)})
        run.stream.distrust(M2)
        assert M2 not in run.stream.live_markets()
        await wait_for(live(run, M1, M2))


# --- 10-12: resolution, tick size, malformed frames ------------------------------------------


async def test_resolution_ends_the_market_with_one_closed_snapshot(
    fake: FakeMarketChannel,
) -> None:
    markets = {M1: streamed(M1, Y1), M2: streamed(M2, Y2)}
    async with streaming(fake.url, markets) as run:
        await wait_for(live(run, M1, M2))
        assert fake.resolve(M1, Y1) == 1
        assert fake.resolve(M2, N2) == 1
        with anyio.fail_after(WAIT):
            while {s.market_id for s in run.seen if s.closed} != {M1, M2}:
                await run.next()
        await wait_for(lambda: run.stream.coalescer.pending == 0)
        later = run.drain()
        yes, no = (next(s for s in run.seen if s.closed and s.market_id == m) for m in (M1, M2))

    assert (yes.yes_price, yes.resolution, yes.source) == (1.0, "yes", "ws")
    assert (no.yes_price, no.resolution, no.source) == (0.0, "no", "ws")
    assert yes.source_at is not None and no.source_at is not None
    closed = [s for s in [*run.seen, *later] if s.closed]
    assert sorted(s.market_id for s in closed) == [M1, M2]  # one each
    assert run.stream.stats.resolved == 2
    assert run.stream.stats.messages["market_resolved"] == 2


async def test_a_resolution_without_a_known_winner_reports_the_last_price(
    fake: FakeMarketChannel,
) -> None:
    _, unknown_asset, _ = ids(9)  # streamed, but the server has no book of it
    markets = {M1: streamed(M1, Y1), M2: streamed(M2, unknown_asset)}
    async with streaming(fake.url, markets) as run:
        await wait_for(live(run, M1))

        def resolved(market: str, *assets: str) -> str:
            body = {"event_type": "market_resolved", "market": market, "assets_ids": list(assets)}
            return json.dumps({**body, "winning_asset_id": "", "timestamp": str(STAMP_MS)})

        fake.send_raw(resolved(M2, unknown_asset), asset_id=unknown_asset)  # no price: nothing
        fake.send_raw(resolved("0xelsewhere", Y1), asset_id=Y1)  # not streamed: nothing
        fake.send_raw(resolved(M1, Y1, N1), asset_id=Y1)
        final = await run.next(M1, lambda s: s.closed)

    assert final.resolution == "unknown"
    assert final.yes_price == pytest.approx(0.5)
    assert final.source_at == STAMP
    assert run.stream.stats.resolved == 1
    assert run.stream.stats.messages["market_resolved"] == 3
    assert not any(s.closed for s in run.seen if s.market_id != M1)


async def test_a_tick_size_change_asks_for_a_fresh_book(fake: FakeMarketChannel) -> None:
    async with streaming(fake.url, {M1: streamed(M1, Y1)}) as run:
        await wait_for(live(run, M1))
        assert fake.tick_size_change(Y1, "0.001") == 1
        await wait_for(lambda: run.stream.stats.messages["book"] == 2)
        await wait_for(live(run, M1))
        messages = sent(fake)

    assert messages == [
        subscription(Y1),
        operation("unsubscribe", Y1),
        operation("subscribe", Y1),
    ]
    # Live on the dump, not live on the voided book, live again on the fresh one.
    assert [h.live for h in run.stream.heard] == [{M1}, set(), {M1}]
    assert run.stream.price(M1) == pytest.approx(0.5)
    assert run.stream.stats.messages["tick_size_change"] == 1
    assert fake.connection_count_total == 1 and not run.stream.stats.disconnects


async def test_a_tick_size_change_voids_the_price_until_the_next_book(
    fake: FakeMarketChannel,
) -> None:
    _, asset, _ = ids(9)  # the server has no book of it: its (re)subscription dumps `[]`
    bids, asks = [{"price": "0.47", "size": "5"}], [{"price": "0.53", "size": "5"}]
    async with streaming(fake.url, {M1: streamed(M1, asset)}) as run:
        await wait_subscribed(fake, asset)
        fake.send_raw(raw("book", asset, M1, bids=bids, asks=asks))
        await run.next(M1)
        await wait_for(live(run, M1))

        ticks = {"old_tick_size": "0.01", "new_tick_size": "0.001"}
        assert fake.send_raw(raw("tick_size_change", asset, M1, **ticks)) == 1
        await wait_for(lambda: run.stream.stats.unpriced >= 1)
        await wait_for(lambda: run.stream.stats.messages["empty"] == 2)  # asked for a book
        assert run.stream.price(M1) is None
        assert M1 not in run.stream.live_markets()
        # A level change without the server's best bid/ask cannot price a voided book.
        old_shape = raw("price_change", asset, M1, price="0.47", size="10", side="BUY")
        fake.send_raw(old_shape)
        await wait_for(lambda: run.stream.stats.unpriced >= 2)
        assert run.stream.price(M1) is None
        assert run.drain() == []  # no snapshot from a voided book

        bids = [{"price": "0.599", "size": "5"}, {"price": "0.6", "size": "5"}]
        asks = [{"price": "0.603", "size": "5"}, {"price": "0.602", "size": "5"}]
        fake.send_raw(raw("book", asset, M1, bids=bids, asks=asks, last_trade_price=""))
        priced = await run.next(M1)
        await wait_for(live(run, M1))

    assert priced.yes_price == pytest.approx(0.601)
    assert priced.spread == pytest.approx(0.002)
    assert run.stream.stats.messages["tick_size_change"] == 1
    assert fake.connection_count_total == 1


async def test_malformed_frames_are_counted_and_skipped_without_a_reconnect(
    fake: FakeMarketChannel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="polymarket_kafka.polymarket.stream.source")
    good = json.loads(raw("best_bid_ask", Y1, M1, best_bid="0.55", best_ask="0.57"))
    async with streaming(fake.url, {M1: streamed(M1, Y1)}) as run:
        await run.next(M1)
        frames = [
            "this is not JSON",
            json.dumps([{"event_type": "book", "market": M1}, good]),  # the bad one: no asset
            raw("surprise", Y1, M1),
            raw("new_market", Y1, M1),
            raw("best_bid_ask", "1154", M1, best_bid="0.1", best_ask="0.2"),  # untracked asset
            "NO NEW ASSETS",
            "[]",
            "[42]",
        ]
        for frame in frames:
            assert fake.send_raw(frame) == 1
        snapshot = await run.next(M1)
        await wait_for(lambda: run.stream.stats.frames == 1 + len(frames))
        await wait_for(live(run, M1))

    assert snapshot.yes_price == pytest.approx(0.56)
    stats = run.stream.stats
    assert stats.malformed == 3
    assert stats.messages == {
        "book": 1,
        "malformed": 3,
        "best_bid_ask": 2,
        "unknown": 1,
        "new_market": 1,
        "no_new_assets": 1,
        "empty": 1,
    }
    assert fake.connection_count_total == 1 and not stats.disconnects
    malformed_lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(malformed_lines) == 1  # at most one line a minute per connection
    assert "not JSON" in malformed_lines[0].getMessage()


async def test_a_frame_larger_than_one_read_is_joined(fake: FakeMarketChannel) -> None:
    padding = [raw("new_market", Y1, M1, description="x" * 1000) for _ in range(200)]
    good = raw("best_bid_ask", Y1, M1, best_bid="0.61", best_ask="0.63")
    big = "[" + ",".join([*padding, good]) + "]"
    assert len(big) > 3 * (1 << 16)
    async with streaming(fake.url, {M1: streamed(M1, Y1)}) as run:
        await run.next(M1)
        fake.send_raw(big)
        snapshot = await run.next(M1)

    assert snapshot.yes_price == pytest.approx(0.62)
    assert run.stream.stats.messages["new_market"] == 200
    assert not run.stream.stats.disconnects


async def test_a_message_over_the_size_cap_ends_the_connection(
    fake: FakeMarketChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection_module, "MAX_MESSAGE_BYTES", 10_000)
    async with streaming(fake.url, {M1: streamed(M1, Y1)}) as run:
        await wait_for(live(run, M1))
        under = raw("new_market", Y1, M1, description="x" * 5_000)
        assert fake.send_raw(under) == 1  # under the cap: read as usual
        await wait_for(lambda: run.stream.stats.messages["new_market"] == 1)
        over = raw("new_market", Y1, M1, description="x" * 20_000)
        assert fake.send_raw(over) == 1
        await wait_for(lambda: run.stream.lost)
        await wait_for(lambda: fake.connection_count_total == 2 and live(run, M1)())
        (info,) = fake.connections()

    (lost,) = run.stream.lost
    assert lost.reason.startswith("network error: MessageTooLargeError"), lost.reason
    assert "over 10000 bytes" in lost.reason
    assert M1 not in lost.live
    assert run.stream.stats.disconnects == {"network": 1}
    assert run.stream.stats.messages["new_market"] == 1  # the big one never reached the sink
    assert sent_first(info.messages) == subscription(Y1)  # reconnected, subscribed again


async def test_a_binary_frame_is_read_as_text() -> None:
    book = raw(
        "book",
        Y1,
        M1,
        bids=[{"price": "0.3", "size": "1"}],
        asks=[{"price": "0.34", "size": "1"}],
    )
    with BinaryFrameServer(f"[{book}]".encode()) as server:
        async with streaming(server.url, {M1: streamed(M1, Y1)}) as run:
            snapshot = await run.next(M1)

    assert snapshot.yes_price == pytest.approx(0.32)
    assert snapshot.source_at == STAMP
    assert json.loads(server.received[0]) == subscription(Y1)


# --- 13: coalescing and backpressure ---------------------------------------------------------


async def test_a_flood_is_coalesced_to_one_snapshot_per_interval(
    fake: FakeMarketChannel,
) -> None:
    fake.add_asset(Y1, market=M1, best_bid=0.4, best_ask=0.42)
    received: list[tuple[float, MarketSnapshot]] = []

    async def consume(run: Running) -> None:
        async for snapshot, _entered in run.snapshots:
            received.append((anyio.current_time(), snapshot))

    async with streaming(fake.url, {M1: streamed(M1, Y1)}, coalesce_seconds=0.2) as run:
        await run.next(M1)
        await wait_subscribed(fake, Y1)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(consume, run)
            start = anyio.current_time()
            flood = fake.flood([Y1], per_second=1000, seconds=1.0)  # mid 0.51
            await anyio.to_thread.run_sync(flood.join, WAIT)
            assert fake.send_raw("NO NEW ASSETS") == 1  # after every flood frame
            await wait_for(lambda: run.stream.stats.messages["no_new_assets"] == 1)
            await wait_for(lambda: run.stream.coalescer.pending == 0)
            elapsed = anyio.current_time() - start
            await wait_for(lambda: len(received) == run.stream.stats.snapshots - 1)
            tasks.cancel_scope.cancel()

    flooded = [s for _, s in received if s.market_id == M1]
    assert flooded, "no snapshot during the flood"
    assert all(s.yes_price == pytest.approx(0.51) for s in flooded)
    assert len(flooded) <= elapsed / 0.2 + 2
    assert run.stream.stats.messages["price_change"] == 1000
    assert run.stream.coalescer.coalesced == 1000 - len(flooded)  # one offer per frame


async def test_a_full_snapshot_channel_turns_into_coalescing_not_a_stalled_socket(
    fake: FakeMarketChannel,
) -> None:
    fake.add_asset(Y1, market=M1, best_bid=0.4, best_ask=0.42)
    async with streaming(fake.url, {M1: streamed(M1, Y1)}, buffer=1) as run:
        await wait_for(lambda: run.snapshots.statistics().current_buffer_used == 1)
        await wait_subscribed(fake, Y1)
        flood = fake.flood([Y1], per_second=1000, seconds=0.5)
        await anyio.to_thread.run_sync(flood.join, WAIT)
        assert not flood.is_alive()
        assert fake.send_raw("NO NEW ASSETS") == 1
        await wait_for(lambda: run.stream.stats.messages["no_new_assets"] == 1)

        stats = run.stream.stats
        assert stats.messages["price_change"] == 500  # the reader kept reading
        assert stats.frames == 1 + 500 + 1
        assert run.snapshots.statistics().current_buffer_used == 1  # nobody read it
        assert run.stream.coalescer.pending <= 1  # one pending entry, however many updates
        assert run.stream.coalescer.coalesced > 0
        assert stats.snapshots <= 2  # the one in the channel, and the one the flusher holds

        first = await run.next(M1)
        latest = await run.next(M1)

    assert first.yes_price == pytest.approx(0.41)  # the dump's
    assert latest.yes_price == pytest.approx(0.51)
    assert fake.connection_count_total == 1 and not run.stream.stats.disconnects


async def test_a_market_removed_while_the_flusher_waits_sends_nothing(
    fake: FakeMarketChannel,
) -> None:
    markets = {M1: streamed(M1, Y1), M2: streamed(M2, Y2), M3: streamed(M3, Y3)}
    async with streaming(fake.url, markets, buffer=1) as run:
        # One dump frame: all three due at once. M1 fills the channel, the flusher waits
        # to send M2's snapshot, M3's is still to be built.
        await wait_for(lambda: run.stream.stats.snapshots == 2)
        run.stream.set_markets({M1: streamed(M1, Y1), M2: streamed(M2, Y2)})
        first, second = await run.next(), await run.next()
        await wait_for(lambda: run.stream.coalescer.pending == 0)
        rest = run.drain()

    assert [first.market_id, second.market_id, *[s.market_id for s in rest]] == [M1, M2]
    assert run.stream.stats.snapshots == 2


# --- 14: unreachable server, connect timeout -------------------------------------------------


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every reconnect delay the shards draw (the real `reconnect_delays`, recorded)."""
    drawn: list[float] = []
    original = connection_module.reconnect_delays

    def recording(
        first: float, cap: float, rand: Callable[[], float] = random.random
    ) -> Iterator[float]:
        for delay in original(first, cap, rand):
            drawn.append(delay)
            yield delay

    monkeypatch.setattr(connection_module, "reconnect_delays", recording)
    return drawn


async def test_nothing_listening_is_retried_with_backoff_and_never_escapes(
    delays: list[float],
) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws/market"
    async with streaming(url, {M1: streamed(M1, Y1)}) as run:
        await wait_for(lambda: len(run.stream.lost) >= 5)
        assert run.stream.live_markets() == set()

    lost = run.stream.lost
    assert run.stream.stats.connects == 0
    assert run.stream.connections[0].reconnects >= 4
    # Jittered exponential backoff: the n-th wait in [d/2, d], d = 0.05 * 2**n capped at 0.2.
    for n, delay in enumerate(delays[:4]):
        ceiling = min(0.05 * 2**n, 0.2)
        assert ceiling / 2 <= delay <= ceiling
    for n in range(4):  # and the shard really waited that long between attempts
        assert lost[n + 1].at - lost[n].at >= delays[n] * 0.9


async def test_a_server_that_sends_the_dump_then_closes_sees_the_backoff_grow(
    fake: FakeMarketChannel, delays: list[float]
) -> None:
    """Data alone does not reset the backoff: a connection must also hold for
    `silence_seconds`. Then the next wait starts from the bottom again."""
    first, cap = 0.05, 0.4
    async with streaming(
        fake.url,
        {M1: streamed(M1, Y1)},
        reconnect_min_seconds=first,
        reconnect_max_seconds=cap,
        silence_seconds=1.0,
    ) as run:
        for n in range(1, 6):
            await wait_for(partial(dumped, run, n))  # the n-th connection delivered its dump
            assert fake.close_all() == 1
            await wait_for(partial(lost_at_least, run, n))
        # The sixth connection delivers and holds (silent once `silence_seconds` passed).
        await wait_for(partial(dumped, run, 6))
        (shard,) = run.stream.connections
        sixth = shard.generation
        await wait_for(lambda: any(h.generation == sixth for h in run.stream.silences))
        assert fake.close_all() == 1
        await wait_for(partial(lost_at_least, run, 6))
        await wait_for(partial(dumped, run, 7))

    assert run.stream.stats.disconnects == {"server_closed": 6}
    assert fake.connection_count_total == 7
    assert len(delays) == 6
    assert all(first / 2 <= delay <= cap for delay in delays), delays
    # They grew over the quick closes (loosely: a cycle stalled past `silence_seconds` on a
    # busy machine would reset them once); without the hold rule all would be <= `first`.
    assert sum(1 for delay in delays[:5] if delay > first) >= 2, delays
    assert delays[5] <= first  # after the connection that held: from the bottom again


def dumped(run: Running, count: int) -> bool:
    return run.stream.stats.messages["book"] >= count


def lost_at_least(run: Running, count: int) -> bool:
    return len(run.stream.lost) >= count


async def test_nothing_listening_counts_as_connect_failed() -> None:
    """A connection that could not be opened (TCP refused) is `connect_failed`, as a connect
    timeout is; `network` is for a connection lost once open."""
    url = f"ws://127.0.0.1:{free_port()}/ws/market"
    async with streaming(url, {M1: streamed(M1, Y1)}) as run:
        await wait_for(lambda: len(run.stream.lost) >= 2)

    assert run.stream.stats.disconnects == {"connect_failed": len(run.stream.lost)}


async def test_a_shard_emptied_while_it_waits_to_reconnect_ends(
    fake: FakeMarketChannel,
) -> None:
    fake.refuse_connections(1)
    async with streaming(fake.url, {M1: streamed(M1, Y1)}) as run:
        await wait_for(lambda: run.stream.lost)  # refused: its shard waits to retry
        run.stream.set_markets({})
        assert run.stream.connections == []
        run.stream.set_markets({M2: streamed(M2, Y2)})
        await wait_for(live(run, M2))
        (info,) = fake.connections()

    assert sent_first(info.messages) == subscription(Y2)
    assert fake.connection_count_total == 1  # the emptied shard never connected again
    assert [c.shard for c in run.stream.connects] == [1]


async def test_an_unanswered_upgrade_times_out_as_connect_failed() -> None:
    with SilentServer() as server:
        async with streaming(
            server.url, {M1: streamed(M1, Y1)}, connect_timeout_seconds=0.2
        ) as run:
            await wait_for(lambda: len(run.stream.lost) >= 2)

    assert run.stream.lost[0].reason == "connect timed out after 0.2s"
    assert run.stream.stats.disconnects["connect_failed"] >= 2


# --- stamps, invalid snapshots, the package entry points -------------------------------------


async def test_exchange_time_stamps_snapshots_with_the_update_time(
    fake: FakeMarketChannel,
) -> None:
    async with streaming(fake.url, {M1: streamed(M1, Y1)}, exchange_time=True) as run:
        await run.next(M1)
        fake.move(Y1, 0.6, 0.62, timestamp_ms=STAMP_MS)
        moved = await run.next(M1, lambda s: s.yes_price == pytest.approx(0.61))
        fake.send_raw(
            raw("best_bid_ask", Y1, M1, best_bid="0.7", best_ask="0.72", timestamp="9" * 20)
        )
        unreadable = await run.next(M1, lambda s: s.yes_price == pytest.approx(0.71))

    assert moved.taken_at == moved.source_at == STAMP
    assert unreadable.source_at is None  # a timestamp no datetime can hold
    assert unreadable.taken_at == NOW  # the clock stands in


async def test_a_quote_without_a_timestamp_has_no_source_time(
    fake: FakeMarketChannel,
) -> None:
    _, asset, _ = ids(9)  # no dump book of it: no timestamp was ever seen
    async with streaming(fake.url, {M1: streamed(M1, asset)}, exchange_time=True) as run:
        await wait_subscribed(fake, asset)
        body = {"event_type": "best_bid_ask", "asset_id": asset, "market": M1}
        fake.send_raw(json.dumps({**body, "best_bid": "0.2", "best_ask": "0.24"}))
        snapshot = await run.next(M1)

    assert snapshot.yes_price == pytest.approx(0.22)
    assert snapshot.source_at is None
    assert snapshot.taken_at == NOW


async def test_a_frame_whose_handling_raises_is_skipped_and_counted(
    fake: FakeMarketChannel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fragile(text: str) -> Frame:
        if "BOOM" in text:
            raise RuntimeError("a bug in decoding")
        return decode_frame(text)

    monkeypatch.setattr(source_module, "decode_frame", fragile)
    async with streaming(fake.url, {M1: streamed(M1, Y1)}) as run:
        await run.next(M1)
        fake.send_raw("BOOM")
        fake.send_raw(raw("best_bid_ask", Y1, M1, best_bid="0.7", best_ask="0.72"))
        after = await run.next(M1)

    assert after.yes_price == pytest.approx(0.71)
    assert run.stream.stats.frame_errors == 1
    assert fake.connection_count_total == 1 and not run.stream.stats.disconnects
    (record,) = [r for r in caplog.records if "could not be handled" in r.getMessage()]
    assert record.exc_info is not None


async def test_a_snapshot_the_contract_refuses_is_counted_not_sent(
    fake: FakeMarketChannel,
) -> None:
    markets = {M1: streamed(M1, Y1, volume=-1.0), M2: streamed(M2, Y2)}
    async with streaming(fake.url, markets) as run:
        await run.next(M2)
        await wait_for(lambda: run.stream.stats.invalid_snapshots >= 1)
        fake.resolve(M1, Y1)
        await wait_for(lambda: run.stream.stats.invalid_snapshots >= 2)
        fake.move(Y2, 0.3, 0.32)
        await run.next(M2, lambda s: s.yes_price == pytest.approx(0.31))

    assert all(s.market_id == M2 for s in run.seen)
    assert run.stream.stats.resolved == 0


async def test_open_market_stream_builds_the_stream_from_the_config(
    fake: FakeMarketChannel,
) -> None:
    config = PolymarketConfig(
        ws_url=fake.url,
        ws_assets_per_connection=7,
        ws_ping_seconds=3.0,
        ws_silence_seconds=9.0,
        ws_coalesce_ms=50.0,
        ws_reconnect_max_seconds=4.0,
        request_timeout_seconds=2.0,
    )
    assert stream_settings(config) == StreamSettings(
        url=fake.url,
        assets_per_connection=7,
        ping_interval_seconds=3.0,
        silence_seconds=9.0,
        reconnect_max_seconds=4.0,
        connect_timeout_seconds=2.0,
    )
    send, receive = anyio.create_memory_object_stream[Polled](10)
    async with open_market_stream(config, clock=lambda: NOW) as stream:
        assert stream.coalescer.interval == pytest.approx(0.05)
        stream.set_markets({M1: streamed(M1, Y1)})
        with receive:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(stream.run, send)
                with anyio.fail_after(WAIT):
                    snapshot, entered = await receive.receive()
                tasks.cancel_scope.cancel()

    assert snapshot.market_id == M1 and snapshot.yes_price == pytest.approx(0.5)
    assert entered <= anyio.current_time()


async def test_a_resolved_market_stays_ended_on_the_stream(fake: FakeMarketChannel) -> None:
    async with streaming(fake.url, {M1: streamed(M1, Y1)}) as run:
        await wait_for(live(run, M1))
        assert fake.resolve(M1, Y1) == 1
        await run.next(M1, lambda s: s.closed)
        # More trading and a second resolution after the end: nothing more is sent on.
        fake.move(Y1, 0.30, 0.32)
        assert fake.resolve(M1, Y1) == 1
        await wait_for(lambda: run.stream.stats.messages["market_resolved"] == 2)
        await wait_for(lambda: run.stream.coalescer.pending == 0)
        later = run.drain()
        assert M1 not in run.stream.live_markets()  # REST serves it until it knows
    closed = [s for s in [*run.seen, *later] if s.market_id == M1 and s.closed]
    assert len(closed) == 1
    assert run.stream.stats.resolved == 1
    assert not [s for s in later if s.market_id == M1]
