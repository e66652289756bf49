"""Prometheus metrics, read from the components' plain counters at scrape time.

Why this file is over 400 lines: it is the one place every counter of every component
(service, poller, client, publisher, rules, stream, group) becomes a documented metric family; one
short section per source, sharing the family builders at the end.

Why it is shaped like this: the components (service, poller, client, publisher, rules holder)
count in plain dataclasses that know nothing about Prometheus. This module is the only one
that imports `prometheus_client`. `build_registry` returns a *new* `CollectorRegistry` holding
one custom collector; every scrape turns the current values of the counters into metric
families. So there is no global registry and no module-level state: two services in one
process (or two tests) never share or collide on a metric, and nothing has to be kept in
sync -- a counter is incremented in exactly one place, its component.

The counters are mutated on the event loop thread without locks, so scrape on that thread
too (an ASGI app served by the service's own event loop does). A source left `None` simply
contributes no metrics. Every name starts with `polymarket_kafka_`; the README section
"Metrics" lists them all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from polymarket_kafka import __version__
from polymarket_kafka.histogram import Histogram
from polymarket_kafka.kafka.publisher import DeliveryStats
from polymarket_kafka.polymarket.poller import SKIP_KINDS, PollerStats
from polymarket_kafka.polymarket.results import ClientStats
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.service.sharding import GroupStats
from polymarket_kafka.service.stats import ServiceStats
from polymarket_kafka.service.streaming import StreamCoordinator

__all__ = ["PREFIX", "MetricSources", "build_registry"]

PREFIX = "polymarket_kafka_"

_Family = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily | InfoMetricFamily


@dataclass
class MetricSources:
    """The live counters to export; each component's own stats object, not a copy."""

    service: ServiceStats
    client: ClientStats | None = None
    poller: PollerStats | None = None
    delivery: DeliveryStats | None = None
    rules: RulesHolder | None = None
    stream: StreamCoordinator | None = None
    group: GroupStats | None = None


def build_registry(sources: MetricSources) -> CollectorRegistry:
    """A fresh registry (never the global one) whose collector reads `sources` at scrape time.

    Serve it with e.g. `prometheus_client.generate_latest(registry)` on the event loop thread.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(sources))
    return registry


class _StatsCollector(Collector):
    def __init__(self, sources: MetricSources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[_Family]:
        sources = self._sources
        yield _info("build", "The running polymarket-kafka version.", version=__version__)
        yield from _service_metrics(sources.service, sources.poller)
        if sources.client is not None:
            yield from _client_metrics(sources.client)
        if sources.delivery is not None:
            yield from _delivery_metrics(sources.delivery)
        if sources.rules is not None:
            yield from _rules_metrics(sources.rules, sources.service)
        if sources.stream is not None:
            yield from _stream_metrics(sources.stream)
        if sources.group is not None:
            yield from _group_metrics(sources.group)
            handed_over = sources.service.events_handed_over
            if sources.delivery is not None:
                handed_over += sources.delivery.handed_over
            yield _counter(
                "events_handed_over_total",
                "Events not published here because their partition moved to another instance "
                "after they were detected (it detects them again from the committed state).",
                {(): handed_over},
            )


# --- per source ----------------------------------------------------------------------------


def _service_metrics(stats: ServiceStats, poller: PollerStats | None) -> Iterator[_Family]:
    yield _counter(
        "poll_cycles_total",
        "Poll cycles, by result: ok, unavailable (Polymarket did not answer, nothing priced) "
        "or failed (the cycle raised); the next tick retries.",
        {
            ("ok",): stats.poll_cycles,
            ("unavailable",): stats.poll_unavailable,
            ("failed",): stats.poll_failures,
        },
        labels=("result",),
    )
    yield _histogram(
        "poll_cycle_duration_seconds", "Duration of a poll cycle.", {(): stats.poll_duration}
    )
    yield _counter(
        "poll_ticks_skipped_total",
        "Poll ticks skipped because a cycle took longer than the poll interval.",
        {(): stats.poll_ticks_skipped},
    )
    last_poll = GaugeMetricFamily(
        PREFIX + "last_successful_poll_timestamp_seconds",
        "Unix time stamped on the last successful poll cycle (absent before the first).",
    )
    if stats.last_poll_at is not None:
        last_poll.add_metric([], stats.last_poll_at.timestamp())
    yield last_poll
    yield _gauge(
        "markets_tracked", "Distinct markets with an active subscription.", stats.markets_tracked
    )
    yield _gauge(
        "invalid_subscription_documents",
        "Subscription documents the latest refresh skipped because they do not validate.",
        stats.invalid_subscription_documents,
    )
    # The poller knows why a market was skipped; without it, only how many were.
    skipped: Mapping[tuple[str, ...], float] = (
        {(kind,): poller.skipped[kind] for kind in sorted({*SKIP_KINDS, *poller.skipped})}
        if poller is not None
        else {("unknown",): stats.markets_skipped}
    )
    yield _counter(
        "markets_skipped_total",
        "Markets left out of a poll cycle, by reason.",
        skipped,
        labels=("reason",),
    )
    yield _counter(
        "snapshots_evaluated_total", "Snapshots handed to the detector.", {(): stats.snapshots}
    )
    yield _counter(
        "events_detected_total",
        "Conviction changes detected, by rule, severity and direction.",
        {labels: n for labels, n in sorted(stats.events_by_label.items())},
        labels=("rule", "severity", "direction"),
    )
    yield _counter(
        "detection_errors_total",
        "Snapshots whose detection raised (logged with the market id).",
        {(): stats.detection_errors},
    )
    dropped = stats.detector
    yield _counter(
        "detector_dropped_total",
        "Snapshots the detector ignored, by reason.",
        {
            ("glitch",): dropped.glitches,
            ("stale",): dropped.stale,
            ("thin_book",): dropped.thin_book,
            ("unwatched",): dropped.unwatched,
        },
        labels=("reason",),
    )
    yield _counter(
        "detector_state_resets_total",
        "Markets whose state-shaping parameters reloaded rules changed (re-evaluated or dropped).",
        {(): dropped.resets},
    )
    yield _counter(
        "events_undelivered_total",
        "Detected events not handed to the publisher because the drain ran out of time.",
        {(): stats.events_undelivered},
    )
    yield _counter(
        "state_records_written_total",
        "Detector state records (and tombstones) written to the state topic by checkpoints "
        "(at-least-once delivery; see state_records_committed_total).",
        {(): stats.state_records_written},
    )
    yield _counter(
        "state_write_failures_total",
        "State records not written (retried at the next checkpoint).",
        {(): stats.state_write_failures},
    )
    depth = GaugeMetricFamily(
        PREFIX + "channel_depth", "Items waiting in a pipeline channel.", labels=["channel"]
    )
    capacity = GaugeMetricFamily(
        PREFIX + "channel_capacity", "Buffer size of a pipeline channel.", labels=["channel"]
    )
    for name, statistics in sorted(stats.channels.items()):
        current = statistics()
        depth.add_metric([name], current.current_buffer_used)
        capacity.add_metric([name], current.max_buffer_size)
    yield depth
    yield capacity
    yield _counter(
        "subscription_refreshes_total",
        "Reads of the active subscriptions from MongoDB, by result.",
        {("ok",): stats.subscription_refreshes, ("failed",): stats.subscription_failures},
        labels=("result",),
    )


def _client_metrics(stats: ClientStats) -> Iterator[_Family]:
    yield _counter(
        "polymarket_requests_total",
        "Polymarket HTTP attempts, by endpoint and HTTP status (or timeout/transport_error).",
        {labels: n for labels, n in sorted(stats.requests.items())},
        labels=("endpoint", "status"),
    )
    yield _histogram(
        "polymarket_request_duration_seconds",
        "Duration of a Polymarket HTTP attempt, by endpoint.",
        {(endpoint,): h for endpoint, h in sorted(stats.latency.items())},
        labels=("endpoint",),
    )
    yield _counter(
        "polymarket_retries_total",
        "Polymarket requests retried after a failure.",
        {(): stats.retries},
    )
    yield _counter(
        "polymarket_rate_limit_waits_total",
        "Polymarket requests that waited for the client-side rate limiter.",
        {(): stats.rate_limit_waits},
    )
    yield _counter(
        "polymarket_rate_limit_wait_seconds_total",
        "Seconds spent waiting for the client-side rate limiter.",
        {(): stats.rate_limit_wait_seconds},
    )
    yield _counter(
        "polymarket_malformed_payloads_total",
        "Polymarket responses that could not be parsed as a whole.",
        {(): stats.malformed_payloads},
    )


def _stream_metrics(coordinator: StreamCoordinator) -> Iterator[_Family]:
    stream = coordinator.stream
    stats = stream.stats
    shards = stream.connections
    yield _gauge("stream_connections", "Market channel connections (shards).", len(shards))
    yield _gauge(
        "stream_connections_up",
        "Market channel connections open and subscribed.",
        sum(1 for shard in shards if shard.connected),
    )
    yield _gauge("stream_markets", "Markets subscribed on the market channel.", stream.markets)
    yield _gauge(
        "stream_rest_fallback_markets",
        "Subscribed markets the stream does not serve now (polled over REST at the poll interval).",
        len(coordinator.fallback),
    )
    yield _counter(
        "stream_connects_total", "Market channel connections opened.", {(): stats.connects}
    )
    yield _counter(
        "stream_disconnects_total",
        "Market channel connections ended or not opened, by reason (silent: given up while "
        "silent, REST showing its markets trading; no_pong; server_closed; network; refused; "
        "connect_failed; send_timeout).",
        {(kind,): n for kind, n in sorted(stats.disconnects.items())},
        labels=("reason",),
    )
    yield _counter(
        "stream_silence_trips_total",
        "Silent connections given up because REST showed their markets trading.",
        {(): stats.disconnects["silent"]},
    )
    yield _counter(
        "stream_silences_total",
        "Connections that went silent (no data frame for POLYMARKET_WS_SILENCE_SECONDS).",
        {(): stats.silences},
    )
    yield _counter(
        "stream_messages_total",
        "Market channel messages received, by type (unknown and malformed included).",
        {(kind,): n for kind, n in sorted(stats.messages.items())},
        labels=("type",),
    )
    yield _counter(
        "stream_malformed_messages_total",
        "Market channel messages that could not be decoded (skipped).",
        {(): stats.malformed},
    )
    yield _counter(
        "stream_coalesced_updates_total",
        "Price updates absorbed by a snapshot already pending for their market.",
        {(): stream.coalescer.coalesced},
    )
    yield _counter(
        "stream_snapshots_total",
        "Snapshots the stream sent to the detector.",
        {(): stats.snapshots},
    )
    yield _counter(
        "stream_rest_fallback_polls_total",
        "Market polls over REST because the stream did not serve the market.",
        {(): coordinator.fallback_polls},
    )
    yield _counter(
        "stream_reconciliations_total",
        "Poll cycles that polled every market to check the stream.",
        {(): coordinator.reconciliations},
    )
    yield _counter(
        "stream_disagreements_total",
        "Streamed prices REST contradicted beyond POLYMARKET_WS_TOLERANCE (REST trusted).",
        {(): coordinator.disagreements},
    )


def _group_metrics(stats: GroupStats) -> Iterator[_Family]:
    yield _gauge(
        "group_partitions_owned",
        "State-topic partitions this instance owns (restored and served) in KAFKA_GROUP_ID.",
        len(stats.owned),
    )
    yield _counter(
        "group_rebalances_total",
        "Partition changes handled, by kind: assigned, revoked (committed, handed back), "
        "lost (given away already) or fenced (a newer owner's producer fenced this one's).",
        {(kind,): n for kind, n in sorted(stats.rebalances.items())},
        labels=("kind",),
    )
    yield _counter(
        "group_markets_restored_total",
        "Detector states restored from the state topic by partition takeovers.",
        {(): stats.markets_restored},
    )
    yield _histogram(
        "group_restore_seconds",
        "Reading a taken-over partition's state, once its previous owner is fenced.",
        {(): stats.restore_seconds},
    )
    yield _histogram(
        "group_takeover_seconds",
        "From a partition's assignment to serving it (fencing the old owner, then restoring).",
        {(): stats.takeover_seconds},
    )


def _delivery_metrics(stats: DeliveryStats) -> Iterator[_Family]:
    yield _counter(
        "events_published_total",
        "Events acknowledged by Kafka (acks=all).",
        {(): stats.delivered},
    )
    yield _counter(
        "events_publish_failed_total",
        "Events given up on (logged at ERROR, not in Kafka).",
        {(): stats.failed},
    )
    yield _counter(
        "events_dead_lettered_total",
        "Events Kafka refused for good, written to the dead-letter topic instead.",
        {(): stats.dead_lettered},
    )
    yield _counter(
        "events_publish_retries_total",
        "Events produced again after a failed delivery or a producer replacement.",
        {(): stats.retried},
    )
    yield _gauge(
        "events_pending", "Events handed to Kafka and not acknowledged yet.", stats.pending
    )
    yield _counter(
        "kafka_producer_recreated_total",
        "Kafka producers replaced after a fatal error or a message timeout.",
        {(): stats.producer_recreated},
    )
    yield _counter(
        "kafka_buffer_full_waits_total",
        "Times a publish waited because the producer's local queue was full (backpressure).",
        {(): stats.buffer_full_waits},
    )
    yield _counter(
        "kafka_in_flight_waits_total",
        "Times a publish waited because KAFKA_MAX_IN_FLIGHT events were unacknowledged.",
        {(): stats.in_flight_waits},
    )
    yield _histogram(
        "delivery_latency_seconds",
        "From publish to Kafka's acknowledgement.",
        {(): stats.delivery_latency},
    )
    yield _gauge(
        "kafka_brokers_up",
        "Brokers the producer is connected to, from librdkafka's latest statistics.",
        stats.brokers_up,
    )
    yield _counter(
        "kafka_outages_total",
        "Kafka outages: no broker reachable for longer than the confirmation delay "
        "(each logged once at WARNING).",
        {(): stats.outages},
    )
    yield _counter(
        "kafka_transactions_committed_total",
        "Kafka transactions committed (exactly-once delivery: events with their state).",
        {(): stats.transactions_committed},
    )
    yield _counter(
        "kafka_transactions_aborted_total",
        "Kafka transactions that failed and were aborted (their content committed again).",
        {(): stats.transactions_aborted},
    )
    yield _counter(
        "state_records_committed_total",
        "Detector state records (and tombstones) committed in transactions with the events.",
        {(): stats.state_records_committed},
    )


def _rules_metrics(rules: RulesHolder, service: ServiceStats) -> Iterator[_Family]:
    metrics = rules.metrics
    yield _counter(
        "rules_reload_requests_total",
        "Rule reloads requested with SIGHUP.",
        {(): service.reload_requests},
    )
    yield _counter(
        "rules_adoption_failures_total",
        "Reloaded rules the detector could not adopt (the rules in force stayed).",
        {(): service.rule_adoption_failures},
    )
    yield _counter(
        "rules_reloads_total",
        "Rule reloads, by result (a failed reload keeps the previous rules).",
        {(result,): n for result, n in sorted(metrics.reload_total.items())},
        labels=("result",),
    )
    last = GaugeMetricFamily(
        PREFIX + "rules_last_reload_success_timestamp_seconds",
        "Unix time of the last successful rules load (the initial load counts).",
    )
    if metrics.last_reload_success_timestamp is not None:
        last.add_metric([], metrics.last_reload_success_timestamp)
    yield last
    yield _info("rules", "The rules_version of the rules in force.", version=metrics.version)


# --- family builders -----------------------------------------------------------------------


def _counter(
    name: str,
    documentation: str,
    values: Mapping[tuple[str, ...], float],
    *,
    labels: Iterable[str] = (),
) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, documentation, labels=list(labels))
    for label_values, value in values.items():
        family.add_metric(list(label_values), value)
    return family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)


def _histogram(
    name: str,
    documentation: str,
    values: Mapping[tuple[str, ...], Histogram],
    *,
    labels: Iterable[str] = (),
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(PREFIX + name, documentation, labels=list(labels))
    for label_values, histogram in values.items():
        buckets = [(_le(bound), n) for bound, n in histogram.cumulative()]
        family.add_metric(list(label_values), buckets, histogram.sum)
    return family


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def _info(name: str, documentation: str, **labels: str) -> InfoMetricFamily:
    return InfoMetricFamily(PREFIX + name, documentation, value=labels)
