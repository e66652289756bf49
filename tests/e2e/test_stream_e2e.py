"""The market channel as a source, end to end: frame → detector → Kafka, REST as watchdog.

The service streams from a `FakeMarketChannel` (real WebSocket on loopback, the live message
shapes) through the real stream client, polls the fake Polymarket over real HTTP, and
publishes through the real producer to a real Tansu broker; `tests/e2e/stream_harness.py`
assembles it as `testing.demo.run_demo` does, on the wall clock. The channel's books start at
the midpoint REST reports (0.49/0.51 against 0.50), so the two sources agree until a test
says otherwise. Every test ends by reading the topic back: exactly what was published.

Timing is never asserted: every wait polls for a condition (`Streaming.until`), with a
generous bound.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from polymarket_kafka.config import MongoConfig
from polymarket_kafka.models import ConvictionDirection, PolymarketEvent
from polymarket_kafka.subscriptions import open_subscription_store
from polymarket_kafka.testing.fake_market_channel import FakeMarketChannel
from polymarket_kafka.testing.fake_polymarket import FakeMarket, FakePolymarketServer
from polymarket_kafka.testing.local_broker import LocalBroker, read_events
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore
from tests.e2e.service_process import service_env
from tests.e2e.stream_harness import (
    ServiceProcess,
    Streaming,
    Ticker,
    operations,
    read_back,
    streaming_service,
)

pytestmark = pytest.mark.broker

#: The channel's book around REST's midpoint of 0.50.
BID, ASK = 0.49, 0.51


@pytest.fixture
def polymarket() -> Iterator[FakePolymarketServer]:
    with FakePolymarketServer(n_markets=3, price=lambda i: 0.50) as fake:
        yield fake


@pytest.fixture
def channel(polymarket: FakePolymarketServer) -> Iterator[FakeMarketChannel]:
    """The market channel, knowing every market's YES asset at REST's price."""
    with FakeMarketChannel() as fake:
        for market in polymarket.markets:
            fake.add_asset(
                market.yes_token_id, market=market.condition_id, best_bid=BID, best_ask=ASK
            )
        yield fake


def without_published_at(event: PolymarketEvent) -> PolymarketEvent:
    return event.model_copy(update={"published_at": None})


async def assert_read_back(running: Streaming, broker: LocalBroker, topic: str) -> None:
    """The topic holds exactly the events the service published: nothing lost or doubled."""
    events = await read_back(broker.bootstrap_servers, topic, expected=len(running.published))
    assert sorted(map(without_published_at, events), key=lambda e: e.event_id) == sorted(
        map(without_published_at, running.published), key=lambda e: e.event_id
    )


def resubscriptions(channel: FakeMarketChannel, asset_id: str) -> list[tuple[int, str]]:
    """(connection id, operation) of the live subscription changes naming `asset_id`."""
    return [(conn, op) for conn, op, assets in operations(channel) if asset_id in assets]


@pytest.mark.anyio
async def test_a_streamed_move_reaches_kafka_and_rest_leaves_streamed_markets_alone(
    polymarket: FakePolymarketServer,
    channel: FakeMarketChannel,
    tansu_broker: LocalBroker,
    kafka_topic: str,
) -> None:
    a, b, c = polymarket.markets
    with anyio.fail_after(60):
        async with streaming_service(
            polymarket,
            channel,
            bootstrap_servers=tansu_broker.bootstrap_servers,
            topic=kafka_topic,
            ws_reconcile_seconds=3600,  # only the first tick reconciles
        ) as running:
            await running.until_live(a.condition_id, b.condition_id, c.condition_id)
            polls, fallback_polls = running.rest_polls(), running.coordinator.fallback_polls
            cycles = running.stats.poll_cycles
            await running.ticks(5)
            # The stream serves every market: no tick asks REST for any of them, and such a
            # tick is no poll cycle.
            assert running.rest_polls() == polls
            assert running.stats.poll_cycles == cycles
            assert running.coordinator.fallback_polls == fallback_polls
            assert running.coordinator.fallback == frozenset()

            polymarket.set_price(a.condition_id, 0.70)  # REST agrees, not that it is asked
            assert channel.move(a.yes_token_id, 0.69, 0.71) == 1
            await running.until(lambda: running.published != [], "the streamed move's event")
            await running.ticks(3)
            assert running.rest_polls() == polls
            assert running.stats.poll_cycles == cycles
            assert running.coordinator.disagreements == 0

    events = await read_back(tansu_broker.bootstrap_servers, kafka_topic, expected=1)
    assert len(events) == 1
    (event,) = events
    assert without_published_at(event) == without_published_at(running.published[0])
    assert event.market_id == a.condition_id
    assert event.price_source == "ws"
    assert event.price_age_seconds is not None
    assert 0 <= event.price_age_seconds < 60
    assert event.direction is ConvictionDirection.TOWARD_YES
    assert (event.baseline_yes_price, event.yes_price, event.no_price) == (0.50, 0.70, 0.30)
    assert event.price_change == pytest.approx(0.20)
    assert not event.final
    assert event.question == a.question
    assert running.stats.snapshots_streamed > 0


@pytest.mark.anyio
async def test_a_silent_channel_hands_the_market_to_rest_and_is_given_up_once_rest_sees_a_move(
    polymarket: FakePolymarketServer,
    channel: FakeMarketChannel,
    tansu_broker: LocalBroker,
    kafka_topic: str,
) -> None:
    """A frozen channel (open, PONG answered, no data) is first taken for a quiet one: its
    market goes to REST every tick, and while REST agrees with the stream's last word the
    connection is kept. Once REST shows the market moved, the connection is given up and
    reconnected; after the thaw the stream serves the market again."""
    a = polymarket.markets[0]
    market = a.condition_id
    ticker = Ticker(channel)  # a live book: no silence until the freeze
    ticker.quote(a.yes_token_id, BID, ASK)
    with anyio.fail_after(60):
        async with (
            streaming_service(
                polymarket,
                channel,
                bootstrap_servers=tansu_broker.bootstrap_servers,
                topic=kafka_topic,
                store=InMemorySubscriptionStore(seed=[market]),
                ws_silence_seconds=1.0,
                ws_reconnect_max_seconds=0.5,
                ws_reconcile_seconds=1.0,
            ) as running,
            anyio.create_task_group() as pushes,
        ):
            pushes.start_soon(ticker.run)
            coordinator, stream = running.coordinator, running.stream
            await running.until_live(market)
            assert stream.stats.silences == 0

            # Quiet but healthy: REST polls it every tick, finds the stream's price, keeps it.
            channel.freeze()
            await running.until(lambda: market in coordinator.fallback, "REST fallback")
            assert stream.stats.silences >= 1
            assert market not in stream.live_markets()
            polls, ticks = running.rest_polls(), running.tick_count
            await running.ticks(6)
            assert running.rest_polls() - polls >= running.tick_count - ticks - 2  # ~every tick
            assert market in coordinator.fallback
            assert stream.stats.disconnects.get("silent", 0) == 0
            assert channel.connection_count_total == 1
            assert running.events(market) == []

            # A move only REST sees (the frozen channel's book follows, unsent): the REST
            # event, and the silent connection given up and opened again.
            polymarket.set_price(market, 0.70)
            ticker.quote(a.yes_token_id, 0.69, 0.71)
            await running.until(lambda: running.events(market) != [], "the REST move's event")
            await running.until(lambda: stream.stats.disconnects["silent"] >= 1, "given up")
            await running.until(lambda: channel.connection_count_total >= 2, "a reconnection")
            assert market not in stream.live_markets()  # still frozen: no data, no dump

            channel.freeze(False)
            await running.until_live(market)
            polls, fallback_polls = running.rest_polls(), coordinator.fallback_polls
            reconciliations, ticks = coordinator.reconciliations, running.tick_count
            await running.ticks(20)
            # Back on the stream: REST asks only on the reconciliation ticks.
            assert coordinator.fallback_polls == fallback_polls
            reconciled = coordinator.reconciliations - reconciliations
            assert running.rest_polls() - polls <= reconciled + 1
            assert reconciled < running.tick_count - ticks
            assert coordinator.fallback == frozenset()
            assert coordinator.disagreements == 0  # the stream came back at REST's price
            pushes.cancel_scope.cancel()

    (event,) = running.events(market)
    assert event.price_source == "rest"
    assert event.price_age_seconds is None
    assert event.direction is ConvictionDirection.TOWARD_YES
    assert (event.baseline_yes_price, event.yes_price) == (0.50, 0.70)
    await assert_read_back(running, tansu_broker, kafka_topic)
    # Given up while silent: counted as such (`polymarket_kafka_stream_silence_trips_total`).
    disconnects = dict(running.stream.stats.disconnects)
    assert disconnects.get("silent", 0) >= 1, f"silence trips not counted as such: {disconnects}"
    assert set(disconnects) == {"silent"}, disconnects


@pytest.mark.anyio
async def test_a_channel_that_closes_and_refuses_connections_falls_back_to_rest_and_recovers(
    polymarket: FakePolymarketServer,
    channel: FakeMarketChannel,
    tansu_broker: LocalBroker,
    kafka_topic: str,
) -> None:
    a = polymarket.markets[0]
    market = a.condition_id
    with anyio.fail_after(60):
        async with streaming_service(
            polymarket,
            channel,
            bootstrap_servers=tansu_broker.bootstrap_servers,
            topic=kafka_topic,
            store=InMemorySubscriptionStore(seed=[market]),
            ws_reconnect_max_seconds=0.5,
            ws_reconcile_seconds=1.0,
        ) as running:
            coordinator = running.coordinator
            await running.until_live(market)

            # The server closes the connection (1011), then refuses the next reconnections:
            # a few seconds without the stream.
            channel.refuse_connections(8)
            assert channel.close_all() == 1
            await running.until(lambda: market in coordinator.fallback, "REST fallback")
            polls, ticks = running.rest_polls(), running.tick_count
            await running.ticks(6)
            assert running.rest_polls() - polls >= running.tick_count - ticks - 2  # ~every tick

            polymarket.set_price(market, 0.70)
            await running.until(lambda: running.events(market) != [], "the REST move's event")
            channel.move(a.yes_token_id, 0.69, 0.71)  # the channel's book follows

            await running.until_live(market)  # reconnected once the refusals ran out
            fallback_polls = coordinator.fallback_polls
            await running.ticks(10)
            assert coordinator.fallback_polls == fallback_polls
            assert coordinator.disagreements == 0

    (event,) = running.events(market)
    assert (event.price_source, event.yes_price) == ("rest", 0.70)
    disconnects = running.stream.stats.disconnects
    assert disconnects["server_closed"] == 1
    assert disconnects["refused"] >= 1
    assert channel.connection_count_total == 2
    await assert_read_back(running, tansu_broker, kafka_topic)


@pytest.mark.anyio
async def test_rest_disagreeing_with_the_stream_is_counted_trusted_and_asks_for_a_fresh_book(
    polymarket: FakePolymarketServer,
    channel: FakeMarketChannel,
    tansu_broker: LocalBroker,
    kafka_topic: str,
) -> None:
    a, b, c = polymarket.markets
    market = a.condition_id
    with anyio.fail_after(60):
        async with streaming_service(
            polymarket,
            channel,
            bootstrap_servers=tansu_broker.bootstrap_servers,
            topic=kafka_topic,
            ws_reconcile_seconds=0.5,
            ws_tolerance=0.02,
        ) as running:
            coordinator = running.coordinator
            await running.until_live(a.condition_id, b.condition_id, c.condition_id)
            assert coordinator.disagreements == 0
            assert resubscriptions(channel, a.yes_token_id) == []

            polymarket.set_price(market, 0.70)  # REST only: the channel still says 0.50
            await running.until(lambda: coordinator.disagreements >= 1, "a disagreement")
            await running.until(lambda: running.events(market) != [], "REST's snapshot's event")
            # The fresh book: the asset unsubscribed and subscribed again, same connection.
            await running.until(
                lambda: len(resubscriptions(channel, a.yes_token_id)) >= 2, "a resubscription"
            )
            (connection,) = channel.connections()
            assert resubscriptions(channel, a.yes_token_id)[:2] == [
                (connection.id, "unsubscribe"),
                (connection.id, "subscribe"),
            ]
            assert channel.connection_count_total == 1
            await running.until(
                lambda: market in running.stream.live_markets(), "live again on the fresh book"
            )

            # The channel catches up with REST: the disagreements stop.
            channel.move(a.yes_token_id, 0.69, 0.71)
            await running.until(lambda: running.stream.price(market) == 0.70, "streamed 0.70")
            settled, reconciliations = coordinator.disagreements, coordinator.reconciliations
            await running.until(
                lambda: coordinator.reconciliations >= reconciliations + 2, "two reconciliations"
            )
            assert coordinator.disagreements == settled

    assert running.stream.price(b.condition_id) == 0.50  # the others never disagreed
    (event,) = running.published
    assert event.market_id == market
    assert event.price_source == "rest"
    assert event.direction is ConvictionDirection.TOWARD_YES
    assert (event.baseline_yes_price, event.yes_price) == (0.50, 0.70)
    await assert_read_back(running, tansu_broker, kafka_topic)


@pytest.mark.anyio
async def test_a_resolved_market_ends_with_exactly_one_final_event(
    polymarket: FakePolymarketServer,
    channel: FakeMarketChannel,
    tansu_broker: LocalBroker,
    kafka_topic: str,
) -> None:
    a, b, c = polymarket.markets
    # b's NO asset too: the channel names it the winner (the stream streams YES assets only).
    channel.add_asset(b.no_token_id, market=b.condition_id, best_bid=BID, best_ask=ASK)
    with anyio.fail_after(60):
        async with streaming_service(
            polymarket,
            channel,
            bootstrap_servers=tansu_broker.bootstrap_servers,
            topic=kafka_topic,
            ws_reconcile_seconds=0.3,
        ) as running:
            await running.until_live(a.condition_id, b.condition_id, c.condition_id)
            assert channel.resolve(a.condition_id, a.yes_token_id) == 1
            assert channel.resolve(b.condition_id, b.no_token_id) == 1
            await running.until(lambda: len(running.published) >= 2, "two final events")

            # Later REST knows too: a reconciliation finds both closed, the stream drops them.
            polymarket.close_market(a.condition_id, winner_yes=True)
            polymarket.close_market(b.condition_id, winner_yes=False)

            (connection,) = channel.connections()

            def dropped(market: FakeMarket) -> bool:
                changes = resubscriptions(channel, market.yes_token_id)
                return changes[-1:] == [(connection.id, "unsubscribe")]

            await running.until(lambda: dropped(a) and dropped(b), "REST found both closed")
            assert [m.market_id for m in running.stream.streamed()] == [c.condition_id]
            # A closed market is left to the reconciliation: its closed snapshots change nothing.
            # (Between the resolution on the stream and REST's confirmation the market was on
            # REST fallback: the tick that found it closed planned it so.)
            await running.until(
                lambda: running.coordinator.fallback == frozenset(), "closed markets off fallback"
            )
            reconciliations = running.coordinator.reconciliations
            await running.until(
                lambda: running.coordinator.reconciliations >= reconciliations + 2,
                "two more reconciliations",
            )

    finals = {e.market_id: e for e in running.published}
    assert len(running.published) == 2
    assert set(finals) == {a.condition_id, b.condition_id}
    for market, resolution, price in ((a, "yes", 1.0), (b, "no", 0.0)):
        event = finals[market.condition_id]
        assert event.final
        assert event.rule == "market_closed"
        assert event.resolution == resolution
        assert event.yes_price == price
        assert event.price_source == "ws"
    assert running.events(c.condition_id) == []
    await assert_read_back(running, tansu_broker, kafka_topic)


@pytest.mark.anyio
async def test_subscription_changes_are_applied_to_the_open_connection(
    polymarket: FakePolymarketServer,
    channel: FakeMarketChannel,
    tansu_broker: LocalBroker,
    kafka_topic: str,
) -> None:
    a, b, c = polymarket.markets
    store = InMemorySubscriptionStore(seed=[a.condition_id, b.condition_id])
    with anyio.fail_after(60):
        async with streaming_service(
            polymarket,
            channel,
            bootstrap_servers=tansu_broker.bootstrap_servers,
            topic=kafka_topic,
            store=store,
            subscription_refresh_seconds=0.05,
        ) as running:
            await running.until_live(a.condition_id, b.condition_id)
            (connection,) = channel.connections()
            assert connection.assets == {a.yes_token_id, b.yes_token_id}

            await store.unsubscribe(a.condition_id)
            await running.until(
                lambda: (connection.id, "unsubscribe") in resubscriptions(channel, a.yes_token_id),
                "an unsubscribe operation",
            )
            assert [info.assets for info in channel.connections()] == [{b.yes_token_id}]

            await store.subscribe(c.condition_id)
            await running.until(
                lambda: (connection.id, "subscribe") in resubscriptions(channel, c.yes_token_id),
                "a subscribe operation",
            )
            await running.until_live(c.condition_id)
            assert channel.move(c.yes_token_id, 0.29, 0.31) == 1
            await running.until(lambda: running.events(c.condition_id) != [], "c's event")

            assert [info.id for info in channel.connections()] == [connection.id]
            assert channel.connection_count_total == 1  # never reconnected
            assert running.stream.stats.connects == 1
            assert channel.connections()[0].assets == {b.yes_token_id, c.yes_token_id}

    (event,) = running.published
    assert event.market_id == c.condition_id
    assert event.price_source == "ws"
    assert event.direction is ConvictionDirection.TOWARD_NO
    assert (event.baseline_yes_price, event.yes_price) == (0.50, 0.30)
    await assert_read_back(running, tansu_broker, kafka_topic)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"no sample {name}{labels}")


async def subscribe_all(config: MongoConfig, market_ids: list[str]) -> None:
    async with open_subscription_store(config) as store:
        for market_id in market_ids:
            await store.subscribe(market_id)


@pytest.mark.mongo_server
def test_the_service_process_streams_and_reports_the_stream_in_health_and_metrics(
    polymarket: FakePolymarketServer,
    tansu_broker: LocalBroker,
    kafka_topic: str,
    mongo_server_uri: str,
    tmp_path: Path,
) -> None:
    a, b, _ = polymarket.markets
    mongo = MongoConfig(
        uri=mongo_server_uri, database="stream_e2e", collection=f"subs_{uuid.uuid4().hex[:12]}"
    )
    anyio.run(subscribe_all, mongo, [a.condition_id, b.condition_id])
    # The channel has no book of b's asset: the stream never serves b, REST does.
    with FakeMarketChannel() as channel:
        channel.add_asset(a.yes_token_id, market=a.condition_id, best_bid=BID, best_ask=ASK)
        env = service_env(
            polymarket,
            tansu_broker.bootstrap_servers,
            kafka_topic,
            (mongo.uri, mongo.database, mongo.collection),
            tmp_path,
            POLYMARKET_WS_URL=channel.url,
            POLYMARKET_WS_RECONCILE_SECONDS="3600",
            POLYMARKET_WS_SILENCE_SECONDS="3600",  # a's quiet book stays on the stream
        )
        with (
            ServiceProcess.running(env) as service,
            httpx.Client(base_url=service.base_url(), timeout=10) as http,
        ):

            def stream_component() -> dict[str, Any] | None:
                # Whatever the other components say (Kafka's is judged from librdkafka's
                # statistics, every 5 s): the stream's is always there, and always ok.
                response = http.get("/health/ready")
                component: dict[str, Any] = response.json()["components"]["stream"]
                return component if component["rest_fallback"] == [b.condition_id] else None

            deadline = time.monotonic() + 30
            while (stream := stream_component()) is None:
                assert service.process.poll() is None, service.stderr
                assert time.monotonic() < deadline, f"stream never settled:\n{service.stderr}"
                time.sleep(0.05)
            assert stream["status"] == "ok"
            assert stream["detail"] == (
                "1/1 market channel connection(s) up, 2 market(s) streamed, 1 on REST fallback"
            )
            assert stream["connections_up"] == 1
            assert stream["rest_fallback_markets"] == 1
            assert stream["disagreements"] == 0

            metrics = http.get("/metrics").text
            assert metric(metrics, "polymarket_kafka_stream_connections_up") == 1
            assert metric(metrics, "polymarket_kafka_stream_messages_total", type="book") > 0
            assert metric(metrics, "polymarket_kafka_stream_rest_fallback_markets") == 1
            assert metric(metrics, "polymarket_kafka_stream_rest_fallback_polls_total") > 0

            # A streamed move goes all the way through the real process to Kafka.
            polymarket.set_price(a.condition_id, 0.70)
            assert channel.move(a.yes_token_id, 0.69, 0.71) == 1
            messages = read_events(
                tansu_broker.bootstrap_servers, kafka_topic, expected=1, timeout=30
            )
            service.process.terminate()
            assert service.process.wait(timeout=30) == 0, service.stderr
    assert len(messages) == 1
    event = PolymarketEvent.model_validate_json(messages[0].value or b"")
    assert (event.market_id, event.price_source, event.yes_price) == (a.condition_id, "ws", 0.70)
    assert "NOT delivered" not in service.stderr
