"""Composition root: open the real adapters from `AppConfig` and run the service.

Why this file is over 400 lines: `run_app` opens every adapter in the order shutdown needs,
and the state restore (`restore_states`, `StateRestore`) is composed here with the Kafka
calls it retries; the several-instances wiring is apart already (`app_group`).

Resources are opened outermost-first so they close in the order shutdown needs: the
publisher flushes (shielded, bounded by the grace period) before the HTTP client closes, and
MongoDB closes last. The health/metrics server is a background task of the service: it
answers from start-up until the pipeline has drained.

Neither MongoDB nor Kafka has to be up for the service to start: the store is opened without
a probe (the first refresh finds out, and retries), the producer connects in the background,
and the detector state (with a state topic) is restored by `detect` before its first
snapshot, retrying until Kafka answers (`StateRestore`). Until all are there, `/health/live`
is 200 and `/health/ready` says what is missing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from functools import partial

import anyio
from confluent_kafka import KafkaException

from polymarket_kafka.app_group import Group, join_group, open_group_publisher, open_membership
from polymarket_kafka.backoff import doubling
from polymarket_kafka.clock import now_utc
from polymarket_kafka.config import AppConfig, PolymarketConfig
from polymarket_kafka.detector_state import (
    ClosedMarket,
    MarketState,
    StateFormatError,
    StateFormatOutdated,
    decode,
)
from polymarket_kafka.kafka.partitioned import PartitionedPublisher
from polymarket_kafka.kafka.publisher import KafkaPublisher, open_kafka_publisher
from polymarket_kafka.kafka.state_topic import (
    StateTopicError,
    StateWriter,
    ensure_state_topic,
    read_state,
)
from polymarket_kafka.kafka.statistics import kafka_readiness
from polymarket_kafka.kafka.transactional import (
    TransactionalPublisher,
    open_transactional_publisher,
)
from polymarket_kafka.ops.board import STALE_INTERVALS, MarketBoard
from polymarket_kafka.ops.dashboard import Dashboard
from polymarket_kafka.ops.health import ComponentStatus, ServiceHealth
from polymarket_kafka.ops.http_server import serve_ops
from polymarket_kafka.ops.metrics import MetricSources, build_registry
from polymarket_kafka.polymarket import open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller
from polymarket_kafka.polymarket.stream import MarketStream, open_market_stream
from polymarket_kafka.service.pipeline import DurableState, run_service
from polymarket_kafka.service.reloader import RulesHolder, default_rules_path
from polymarket_kafka.service.stats import ServiceSettings, ServiceStats, log_stopped
from polymarket_kafka.service.streaming import StreamCoordinator
from polymarket_kafka.subscriptions import open_subscription_store

__all__ = [
    "KafkaStateSink",
    "StateRestore",
    "coordinate_stream",
    "kafka_check",
    "load_initial_rules",
    "restore_states",
    "run_app",
    "settings_from_config",
]

#: Restoring the state topic is retried (Kafka may not be up yet) with this backoff, capped.
RESTORE_RETRY_SECONDS = (1.0, 30.0)

logger = logging.getLogger(__name__)


def settings_from_config(config: AppConfig) -> ServiceSettings:
    """Pipeline settings from the environment configuration."""
    return ServiceSettings(
        poll_interval_seconds=config.poll_interval_seconds,
        subscription_refresh_seconds=config.mongodb.poll_interval_seconds,
        drain_grace_seconds=config.shutdown_grace_seconds,
    )


def load_initial_rules(config: AppConfig) -> RulesHolder:
    """The rules to start with: RULES_PATH, else rules/default.yaml, else the built-ins.

    Raises `ruleset.RulesError` (every issue with file, line and key) for an invalid file:
    unlike a reload, a bad file at start-up stops the service before it touches anything.
    """
    return RulesHolder.from_path(default_rules_path(config.rules_path), clock=now_utc)


#: The publisher of the configured delivery mode (`KafkaConfig.exactly_once`, `grouped`).
AnyPublisher = KafkaPublisher | TransactionalPublisher | PartitionedPublisher


def open_publisher(
    config: AppConfig, statistics_interval_ms: int
) -> AbstractAsyncContextManager[AnyPublisher]:
    """One transactional publisher per owned partition (several instances: `KAFKA_GROUP_ID`),
    the transactional publisher (exactly once: a state topic and `KAFKA_DELIVERY=
    exactly_once`), else the idempotent one (at least once)."""
    if config.kafka.grouped:
        return open_group_publisher(config, statistics_interval_ms)
    if config.kafka.exactly_once:
        return open_transactional_publisher(
            config.kafka,
            start=False,  # by the state restore, in the pipeline (`StateRestore`)
            clock=now_utc,
            grace_seconds=config.shutdown_grace_seconds,
            statistics_interval_ms=statistics_interval_ms,
        )
    return open_kafka_publisher(
        config.kafka,
        clock=now_utc,
        grace_seconds=config.shutdown_grace_seconds,
        statistics_interval_ms=statistics_interval_ms,
    )


def kafka_check(publisher: AnyPublisher) -> Callable[[], ComponentStatus]:
    """The readiness check of the "kafka" component: the producer reaches a broker, and no
    event has been pending longer than librdkafka's delivery timeout (`kafka_readiness`)."""

    def check() -> ComponentStatus:
        return kafka_readiness(
            publisher.broker_status(),
            publisher.delivery_backlog(),
            publisher.delivery_timeout_seconds,
        )

    return check


class KafkaStateSink:
    """The pipeline's `StateSink`: a `StateWriter` run in a worker thread, and the markets
    with events the publisher has not had acknowledged."""

    def __init__(self, writer: StateWriter, publisher: KafkaPublisher, timeout: float) -> None:
        self._writer = writer
        self._publisher = publisher
        self._timeout = timeout

    async def write(self, records: Sequence[tuple[str, bytes | None]]) -> list[str]:
        return await anyio.to_thread.run_sync(self._writer.write, records, self._timeout)

    def unacknowledged(self) -> set[str]:
        return {event.market_id for event in self._publisher.pending_events()}


async def _close_writer(writer: StateWriter) -> None:
    # Shielded: a stop must not cut the flush of the last checkpoint short.
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(writer.close)


async def restore_states(
    config: AppConfig,
    on_retry: Callable[[str], object] | None = None,
    *,
    only: Collection[int] | None = None,
    read: Callable[[], dict[str, bytes]] | None = None,
) -> list[MarketState | ClosedMarket]:
    """Create the state topic if missing and read every market's state back (with `only`,
    the markets of those partitions; `read`, a blocking call, reads them some other way: the
    standby's catch-up), retrying (logged, and told to `on_retry`) until Kafka answers. A
    record that cannot be read is skipped with a warning: that market starts afresh
    (records of an earlier detector's format are counted and logged in one line per
    version)."""
    delays = doubling(*RESTORE_RETRY_SECONDS)
    topic = config.kafka.full_state_topic
    while True:
        try:
            # Abandoned on cancellation (a stop while Kafka does not answer): both calls
            # only read or create, and their client is the worker thread's alone.
            created = await anyio.to_thread.run_sync(
                ensure_state_topic, config.kafka, abandon_on_cancel=True
            )
            if created:
                logger.info("state topic %s created (compacted)", topic)
            if read is None:
                read = partial(read_state, config.kafka)
                if only is not None:
                    read = partial(read, only=only)
            records = await anyio.to_thread.run_sync(read, abandon_on_cancel=True)
            break
        except (StateTopicError, KafkaException) as exc:
            delay = next(delays)
            logger.warning("cannot restore detector state (%s); retrying in %.0fs", exc, delay)
            if on_retry is not None:
                on_retry(str(exc))
            await anyio.sleep(delay)
    states: list[MarketState | ClosedMarket] = []
    outdated: dict[int, int] = {}
    for market_id, record in sorted(records.items()):
        try:
            states.append(decode(record))
        except StateFormatOutdated as exc:
            outdated[exc.version] = outdated.get(exc.version, 0) + 1
        except StateFormatError as exc:
            logger.warning(
                "state of market %s in %s not restored, it starts afresh: %s",
                market_id,
                topic,
                exc,
                extra={"market_id": market_id},
            )
    for version, count in sorted(outdated.items()):
        # One line, not one per market: an upgrade meets every record of the old format.
        logger.warning(
            "%d markets in %s have detector state of format version %d (an earlier "
            "detector); they start afresh",
            count,
            topic,
            version,
        )
    return states


class StateRestore:
    """The restore of the state topic at start, and the readiness component ("state") that
    tells how it goes: not ready until the detector has its states."""

    def __init__(
        self,
        config: AppConfig,
        health: ServiceHealth,
        first: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`first` is awaited before the state topic is read (exactly once: the producer's
        transactions are initialised, which aborts what a crashed instance left open)."""
        self._config = config
        self._first = first
        self._status = ComponentStatus(False, "waiting for the detector state to be restored")
        health.add_check("state", lambda: self._status)

    async def run(self) -> list[MarketState | ClosedMarket]:
        topic = self._config.kafka.full_state_topic
        if self._first is not None:
            self._status = ComponentStatus(False, "initialising Kafka transactions")
            await self._first()
        self._status = ComponentStatus(False, f"restoring detector state from {topic}")
        states = await restore_states(self._config, self._retrying)
        self._status = ComponentStatus(True, f"{len(states)} markets restored from {topic}")
        return states

    def _retrying(self, error: str) -> None:
        topic = self._config.kafka.full_state_topic
        self._status = ComponentStatus(False, f"cannot restore from {topic} yet: {error}")


def coordinate_stream(
    stream: MarketStream, poller: MarketPoller, config: PolymarketConfig, health: ServiceHealth
) -> StreamCoordinator:
    """REST as the stream's watchdog and fallback, with its readiness component "stream"
    (always ready: REST serves what the stream does not; it says which markets that is)."""
    coordinator = StreamCoordinator(
        stream,
        poller,
        reconcile_seconds=config.ws_reconcile_seconds,
        tolerance=config.ws_tolerance,
    )

    health.add_check("stream", coordinator.check)
    return coordinator


async def run_app(
    config: AppConfig,
    rules: RulesHolder | None = None,
    *,
    on_listening: Callable[[int], object] | None = None,
    kafka_statistics_interval_ms: int = 5000,
) -> ServiceStats:
    """Run the service against the configured MongoDB, Polymarket and Kafka until stopped.

    The health/metrics server listens on `config.http_host:config.http_port`; `on_listening`
    is called with the bound port once it does (useful with port 0). Kafka connectivity is
    judged from librdkafka statistics sent every `kafka_statistics_interval_ms`.
    """
    rules = rules if rules is not None else load_initial_rules(config)
    if config.kafka.transactional_id and not config.kafka.exactly_once:
        logger.warning(
            "KAFKA_TRANSACTIONAL_ID is ignored: transactions are used only with a state topic "
            "(KAFKA_STATE_TOPIC) and KAFKA_DELIVERY=exactly_once"
        )
    stats = ServiceStats()
    health = ServiceHealth(secrets=config.secret_values())
    opened: AnyPublisher | None = None
    try:
        async with (
            open_subscription_store(config.mongodb, clock=now_utc, probe=False) as store,
            open_polymarket_client(config.polymarket) as client,
            # Several instances: the group is left last, after the publishers' final commits.
            (
                open_membership(config) if config.kafka.grouped else contextlib.nullcontext()
            ) as membership,
            # Exactly once, the producer's transactions are initialised before the state
            # topic is read: a transaction a crashed instance left open is aborted first.
            open_publisher(config, kafka_statistics_interval_ms) as publisher,
            contextlib.AsyncExitStack() as stack,
        ):
            opened = publisher
            group: Group | None = None
            if membership is not None and isinstance(publisher, PartitionedPublisher):
                group = join_group(config, membership, publisher, health, restore_states)
            poller = MarketPoller(
                client, metadata_refresh_seconds=config.polymarket.metadata_refresh_seconds
            )
            coordinator = None
            if config.polymarket.streaming:
                stream = await stack.enter_async_context(
                    open_market_stream(config.polymarket, clock=now_utc)
                )
                coordinator = coordinate_stream(stream, poller, config.polymarket, health)
            health.add_check("kafka", kafka_check(publisher))
            registry = build_registry(
                MetricSources(
                    service=stats,
                    client=client.stats,
                    poller=poller.stats,
                    delivery=publisher.stats,
                    rules=rules,
                    stream=coordinator,
                    group=None if group is None else group.stats,
                )
            )
            interval = config.poll_interval_seconds
            if coordinator is not None:
                interval = max(interval, config.polymarket.ws_reconcile_seconds)
            board = MarketBoard(stale_after_seconds=STALE_INTERVALS * interval)
            if group is not None:
                group.forget_rows_of_lost_partitions(board)
            dashboard = Dashboard(
                board,
                health,
                rules,
                stats,
                now_utc,
                publisher.stats,
                coordinator,
                group=None if group is None else group.stats,
            )
            serve = partial(
                serve_ops,
                config.http_host,
                config.http_port,
                health=health,
                registry=registry,
                dashboard=dashboard,
            )

            async def http_server() -> None:
                async with anyio.create_task_group() as tg:
                    port = await tg.start(serve)
                    if on_listening is not None:
                        on_listening(port)

            durable = None
            if group is not None and isinstance(publisher, PartitionedPublisher):
                # Each partition's states are restored when it is taken over (`Sharding`).
                durable = DurableState(None, config.state_checkpoint_seconds, stager=publisher)
            elif config.kafka.full_state_topic:
                # Restored by `detect` before its first snapshot: health answers meanwhile.
                if not isinstance(publisher, KafkaPublisher):
                    assert isinstance(publisher, TransactionalPublisher)  # not grouped
                    restoring = StateRestore(config, health, first=publisher.start)
                    durable = DurableState(
                        None,
                        config.state_checkpoint_seconds,
                        stager=publisher,
                        restore=restoring.run,
                    )
                else:
                    restoring = StateRestore(config, health)
                    writer = await anyio.to_thread.run_sync(StateWriter, config.kafka)
                    stack.push_async_callback(_close_writer, writer)
                    sink = KafkaStateSink(writer, publisher, timeout=config.shutdown_grace_seconds)
                    durable = DurableState(
                        sink, config.state_checkpoint_seconds, restore=restoring.run
                    )
            await run_service(
                durable=durable,
                store=store,
                poller=poller,
                publisher=publisher,
                settings=settings_from_config(config),
                clock=now_utc,
                rules=rules,
                stats=stats,
                health=health,
                background=[http_server] if group is None else [http_server, group.group],
                stream=coordinator,
                board=board,
                ownership=None if group is None else group.ownership,
                subscriptions=None if group is None else group.subscriptions,
            )
    finally:
        # However the service ended (a stop, or a stage that failed), the publisher has
        # flushed and closed: only now is it known what Kafka acknowledged.
        if opened is not None:  # pragma: no branch - always set when the body returned
            # Handed over (several instances): left to the partition's new owner, which
            # detects them again from the committed state -- not lost.
            log_stopped(
                stats,
                acknowledged=opened.stats.delivered,
                unacknowledged=opened.stats.unacknowledged,
                handed_over=opened.stats.handed_over,
            )
    return stats
