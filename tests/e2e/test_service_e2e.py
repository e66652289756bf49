"""The whole service on loopback: MongoDB-protocol store → fake Polymarket → real broker.

Subscriptions live in a real MongoDB wire-protocol server (SecantusDB, or `TEST_MONGODB_URI`),
Polymarket is the fake HTTP server (real response shapes), Kafka is a real Tansu broker. The
assertions are on what crossed the last boundary: the messages read back from the topic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from polymarket_kafka.config import KafkaConfig, MongoConfig
from polymarket_kafka.kafka.publisher import open_kafka_publisher
from polymarket_kafka.models import ConvictionDirection, PolymarketEvent
from polymarket_kafka.polymarket import open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller
from polymarket_kafka.service.pipeline import run_service
from polymarket_kafka.service.stats import ServiceSettings
from polymarket_kafka.subscriptions import open_subscription_store
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer
from polymarket_kafka.testing.local_broker import LocalBroker, read_events
from tests.e2e.service_process import running_service, service_env, wait_until_polled
from tests.factories import scripted_prices_clock

pytestmark = [pytest.mark.broker, pytest.mark.mongo_server]

T0 = datetime(2024, 11, 5, 23, 0, tzinfo=UTC)


@pytest.fixture
def server() -> Iterator[FakePolymarketServer]:
    with FakePolymarketServer(n_markets=4, price=lambda i: 0.40) as fake:
        yield fake


@pytest.fixture
def mongo_config(mongo_server_uri: str) -> MongoConfig:
    return MongoConfig(
        uri=mongo_server_uri,
        database="e2e",
        collection=f"subs_{uuid.uuid4().hex[:12]}",
        poll_interval_seconds=0.05,
    )


@pytest.mark.anyio
async def test_events_reach_the_broker_and_sigterm_drains(
    server: FakePolymarketServer,
    tansu_broker: LocalBroker,
    kafka_topic: str,
    mongo_config: MongoConfig,
) -> None:
    a, b, c, d = (m.condition_id for m in server.markets)
    script = {1: {a: 0.55}, 2: {b: 0.20}, 3: {c: 0.43}, 4: {a: 0.30}}
    clock = scripted_prices_clock(server, script, T0)

    expected = 3  # a up, b down, a down again; c's 3-point move stays silent; d never moves
    published: list[PolymarketEvent] = []

    async def on_published(event: PolymarketEvent) -> None:
        published.append(event)
        if len(published) == expected:
            os.kill(os.getpid(), signal.SIGTERM)

    kafka = KafkaConfig(bootstrap_servers=tansu_broker.bootstrap_servers, topic=kafka_topic)
    with anyio.fail_after(60):
        async with open_subscription_store(mongo_config) as store:
            for market_id in (a, b, c, d):
                await store.subscribe(market_id)
            await store.subscribe(a)  # two subscribers of one market: still one snapshot
            async with (
                open_polymarket_client(server.polymarket_config(max_retries=0)) as client,
                open_kafka_publisher(kafka, grace_seconds=10) as publisher,
            ):
                stats = await run_service(
                    store=store,
                    poller=MarketPoller(client, metadata_refresh_seconds=3600),
                    publisher=publisher,
                    settings=ServiceSettings(
                        poll_interval_seconds=0.05, subscription_refresh_seconds=0.05
                    ),
                    clock=clock,
                    on_published=on_published,
                )
            assert publisher.stats.pending == 0
            assert publisher.stats.delivered == expected
            assert not publisher.failed

    assert stats.events_published == expected
    assert stats.events_undelivered == 0
    messages = await anyio.to_thread.run_sync(
        lambda: read_events(
            tansu_broker.bootstrap_servers, kafka_topic, expected=expected, timeout=20, linger=0.5
        )
    )
    assert len(messages) == expected  # exactly: nothing lost, nothing duplicated
    received = [PolymarketEvent.model_validate_json(m.value or b"") for m in messages]
    by_id = {e.event_id: e for e in received}
    assert set(by_id) == {e.event_id for e in published}
    for event in published:
        assert by_id[event.event_id].published_at is not None
        assert by_id[event.event_id].model_copy(update={"published_at": None}) == (
            event.model_copy(update={"published_at": None})
        )
    for message in messages:
        event = PolymarketEvent.model_validate_json(message.value or b"")
        assert message.key == event.market_id.encode()
        assert message.header("event_id") == event.event_id.encode()
    partitions_of_a = {m.partition for m in messages if m.key == a.encode()}
    assert len(partitions_of_a) == 1  # same key, same partition: per-market order holds
    moves = sorted((e.timestamp, e.market_id, e.direction) for e in received)
    # Built-in rules: every move fires when the next hourly poll confirms it.
    assert moves == [
        (T0 + timedelta(hours=2), a, ConvictionDirection.TOWARD_YES),
        (T0 + timedelta(hours=3), b, ConvictionDirection.TOWARD_NO),
        (T0 + timedelta(hours=5), a, ConvictionDirection.TOWARD_NO),
    ]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polymarket_kafka", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_run_process_publishes_and_exits_cleanly_on_sigterm(
    server: FakePolymarketServer,
    tansu_broker: LocalBroker,
    kafka_topic: str,
    mongo_config: MongoConfig,
    tmp_path: Path,
) -> None:
    """The real console entry point, a real process, a real SIGTERM."""
    env = service_env(
        server,
        tansu_broker.bootstrap_servers,
        kafka_topic,
        (mongo_config.uri, mongo_config.database, mongo_config.collection),
        tmp_path,
        KAFKA_SASL_PASSWORD="never-print-me",
    )
    market = server.markets[0].condition_id
    subscribed = _cli("subscribe", market, env=env)
    assert subscribed.returncode == 0, subscribed.stderr
    assert subscribed.stdout.strip() == f"{market} ref_count=1"
    listing = _cli("subscriptions", env=env)
    assert listing.stdout.startswith(f"{market} ref_count=1")

    with running_service(env) as process:
        wait_until_polled(process, server, requests=2)  # the baseline is in place
        server.set_price(market, 0.75)
        messages = read_events(tansu_broker.bootstrap_servers, kafka_topic, expected=1, timeout=30)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert len(messages) == 1
    event = PolymarketEvent.model_validate_json(messages[0].value or b"")
    assert (event.market_id, event.yes_price, event.baseline_yes_price) == (market, 0.75, 0.40)
    assert "SIGTERM received" in stderr
    assert "NOT delivered" not in stderr
    assert "never-print-me" not in stderr
    # The last line, once Kafka acknowledged what was detected: nothing comes after it.
    last = stderr.strip().splitlines()[-1]
    assert " INFO " in last and " service stopped after " in last
    assert last.endswith(" poll cycles: 1 events detected, 1 acknowledged by Kafka")


def test_cli_reports_configuration_errors_in_one_line() -> None:
    result = _cli("run", env={**os.environ, "POLL_INTERVAL_SECONDS": "soon"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "polymarket-kafka: configuration error: POLL_INTERVAL_SECONDS: must be a number, got 'soon'"
    )
