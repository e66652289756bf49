"""The metrics move with real activity: fake Polymarket on loopback → service → real broker.

The real client, poller and publisher count in their own stats objects; the registry is
scraped (Prometheus text format, parsed back) after the service ran, and every number is
compared with what crossed a boundary: requests the fake server received, events read back
from the topic.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import anyio
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.kafka.publisher import open_kafka_publisher
from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.ops.metrics import MetricSources, build_registry
from polymarket_kafka.polymarket import ClientStats, RetryPolicy, open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller, PollerStats
from polymarket_kafka.ruleset import load_rules_text
from polymarket_kafka.service.pipeline import run_service
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.service.stats import ServiceSettings, ServiceStats
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer
from polymarket_kafka.testing.local_broker import LocalBroker, read_events
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore
from tests.factories import ONE_POLL_YAML, scripted_prices_clock

pytestmark = [pytest.mark.broker, pytest.mark.anyio]

T0 = datetime(2024, 11, 5, 23, 0, tzinfo=UTC)
ONE_POLL = load_rules_text(ONE_POLL_YAML, "one-poll.yaml")
CYCLES = 4

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def server() -> Iterator[FakePolymarketServer]:
    with FakePolymarketServer(n_markets=3, price=lambda i: 0.50) as fake:
        yield fake


def scrape(sources: MetricSources) -> Samples:
    text = prometheus_client.generate_latest(build_registry(sources)).decode()
    return {
        (s.name.removeprefix("polymarket_kafka_"), frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def by_labels(samples: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(dict(labels)[k] for k in keys): n
        for (sample, labels), n in samples.items()
        if sample == name
    }


async def test_a_run_moves_every_family_of_metrics(
    anyio_backend: str,
    server: FakePolymarketServer,
    tansu_broker: LocalBroker,
    kafka_topic: str,
) -> None:
    a, b, c = (m.condition_id for m in server.markets)
    script = {1: {a: 0.65}, 2: {b: 0.30}}
    clock = scripted_prices_clock(server, script, T0)

    server.fail_next("/midpoints", 503)  # one retried request, counted by status
    service, client_stats, poller_stats = ServiceStats(), ClientStats(), PollerStats()
    rules = RulesHolder(ONE_POLL)
    settings = ServiceSettings(
        poll_interval_seconds=0.01, max_cycles=CYCLES, handle_signals=False, event_buffer=16
    )
    kafka = KafkaConfig(bootstrap_servers=tansu_broker.bootstrap_servers, topic=kafka_topic)
    with anyio.fail_after(60):
        async with (
            open_polymarket_client(
                server.polymarket_config(max_retries=1),
                stats=client_stats,
                retry_policy=RetryPolicy(max_retries=1, random=lambda: 0.0),
            ) as client,
            open_kafka_publisher(kafka, statistics_interval_ms=100) as publisher,
        ):
            sources = MetricSources(service, client_stats, poller_stats, publisher.stats, rules)
            while not publisher.broker_status().connected:  # noqa: ASYNC110 (poll thread)
                await anyio.sleep(0.02)
            await run_service(
                store=InMemorySubscriptionStore(seed=[a, b, c]),
                poller=MarketPoller(client, metadata_refresh_seconds=3600, stats=poller_stats),
                publisher=publisher,
                settings=settings,
                clock=clock,
                rules=rules,
                stats=service,
            )
            assert await publisher.flush(10) == 0
            samples = scrape(sources)

    read = functools.partial(read_events, expected=2, timeout=20, linger=0.5)
    messages = await anyio.to_thread.run_sync(read, tansu_broker.bootstrap_servers, kafka_topic)
    events = [PolymarketEvent.model_validate_json(m.value or b"") for m in messages]
    assert len(events) == 2  # a up, b down

    def one(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    # Poll cycles and what they saw.
    assert one("poll_cycles_total", result="ok") == CYCLES
    assert one("poll_cycles_total", result="unavailable") == 0  # the 503 was retried
    assert one("poll_cycles_total", result="failed") == 0
    assert one("poll_cycle_duration_seconds_count") == CYCLES
    assert one("poll_cycle_duration_seconds_sum") > 0
    expected_last = (T0 + timedelta(hours=CYCLES - 1)).timestamp()
    assert one("last_successful_poll_timestamp_seconds") == expected_last
    assert one("markets_tracked") == 3
    assert one("snapshots_evaluated_total") == 3 * CYCLES
    assert one("subscription_refreshes_total", result="ok") >= 1

    # Polymarket requests: what the fake server received, by endpoint and status.
    requests = by_labels(samples, "polymarket_requests_total", "endpoint", "status")
    received = server.request_counts()
    assert requests == {
        ("GET /markets", "200"): received["GET /markets"],
        ("POST /midpoints", "200"): CYCLES,
        ("POST /midpoints", "503"): 1,
    }
    assert received["POST /midpoints"] == CYCLES + 1
    assert one("polymarket_retries_total") == 1
    durations = by_labels(samples, "polymarket_request_duration_seconds_count", "endpoint")
    assert durations == {
        ("GET /markets",): received["GET /markets"],
        ("POST /midpoints",): CYCLES + 1,
    }

    # Events: detected by label == read back from Kafka; published == acknowledged.
    read_back = Counter((e.rule, e.severity or "none", e.direction.value) for e in events)
    detected = by_labels(samples, "events_detected_total", "rule", "severity", "direction")
    assert detected == dict(read_back)
    assert one("events_published_total") == 2
    assert one("events_publish_failed_total") == 0
    assert one("events_pending") == 0
    assert one("delivery_latency_seconds_count") == 2
    assert one("kafka_brokers_up") == 1

    # Channels drained, at their configured sizes; the rules in force.
    assert by_labels(samples, "channel_depth", "channel") == {("events",): 0, ("snapshots",): 0}
    assert by_labels(samples, "channel_capacity", "channel") == {
        ("events",): 16,
        ("snapshots",): settings.snapshot_buffer,
    }
    assert one("rules_info", version=ONE_POLL.version) == 1
