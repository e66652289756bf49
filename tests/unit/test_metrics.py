"""The Prometheus collector: stats objects in, text exposition out (parsed back to check it)."""

from __future__ import annotations

import math
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from polymarket_kafka import __version__
from polymarket_kafka.histogram import Histogram
from polymarket_kafka.kafka.publisher import DeliveryStats
from polymarket_kafka.models import PolymarketSubscription
from polymarket_kafka.ops.metrics import MetricSources, build_registry
from polymarket_kafka.polymarket.parsing import MarketMetadata
from polymarket_kafka.polymarket.poller import PollerStats, PollResult
from polymarket_kafka.polymarket.results import ClientStats
from polymarket_kafka.polymarket.stream import MarketStream, StreamedMarket, StreamSettings
from polymarket_kafka.ruleset import RuleSet
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.service.sharding import GroupStats
from polymarket_kafka.service.stats import ServiceStats
from polymarket_kafka.service.streaming import StreamCoordinator

#: Every metric the issue asks for (family names, as the text format types them).
REQUIRED = {
    "poll_cycles": "counter",
    "poll_cycle_duration_seconds": "histogram",
    "polymarket_requests": "counter",
    "polymarket_request_duration_seconds": "histogram",
    "polymarket_retries": "counter",
    "polymarket_rate_limit_waits": "counter",
    "markets_tracked": "gauge",
    "markets_skipped": "counter",
    "snapshots_evaluated": "counter",
    "events_detected": "counter",
    "events_published": "counter",
    "events_publish_failed": "counter",
    "events_publish_retries": "counter",
    "events_pending": "gauge",
    "kafka_producer_recreated": "counter",
    "delivery_latency_seconds": "histogram",
    "channel_depth": "gauge",
    "channel_capacity": "gauge",
    "subscription_refreshes": "counter",
    "rules_reloads": "counter",
    "rules_last_reload_success_timestamp_seconds": "gauge",
    "rules_info": "gauge",
    "last_successful_poll_timestamp_seconds": "gauge",
    "detector_dropped": "counter",
    "detection_errors": "counter",
    "events_undelivered": "counter",
    "build_info": "gauge",
    "kafka_brokers_up": "gauge",
    "kafka_outages": "counter",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(sources: MetricSources) -> tuple[dict[str, str], Samples]:
    """Family types by name (prefix removed), and every sample by (name, labels)."""
    text = prometheus_client.generate_latest(build_registry(sources)).decode()
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("polymarket_kafka_")
        types[family.name.removeprefix("polymarket_kafka_")] = family.type
        for sample in family.samples:
            name = sample.name.removeprefix("polymarket_kafka_")
            samples[(name, frozenset(sample.labels.items()))] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def filled_sources() -> MetricSources:
    service = ServiceStats(
        poll_cycles=7,
        poll_unavailable=3,
        poll_failures=2,
        snapshots=21,
        markets_skipped=3,
        events_detected=3,
        events_undelivered=1,
        detection_errors=4,
        subscription_refreshes=9,
        subscription_failures=1,
        reload_requests=2,
        rule_adoption_failures=1,
        last_poll_at=datetime(2024, 11, 5, 23, 0, tzinfo=UTC),
        markets_tracked=5,
        events_by_label=Counter(
            {("spike", "high", "toward_yes"): 2, ("market_closed", "none", "toward_no"): 1}
        ),
    )
    service.detector.glitches = 6
    service.detector.stale = 1
    service.detector.resets = 2
    service.poll_duration.observe(0.3)
    service.poll_duration.observe(1.5)
    client = ClientStats(retries=4, rate_limit_waits=3, rate_limit_wait_seconds=0.75)
    client.record("POST /midpoints", "200", 0.02)
    client.record("POST /midpoints", "200", 0.2)
    client.record("POST /midpoints", "503", 0.01)
    client.record("GET /markets", "timeout", 10.0)
    poller = PollerStats(skipped=Counter({"midpoint": 2, "metadata": 1}))
    delivery = DeliveryStats(
        delivered=11,
        failed=1,
        dead_lettered=4,
        in_flight_waits=6,
        retried=5,
        pending=2,
        producer_recreated=1,
        brokers_up=3,
        outages=2,
    )
    delivery.delivery_latency.observe(0.004)
    rules = RulesHolder(RuleSet.builtin())
    rules.metrics.reload_total["success"] = 2
    rules.metrics.reload_total["failure"] = 1
    rules.metrics.last_reload_success_timestamp = 1_700_000_000.0
    delivery.handed_over = 2
    return MetricSources(
        service, client, poller, delivery, rules, stream=filled_stream(), group=filled_group()
    )


def filled_group() -> GroupStats:
    """An instance owning partitions 1 and 4 of 6 after a few rebalances."""
    group = GroupStats("g", "host-1", 6, owned=frozenset({1, 4}), joined=True)
    group.rebalances.update({"assigned": 3, "revoked": 1, "lost": 1, "fenced": 1})
    group.markets_restored = 40
    group.restore_seconds.observe(0.2)
    group.takeover_seconds.observe(0.7)
    return group


class _NoPoller:
    """The coordinator's poller, never called here."""

    async def poll_once(self, *args: object, **kwargs: object) -> PollResult:
        raise AssertionError("not polled")

    def cached_metadata(self, market_id: str) -> MarketMetadata | None:
        return None


def filled_stream() -> StreamCoordinator:
    """A coordinator over a stream of three markets on two connections (one up)."""
    stream = MarketStream(
        StreamSettings(url="ws://127.0.0.1:9/ws/market", assets_per_connection=2),
        httpx.AsyncClient(),
        coalesce_seconds=0.1,
        clock=lambda: datetime(2024, 11, 5, 23, 0, tzinfo=UTC),
    )
    markets = {}
    for i in range(3):
        market_id, asset = f"0x{i:064x}", str(1000 + i)
        subscription = PolymarketSubscription(market_id=market_id, ref_count=1)
        metadata = MarketMetadata(market_id=market_id, yes_token_id=asset)
        markets[market_id] = StreamedMarket(subscription, metadata, asset)
    stream.set_markets(markets)
    stream.connections[0].connected = True
    stream.stats.connects = 4
    stream.stats.disconnects.update({"silent": 2, "network": 1})
    stream.stats.messages.update({"book": 9, "price_change": 30})
    stream.stats.malformed = 1
    stream.stats.silences = 3
    stream.stats.snapshots = 25
    stream.coalescer.coalesced = 14
    coordinator = StreamCoordinator(stream, _NoPoller(), reconcile_seconds=120, tolerance=0.02)
    coordinator.fallback = frozenset({"0x" + "0" * 64})
    coordinator.fallback_polls = 6
    coordinator.reconciliations = 2
    coordinator.disagreements = 1
    return coordinator


def test_stream_metrics_are_exported() -> None:
    _, samples = scrape(filled_sources())

    assert value(samples, "stream_connections") == 2
    assert value(samples, "stream_connections_up") == 1
    assert value(samples, "stream_markets") == 3
    assert value(samples, "stream_rest_fallback_markets") == 1
    assert value(samples, "stream_connects_total") == 4
    assert value(samples, "stream_disconnects_total", reason="silent") == 2
    assert value(samples, "stream_disconnects_total", reason="network") == 1
    assert value(samples, "stream_silence_trips_total") == 2
    assert value(samples, "stream_silences_total") == 3
    assert value(samples, "stream_messages_total", type="price_change") == 30
    assert value(samples, "stream_malformed_messages_total") == 1
    assert value(samples, "stream_coalesced_updates_total") == 14
    assert value(samples, "stream_snapshots_total") == 25
    assert value(samples, "stream_rest_fallback_polls_total") == 6
    assert value(samples, "stream_reconciliations_total") == 2
    assert value(samples, "stream_disagreements_total") == 1


def test_group_metrics_are_exported() -> None:
    _, samples = scrape(filled_sources())

    assert value(samples, "group_partitions_owned") == 2
    assert value(samples, "group_rebalances_total", kind="assigned") == 3
    assert value(samples, "group_rebalances_total", kind="fenced") == 1
    assert value(samples, "group_markets_restored_total") == 40
    assert value(samples, "group_restore_seconds_count") == 1
    assert value(samples, "group_takeover_seconds_sum") == 0.7
    assert value(samples, "group_takeover_seconds_bucket", le="1.0") == 1
    assert value(samples, "group_takeover_seconds_bucket", le="0.5") == 0
    assert value(samples, "events_handed_over_total") == 2


def test_every_required_metric_is_exported_with_its_type() -> None:
    types, _ = scrape(filled_sources())

    assert {name: types.get(name) for name in REQUIRED} == REQUIRED


def test_service_counters_are_exported_by_label() -> None:
    _, samples = scrape(filled_sources())

    assert value(samples, "poll_cycles_total", result="ok") == 7
    assert value(samples, "poll_cycles_total", result="unavailable") == 3
    assert value(samples, "poll_cycles_total", result="failed") == 2
    assert value(samples, "snapshots_evaluated_total") == 21
    assert value(samples, "markets_tracked") == 5
    assert value(samples, "markets_skipped_total", reason="midpoint") == 2
    assert value(samples, "markets_skipped_total", reason="metadata") == 1
    assert value(samples, "markets_skipped_total", reason="no_token") == 0  # known, not seen
    assert value(samples, "detection_errors_total") == 4
    assert value(samples, "events_undelivered_total") == 1
    assert value(samples, "detector_dropped_total", reason="glitch") == 6
    assert value(samples, "detector_dropped_total", reason="stale") == 1
    assert value(samples, "detector_state_resets_total") == 2
    assert value(samples, "subscription_refreshes_total", result="ok") == 9
    assert value(samples, "subscription_refreshes_total", result="failed") == 1
    assert (
        value(samples, "last_successful_poll_timestamp_seconds")
        == datetime(2024, 11, 5, 23, 0, tzinfo=UTC).timestamp()
    )
    detected = {
        dict(labels)["rule"]: (dict(labels), n)
        for (name, labels), n in samples.items()
        if name == "events_detected_total"
    }
    assert detected == {
        "spike": ({"rule": "spike", "severity": "high", "direction": "toward_yes"}, 2),
        "market_closed": (
            {"rule": "market_closed", "severity": "none", "direction": "toward_no"},
            1,
        ),
    }


def test_histograms_are_cumulative_with_sum_and_count() -> None:
    _, samples = scrape(filled_sources())

    assert value(samples, "poll_cycle_duration_seconds_bucket", le="0.25") == 0
    assert value(samples, "poll_cycle_duration_seconds_bucket", le="0.5") == 1
    assert value(samples, "poll_cycle_duration_seconds_bucket", le="2.5") == 2
    assert value(samples, "poll_cycle_duration_seconds_bucket", le="+Inf") == 2
    assert value(samples, "poll_cycle_duration_seconds_count") == 2
    assert value(samples, "poll_cycle_duration_seconds_sum") == pytest.approx(1.8)
    midpoints = {"endpoint": "POST /midpoints"}
    assert value(samples, "polymarket_request_duration_seconds_count", **midpoints) == 3
    assert value(samples, "polymarket_request_duration_seconds_bucket", **midpoints, le="0.05") == 2
    gamma = {"endpoint": "GET /markets"}
    assert value(samples, "polymarket_request_duration_seconds_bucket", le="5.0", **gamma) == 0
    assert value(samples, "polymarket_request_duration_seconds_bucket", le="10.0", **gamma) == 1
    assert value(samples, "delivery_latency_seconds_bucket", le="0.005") == 1
    assert value(samples, "delivery_latency_seconds_sum") == pytest.approx(0.004)


def test_client_delivery_and_rules_metrics() -> None:
    _, samples = scrape(filled_sources())

    requests = {
        (dict(labels)["endpoint"], dict(labels)["status"]): n
        for (name, labels), n in samples.items()
        if name == "polymarket_requests_total"
    }
    assert requests == {
        ("POST /midpoints", "200"): 2,
        ("POST /midpoints", "503"): 1,
        ("GET /markets", "timeout"): 1,
    }
    assert value(samples, "polymarket_retries_total") == 4
    assert value(samples, "polymarket_rate_limit_waits_total") == 3
    assert value(samples, "polymarket_rate_limit_wait_seconds_total") == 0.75
    assert value(samples, "events_published_total") == 11
    assert value(samples, "events_publish_failed_total") == 1
    assert value(samples, "events_dead_lettered_total") == 4
    assert value(samples, "kafka_in_flight_waits_total") == 6
    assert value(samples, "events_publish_retries_total") == 5
    assert value(samples, "events_pending") == 2
    assert value(samples, "kafka_producer_recreated_total") == 1
    assert value(samples, "kafka_brokers_up") == 3
    assert value(samples, "kafka_outages_total") == 2
    assert value(samples, "rules_reloads_total", result="success") == 2
    assert value(samples, "rules_reloads_total", result="failure") == 1
    assert value(samples, "rules_reload_requests_total") == 2
    assert value(samples, "rules_adoption_failures_total") == 1
    assert value(samples, "rules_last_reload_success_timestamp_seconds") == 1_700_000_000.0
    assert value(samples, "rules_info", version=RuleSet.builtin().version) == 1
    assert value(samples, "build_info", version=__version__) == 1


def test_values_are_read_at_scrape_time() -> None:
    sources = filled_sources()
    registry = build_registry(sources)
    sources.service.poll_cycles += 1
    assert sources.delivery is not None
    sources.delivery.delivered += 10

    text = prometheus_client.generate_latest(registry).decode()

    assert 'polymarket_kafka_poll_cycles_total{result="ok"} 8.0' in text
    assert "polymarket_kafka_events_published_total 21.0" in text


@pytest.mark.anyio
async def test_channel_depth_and_capacity_are_live(anyio_backend: str) -> None:
    send, receive = anyio.create_memory_object_stream[int](4)
    unbounded_send, unbounded_receive = anyio.create_memory_object_stream[int](math.inf)
    stats = ServiceStats(
        channels={"snapshots": receive.statistics, "events": unbounded_receive.statistics}
    )
    async with send, receive, unbounded_send, unbounded_receive:
        send.send_nowait(1)
        send.send_nowait(2)
        _, samples = scrape(MetricSources(stats))
        assert value(samples, "channel_depth", channel="snapshots") == 2
        assert value(samples, "channel_capacity", channel="snapshots") == 4
        assert value(samples, "channel_depth", channel="events") == 0
        assert value(samples, "channel_capacity", channel="events") == math.inf
        receive.receive_nowait()
        _, samples = scrape(MetricSources(stats))
        assert value(samples, "channel_depth", channel="snapshots") == 1


def test_absent_sources_export_nothing_of_theirs() -> None:
    types, samples = scrape(MetricSources(ServiceStats(markets_skipped=3)))

    assert "events_published" not in types
    assert "polymarket_requests" not in types
    assert "rules_info" not in types
    assert "poll_cycles" in types
    # Without the poller, skipped markets are counted but their reasons are unknown.
    assert value(samples, "markets_skipped_total", reason="unknown") == 3
    assert not any(name == "last_successful_poll_timestamp_seconds" for name, _ in samples)


def test_registries_are_private_and_independent() -> None:
    first = filled_sources()
    second = MetricSources(ServiceStats(poll_cycles=1))

    _, one = scrape(first)
    _, two = scrape(second)

    assert value(one, "poll_cycles_total", result="ok") == 7
    assert value(two, "poll_cycles_total", result="ok") == 1
    default_names = {f.name for f in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("polymarket_kafka_") for name in default_names)


def test_a_histogram_with_custom_bounds_exports_them() -> None:
    stats = ServiceStats(poll_duration=Histogram((1.0, 60.0)))
    stats.poll_duration.observe(30.0)

    _, samples = scrape(MetricSources(stats))

    buckets = {
        dict(labels)["le"]: n
        for (name, labels), n in samples.items()
        if name == "poll_cycle_duration_seconds_bucket"
    }
    assert buckets == {"1.0": 0, "60.0": 1, "+Inf": 1}


def test_the_readme_table_lists_exactly_the_exported_metrics() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))
    types, _ = scrape(filled_sources())

    exported = {name + "_total" if kind == "counter" else name for name, kind in types.items()}
    assert documented == exported


def test_the_readme_names_every_poll_cycle_result() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith("| `poll_cycles_total` |")]
    _, samples = scrape(filled_sources())
    results = {dict(labels)["result"] for name, labels in samples if name == "poll_cycles_total"}
    assert results == {"ok", "unavailable", "failed"}
    assert all(f"`{result}`" in row for result in results)
