"""Detector state across a restart, through a real state topic (Tansu) and the real pipeline.

Two runs of the service share one state topic. The first sees a move start (pending, not
yet confirmed) and stops; the second restores the state and confirms it, measured from the
price before the stop; a market that moved while the service was down is reported too,
measured from its last price before the stop. Without the state topic the second run takes
the current prices as baselines and reports nothing (checked as well).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import anyio
import pytest

from polymarket_kafka.app import KafkaStateSink, restore_states, run_app
from polymarket_kafka.config import AppConfig, KafkaConfig, MongoConfig
from polymarket_kafka.detector_state import MarketState
from polymarket_kafka.kafka.publisher import open_kafka_publisher
from polymarket_kafka.kafka.state_topic import StateWriter, read_state
from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.polymarket import open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller
from polymarket_kafka.ruleset import load_rules_text
from polymarket_kafka.service.pipeline import DurableState, run_service
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.service.stats import ServiceSettings, ServiceStats
from polymarket_kafka.subscriptions import open_subscription_store
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer
from polymarket_kafka.testing.local_broker import LocalBroker, read_events
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore
from tests.e2e.service_process import running_service, service_env, wait_until_polled
from tests.factories import scripted_prices_clock

pytestmark = pytest.mark.broker

T0 = datetime(2024, 11, 5, 23, 0, tzinfo=UTC)


@pytest.fixture
def server() -> Iterator[FakePolymarketServer]:
    with FakePolymarketServer(n_markets=3, price=lambda i: 0.40) as fake:
        yield fake


def unique_kafka(broker: LocalBroker, **fields: object) -> KafkaConfig:
    """A KafkaConfig on `broker` whose topics (prefixed) no other test uses."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    return KafkaConfig(
        bootstrap_servers=broker.bootstrap_servers,
        topic_prefix=prefix,
        **fields,  # type: ignore[arg-type]
    )


#: The built-in parameters without the volatility test: these fake markets are new to the
#: detector (judged against a prior volatility), and a move across a 9-hour gap is judged
#: over 9 hours; what is tested here is that the state survives, not the tuning.
THRESHOLDS_ONLY = load_rules_text(
    "version: 1\ndefaults:\n  volatility: {z: 0}\n", "thresholds-only.yaml"
)


async def run_once(
    server: FakePolymarketServer,
    config: AppConfig,
    script: dict[int, dict[str, float]],
    start: datetime,
    cycles: int,
    *,
    keep_state: bool = True,
) -> tuple[ServiceStats, list[PolymarketEvent]]:
    published: list[PolymarketEvent] = []

    async def on_published(event: PolymarketEvent) -> None:
        published.append(event)

    store = InMemorySubscriptionStore()
    for market in server.markets:
        await store.subscribe(market.condition_id)
    async with (
        open_polymarket_client(server.polymarket_config(max_retries=0)) as client,
        open_kafka_publisher(config.kafka, grace_seconds=10) as publisher,
        contextlib.AsyncExitStack() as stack,
    ):
        durable = None
        if keep_state:
            writer = StateWriter(config.kafka)
            stack.callback(writer.close)
            durable = DurableState(
                KafkaStateSink(writer, publisher, timeout=10),
                checkpoint_seconds=3600,  # only the final checkpoint, at the stop
                restore=partial(restore_states, config),
            )
        stats = await run_service(
            store=store,
            poller=MarketPoller(client, metadata_refresh_seconds=3600),
            publisher=publisher,
            settings=ServiceSettings(
                poll_interval_seconds=0.05,
                subscription_refresh_seconds=0.05,
                max_cycles=cycles,
                handle_signals=False,
            ),
            clock=scripted_prices_clock(server, script, start),
            on_published=on_published,
            durable=durable,
            rules=RulesHolder(THRESHOLDS_ONLY),
        )
        assert await publisher.flush(10) == 0
    return stats, published


@pytest.mark.anyio
async def test_a_pending_move_and_a_move_while_down_survive_a_restart(
    server: FakePolymarketServer, tansu_broker: LocalBroker
) -> None:
    a, b, c = (m.condition_id for m in server.markets)
    kafka = unique_kafka(tansu_broker, state_topic="polymarket-kafka-state", state_partitions=3)
    config = AppConfig(kafka=kafka, shutdown_grace_seconds=10)
    with anyio.fail_after(90):
        # Run 1: baselines at 0.40; a jumps to 0.55 on the last poll (seen once: pending).
        stats, published = await run_once(server, config, {1: {a: 0.55}}, T0, cycles=2)
        assert published == []
        assert stats.state_records_written == 3 and stats.state_write_failures == 0
        states = await anyio.to_thread.run_sync(read_state, kafka)
        assert set(states) == {a, b, c}

        # While down, b falls to 0.20. Run 2 restores; a is confirmed at its next poll and b's
        # move is seen twice: both measured from 0.40, the prices before the stop.
        server.set_price(b, 0.20)
        later = T0 + timedelta(hours=10)
        stats, published = await run_once(server, config, {}, later, cycles=2)
    assert stats.state_markets_restored == 3
    moves = sorted((e.market_id, e.baseline_yes_price, e.yes_price) for e in published)
    assert moves == sorted([(a, 0.40, 0.55), (b, 0.40, 0.20)])
    # Both span the 9 hours between the last poll before the stop and the first after it.
    assert {(e.catch_up, e.gap_seconds) for e in published} == {(True, 9 * 3600.0)}
    restored = (await restore_states(config))[0]
    assert isinstance(restored, MarketState)  # the final checkpoint of run 2 is there too


@pytest.mark.anyio
async def test_without_the_state_topic_a_restart_loses_the_moves(
    server: FakePolymarketServer, tansu_broker: LocalBroker
) -> None:
    """The loss the state topic prevents, measured the same way."""
    a, b, _ = (m.condition_id for m in server.markets)
    config = AppConfig(kafka=unique_kafka(tansu_broker))
    with anyio.fail_after(60):
        await run_once(server, config, {1: {a: 0.55}}, T0, cycles=2, keep_state=False)
        server.set_price(b, 0.20)
        later = T0 + timedelta(hours=10)
        _, published = await run_once(server, config, {}, later, cycles=2, keep_state=False)
    assert published == []


def _run_until_polled(env: dict[str, str], server: FakePolymarketServer, polls: int) -> str:
    """`polymarket-kafka run` until it polled `polls` more times, then SIGTERM; its stderr."""
    with running_service(env) as process:
        wait_until_polled(process, server, server.request_count("POST /midpoints") + polls)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    return stderr


@pytest.mark.mongo_server
def test_a_rolling_restart_reports_the_move_made_while_down(
    server: FakePolymarketServer,
    tansu_broker: LocalBroker,
    kafka_topic: str,
    mongo_server_uri: str,
    tmp_path: Path,
) -> None:
    """The issue's "plain restart": SIGTERM, the price moves, start again: one event,
    measured from the price before the stop. The real command, KAFKA_STATE_TOPIC set."""
    env = service_env(
        server,
        tansu_broker.bootstrap_servers,
        kafka_topic,
        (mongo_server_uri, "e2e", f"subs_{uuid.uuid4().hex[:12]}"),
        tmp_path,
        KAFKA_STATE_TOPIC=f"{kafka_topic}.state",
        KAFKA_STATE_PARTITIONS="3",
    )
    market = server.markets[0].condition_id
    subscribed = subprocess.run(
        [sys.executable, "-m", "polymarket_kafka", "subscribe", market],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert subscribed.returncode == 0, subscribed.stderr

    first = _run_until_polled(env, server, polls=2)
    assert "state topic" in first and "created" in first
    server.set_price(market, 0.75)  # while no service runs
    second = _run_until_polled(env, server, polls=2)
    assert "detector state restored for 1 markets (0 closed)" in second

    messages = read_events(
        tansu_broker.bootstrap_servers, kafka_topic, expected=1, timeout=30, linger=0.5
    )
    assert len(messages) == 1
    event = PolymarketEvent.model_validate_json(messages[0].value or b"")
    assert (event.market_id, event.baseline_yes_price, event.yes_price) == (market, 0.40, 0.75)
    assert event.catch_up and event.gap_seconds is not None and event.gap_seconds > 0


@pytest.mark.anyio
@pytest.mark.mongo_server
@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
async def test_run_app_restores_and_checkpoints_through_the_state_topic(
    server: FakePolymarketServer,
    tansu_broker: LocalBroker,
    kafka_topic: str,
    mongo_server_uri: str,
    delivery: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The composition root's wiring: `run_app` with KAFKA_STATE_TOPIC set writes every
    subscribed market's state at the stop (committed in the publisher's transactions, or by
    the checkpoint stage), and restores it at the next start."""
    config = AppConfig(
        kafka=KafkaConfig(
            bootstrap_servers=tansu_broker.bootstrap_servers,
            topic=kafka_topic,
            state_topic=f"{kafka_topic}.state",
            state_partitions=3,
            delivery=delivery,
            # At least once there are no transactions: a transactional id is ignored, loudly.
            transactional_id="ignored" if delivery == "at_least_once" else "",
        ),
        polymarket=server.polymarket_config(max_retries=0),
        mongodb=MongoConfig(
            uri=mongo_server_uri,
            database="e2e",
            collection=f"subs_{uuid.uuid4().hex[:12]}",
            poll_interval_seconds=0.05,
        ),
        poll_interval_seconds=0.05,
        shutdown_grace_seconds=5,
        http_port=0,
    )
    async with open_subscription_store(config.mongodb) as store:
        for market in server.markets:
            await store.subscribe(market.condition_id)

    async def run_until_polled() -> ServiceStats:
        polls = server.request_count("POST /midpoints") + 2
        result: list[ServiceStats] = []

        async def service() -> None:
            result.append(await run_app(config, kafka_statistics_interval_ms=100))

        async with anyio.create_task_group() as tg:
            tg.start_soon(service)
            while server.request_count("POST /midpoints") < polls:  # noqa: ASYNC110
                await anyio.sleep(0.02)
            os.kill(os.getpid(), signal.SIGTERM)
        return result[0]

    with anyio.fail_after(60):
        first = await run_until_polled()
        second = await run_until_polled()
    assert first.state_markets_restored == 0
    # Exactly once the records are the publisher's to count (state_records_committed).
    assert first.state_records_written == (3 if delivery == "at_least_once" else 0)
    assert second.state_markets_restored == 3
    ignored = "KAFKA_TRANSACTIONAL_ID is ignored" in caplog.text
    assert ignored == (delivery == "at_least_once")
    states = await anyio.to_thread.run_sync(read_state, config.kafka)
    assert set(states) == {m.condition_id for m in server.markets}
