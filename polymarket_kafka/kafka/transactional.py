"""Exactly-once delivery: events and the detector state they imply, in Kafka transactions.

Why this file is over 400 lines: `TransactionalPublisher` is one object whose committer,
producer replacement and close share the current producer and its generation; the pure
part (what is committed, what a commit settles) is `transaction_book` already.

`TransactionalPublisher` is the publisher of `KAFKA_DELIVERY=exactly_once` (with a state
topic). Events (`publish`) and state records (`stage`, and the state handed with an event)
gather in a `TransactionBook`; one committer task takes everything waiting, at most
`KAFKA_TRANSACTION_LINGER_MS` after the first of it arrived, and commits it in one
transaction: the events on the events topic, the states on the state topic. An event is
acknowledged when its transaction is committed; a consumer with
`isolation.level=read_committed` sees it then, together with the market's new baseline in
the state topic, or sees neither (a crash before the commit: the restarted service restores
the older state and detects the move again).

Failures:

* A transaction that fails is aborted and its content committed again in the next one (same
  bytes, same event ids), after a backoff (0.5 s doubling to 30 s), for as long as it takes:
  `publish` waits at `max_in_flight` uncommitted events (backpressure). A producer that
  cannot abort, or a fatal error (e.g. a broker that restarted empty and forgot the producer),
  gets the producer replaced by a new one with the same `transactional.id` (which aborts
  whatever the old one left open).
* A commit that times out is retried on the same producer (committing twice is safe, aborting
  a commit that went through would repeat its events).
* Fenced (`_FENCED`: another instance with the same `transactional.id` started): there are
  never two writers. `ProducerFencedError` stops the service (exit status 1, one CRITICAL
  line naming the id); nothing more is produced or committed; what this instance had not
  committed is the new instance's to detect again from the restored state. With several
  instances (`kafka.partitioned`) it ends only that partition's publisher, and what it had
  not committed is handed over (`hand_over_if_fenced`).
* An event Kafka refuses outright (larger than `message.max.bytes`) is left out of the
  transaction, logged at ERROR and counted as failed; it cannot be delivered by anyone.

librdkafka's callbacks (statistics for `broker_status`, client errors) may run in the worker
thread of a commit or on the event loop (`poll(0)` while idle): they only queue reports, which
the event loop drains.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import anyio
import confluent_kafka
from confluent_kafka import KafkaError, KafkaException

from polymarket_kafka.backoff import doubling
from polymarket_kafka.clock import now_utc
from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.detector_state import StateRecord
from polymarket_kafka.kafka.connectivity import RepeatLimiter
from polymarket_kafka.kafka.delivery import (
    REFUSED_RECORD_CODES,
    DeliveryStats,
    FailedDelivery,
    classify,
    kafka_error,
)
from polymarket_kafka.kafka.ledger import Failure
from polymarket_kafka.kafka.librdkafka_log import LibrdkafkaLog
from polymarket_kafka.kafka.settings import (
    DELIVERY_TIMEOUT_MS,
    redacted_producer_config,
    transactional_producer_config,
)
from polymarket_kafka.kafka.statistics import (
    BrokerStatus,
    DeliveryBacklog,
    StatisticsBridge,
    StatisticsReport,
)
from polymarket_kafka.kafka.transaction_book import Batch, Outgoing, TransactionBook
from polymarket_kafka.kafka.value import event_headers, stamped_value
from polymarket_kafka.models import PolymarketEvent

__all__ = [
    "ProducerFencedError",
    "TransactionalProducer",
    "TransactionalPublisher",
    "open_transactional_publisher",
]

logger = logging.getLogger(__name__)
_librdkafka_logger = logging.getLogger(f"{__name__}.librdkafka")

#: How many given-up events `TransactionalPublisher.failed` keeps (the latest).
MAX_FAILED_KEPT = 1000
#: Errors meaning another producer with our transactional.id took over.
_FENCED_CODES = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)


class ProducerFencedError(Exception):
    """Another instance with the same `transactional.id` started: this one must stop."""


class TransactionalProducer(Protocol):
    """The part of `confluent_kafka.Producer` the transactional publisher uses."""

    def init_transactions(self, timeout: float) -> None: ...

    def begin_transaction(self) -> None: ...

    def produce(
        self,
        topic: str,
        *,
        value: bytes | None,
        key: bytes,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None: ...

    def commit_transaction(self, timeout: float) -> None: ...

    def abort_transaction(self, timeout: float) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...


@dataclass(frozen=True)
class _ClientError:
    error: KafkaError


class _CommitPending(Exception):
    """The commit did not complete but may still: retry the commit, do not abort."""


class TransactionalPublisher:
    """Publishes events and state records in transactions. Open with
    `open_transactional_publisher`; call everything on the event loop thread."""

    def __init__(
        self,
        config: KafkaConfig,
        *,
        producer_factory: Callable[[dict[str, object]], TransactionalProducer],
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
        statistics_interval_ms: int = 5000,
        timeout_seconds: float = 10.0,
        backoff_seconds: tuple[float, float] = (0.5, 30.0),
        stats: DeliveryStats | None = None,
    ) -> None:
        self.topic = config.full_topic
        self.state_topic = config.full_state_topic
        self.transactional_id = config.full_transactional_id
        #: Shared by the publishers of one instance's partitions (`kafka.partitioned`):
        #: every figure is added to, `pending` included (`_count_pending`).
        self.stats = stats if stats is not None else DeliveryStats()
        self._pending_counted = 0
        #: Set by `hand_over`: what is not committed at the close is the new owner's.
        self._handing_over = False
        self._hand_over_on_fence = False
        self._abandoned = False
        #: The latest events given up on (at most `MAX_FAILED_KEPT`; `stats.failed` counts all).
        self.failed: deque[FailedDelivery] = deque(maxlen=MAX_FAILED_KEPT)
        self._book = TransactionBook(config.max_in_flight)
        self._conf = transactional_producer_config(config)
        self._factory = producer_factory
        self._clock = clock
        self._monotonic = monotonic
        self._linger = config.transaction_linger_ms / 1000
        self._timeout = timeout_seconds
        self._backoff = backoff_seconds
        self._statistics = StatisticsBridge(statistics_interval_ms, monotonic=monotonic)
        self._librdkafka_log = LibrdkafkaLog(_librdkafka_logger, window=60.0, monotonic=monotonic)
        self._warnings = RepeatLimiter(60.0)
        self._reports: deque[StatisticsReport | _ClientError] = deque()
        self._producer: TransactionalProducer | None = None
        self._generation = 0
        self._work = anyio.Event()
        self._settled = anyio.Event()
        self._closing = False
        self._fenced = False
        #: The committer's scope: shielded, so that cancelling the caller's block does not
        #: stop it before the close has committed what is left; cancelled after the close.
        self._committer = anyio.CancelScope(shield=True)
        self._committer_done = anyio.Event()
        self._starting = anyio.Lock()

    # --- the pipeline's side ------------------------------------------------------------

    async def publish(self, event: PolymarketEvent, state: StateRecord | None = None) -> None:
        """Stamp `published_at` and add the event (and `state`, its market's detector state
        after it) to the next transaction; wait while `max_in_flight` events are uncommitted.

        Returns without waiting once the event is in the book: nothing else can run between
        its arrival and the state's. A publish cancelled while waiting is counted as failed.
        """
        try:
            while not self._book.has_room() and not self._closing:
                self.stats.in_flight_waits += 1
                await self._settled.wait()
        except anyio.get_cancelled_exc_class():
            self.stats.published += 1
            self._give_up(event, "publish cancelled while waiting for room (KAFKA_MAX_IN_FLIGHT)")
            raise
        if self._closing:
            raise RuntimeError("the Kafka publisher is closed")
        value = stamped_value(event, self._clock())
        self._book.add(Outgoing(event, value, self._monotonic()), state)
        self.stats.published += 1
        self._count_pending()
        self._work.set()

    def stage(self, records: Iterable[StateRecord]) -> None:
        """State records for the next transaction (`service.ports.StateStager`)."""
        self._book.stage(records)
        self._work.set()

    async def flush(self, timeout: float) -> int:  # noqa: ASYNC109 (a budget, not an I/O timeout)
        """Wait until everything staged is committed, at most `timeout` seconds. Returns how
        many events are still uncommitted (0: all of them are in Kafka)."""
        with anyio.move_on_after(timeout):
            while (len(self._book) or self._book.has_work()) and not self._fenced:
                await self._settled.wait()
        return len(self._book)

    def pending_events(self) -> list[PolymarketEvent]:
        """The events not committed yet, in publish order."""
        return [outgoing.event for outgoing in self._book]

    def broker_status(self) -> BrokerStatus:
        """Whether the producer reaches Kafka, from its latest statistics (no I/O)."""
        self._drain_reports()
        if self._fenced:
            return BrokerStatus(False, f"fenced: another instance uses {self.transactional_id}")
        if self._closing:
            return BrokerStatus(False, "the Kafka publisher is closed")
        return self._statistics.status()

    @property
    def initialised_unreported(self) -> bool:
        """Its transactions are initialised (the broker answered) but its first statistics
        have not arrived yet (they come every `statistics_interval_ms`)."""
        self._drain_reports()
        return self._producer is not None and not self._statistics.reported

    def delivery_backlog(self) -> DeliveryBacklog:
        """How many events are uncommitted, and for how long the oldest has been (no I/O)."""
        oldest = self._book.oldest()
        if oldest is None:
            return DeliveryBacklog(0)
        return DeliveryBacklog(len(self._book), max(0.0, self._monotonic() - oldest.added_at))

    @property
    def delivery_timeout_seconds(self) -> float:
        """The readiness bound on the age of the oldest uncommitted event."""
        return DELIVERY_TIMEOUT_MS / 1000

    # --- the committer ------------------------------------------------------------------

    async def start(self) -> None:
        """Create the producer and initialise its transactions (which fences any older
        instance with the same id and aborts what it left open), retrying until Kafka
        answers. Called before the state topic is read: a transaction left open by a crash
        must be aborted first. A producer configuration librdkafka refuses raises
        `KafkaException` at once (no retry cures it)."""
        async with self._starting:  # one caller initialises, another waits for it
            await self._start()

    async def _start(self) -> None:
        delays = doubling(*self._backoff)
        while self._producer is None:
            producer = await anyio.to_thread.run_sync(self._new_producer, self._generation)
            try:
                await anyio.to_thread.run_sync(producer.init_transactions, self._timeout)
            except KafkaException as exc:
                self._stop_if_fenced(exc)
                delay = next(delays)
                self._warn(
                    "init",
                    "cannot initialise Kafka transactions (%s); retrying in %.1fs",
                    kafka_error(exc) or exc,
                    delay,
                )
                await anyio.sleep(delay)
            else:
                self._producer = producer
            finally:
                self._drain_reports()

    async def _run_committer(self) -> None:
        try:
            with self._committer:
                await self._commit_loop()
        finally:
            self._committer_done.set()

    async def _commit_loop(self) -> None:
        """Commit what waits, one transaction at a time, until closed and drained."""
        while True:
            if not self._book.has_work():
                if self._closing:
                    return
                with anyio.move_on_after(self._statistics.interval_ms / 2000):
                    await self._work.wait()
                self._work = anyio.Event()
                self._serve_callbacks()
                continue
            await anyio.sleep(self._linger)  # let the events of one poll cycle gather
            await self._commit()

    async def _commit(self) -> None:
        """Commit everything waiting, retrying (aborted, or with a new producer) until it is
        in; what arrives meanwhile joins the next attempt."""
        batch = self._book.take()
        delays = doubling(*self._backoff)
        commit_only = False
        # What Kafka refused outright in the transaction being committed (left out of it).
        rejected: list[Outgoing] = []
        refused_states: list[str] = []
        while True:
            await self.start()
            producer = self._producer
            assert producer is not None
            try:
                # Shielded: once a commit is under way its outcome is booked, even when the
                # close cancels the committer (a worker thread cannot be abandoned anyway).
                with anyio.CancelScope(shield=True):
                    if commit_only:
                        await anyio.to_thread.run_sync(self._commit_open, producer)
                    else:
                        rejected.clear()
                        refused_states.clear()
                        await anyio.to_thread.run_sync(
                            self._transaction, producer, batch, rejected, refused_states
                        )
                break
            except _CommitPending as pending:
                commit_only = True  # the same transaction, still being committed
                reason = str(pending)
            except KafkaException as exc:
                commit_only = False
                error = kafka_error(exc)
                reason = str(error or exc)
                if error is not None and classify(error) is Failure.PERMANENT:
                    # No retry cures it (a denied or missing topic, a record over the
                    # broker's limit): retried all the same, so nothing is lost once it is
                    # fixed; readiness reports the stalled delivery after 60 s.
                    self._warn(
                        "refused",
                        "Kafka refuses the transaction for good until fixed (%s); retrying",
                        reason,
                        level=logging.ERROR,
                    )
                self.stats.transactions_aborted += 1
                self._book.failed()
                self._stop_if_fenced(exc)
                await self._abort(producer, exc)
            finally:
                self._drain_reports()
            delay = next(delays)
            self._warn(
                "commit",
                "Kafka transaction of %d event(s) and %d state record(s) not committed (%s); "
                "retrying in %.1fs",
                len(batch.events),
                len(batch.states),
                reason,
                delay,
            )
            await anyio.sleep(delay)
            if not commit_only:
                batch = self._book.take()
        self._book.committed()
        self.stats.transactions_committed += 1
        self.stats.state_records_committed += len(batch.states) - len(refused_states)
        now = self._monotonic()
        rejected_ids = {id(outgoing) for outgoing in rejected}
        for outgoing in batch.events:
            if id(outgoing) in rejected_ids:
                self._give_up(outgoing.event, "refused by Kafka (too large?)")
            else:
                self.stats.delivered += 1
                self.stats.delivery_latency.observe(now - outgoing.added_at)
        self._settle()

    def _stop_if_fenced(self, exc: KafkaException) -> None:
        error = kafka_error(exc)
        if error is not None and error.code() in _FENCED_CODES:
            self._fenced = True
            self._settle()
            raise ProducerFencedError(
                f"Kafka producer fenced: another instance with transactional.id "
                f"{self.transactional_id!r} started; this one stops (never two writers), "
                f"leaving {len(self._book)} uncommitted event(s) to it"
            ) from None

    async def _abort(self, producer: TransactionalProducer, exc: KafkaException) -> None:
        """After a failed transaction: abort it, or replace the producer when it cannot
        (a fatal error, or the abort failed too)."""
        error = kafka_error(exc)
        if error is None or not error.fatal():
            try:
                await anyio.to_thread.run_sync(producer.abort_transaction, self._timeout)
            except KafkaException as abort_error:
                # Fenced meanwhile: stop, never initialise again (that would fence the newer
                # instance in turn).
                self._stop_if_fenced(abort_error)
                exc = abort_error
            else:
                return
        self._replace(str(kafka_error(exc) or exc))

    def _replace(self, reason: str) -> None:
        logger.warning("Kafka transactional producer unusable (%s): replacing it", reason)
        self._generation += 1
        # Dropped, librdkafka destroys it; the broker aborts what it left open when the new
        # producer (same transactional.id) initialises.
        self._producer = None
        self._statistics.reset()
        self.stats.brokers_up = 0
        self.stats.producer_recreated += 1

    # --- worker thread ------------------------------------------------------------------

    def _new_producer(self, generation: int) -> TransactionalProducer:
        conf = {
            **self._conf,
            "error_cb": functools.partial(self._on_client_error, generation),
            "statistics.interval.ms": self._statistics.interval_ms,
            "stats_cb": functools.partial(self._on_statistics, generation),
            "logger": self._librdkafka_log,
        }
        return self._factory(conf)

    def _transaction(
        self,
        producer: TransactionalProducer,
        batch: Batch,
        rejected: list[Outgoing],
        refused_states: list[str],
    ) -> None:
        """Produce `batch` in one transaction and commit it. What Kafka refuses outright is
        left out of the transaction and added to `rejected` (events) and `refused_states`
        (market ids): the caller keeps them across a retried commit."""
        producer.begin_transaction()
        for outgoing in batch.events:
            event = outgoing.event
            headers = event_headers(event)
            if not self._produce(producer, self.topic, event.kafka_key, outgoing.value, headers):
                rejected.append(outgoing)
        for market_id, value in batch.states.items():
            if not self._produce(producer, self.state_topic, market_id.encode(), value, None):
                logger.error("state record of market %s refused by Kafka", market_id)
                refused_states.append(market_id)
        self._commit_open(producer)

    def _commit_open(self, producer: TransactionalProducer) -> None:
        """Commit the open transaction; `_CommitPending` when it may still complete (a
        timeout): the caller retries the commit, never aborts it."""
        try:
            producer.commit_transaction(self._timeout)
        except KafkaException as exc:
            error = kafka_error(exc)
            if error is not None and error.retriable():
                raise _CommitPending(str(error)) from None
            raise

    def _produce(
        self,
        producer: TransactionalProducer,
        topic: str,
        key: bytes,
        value: bytes | None,
        headers: list[tuple[str, str | bytes | None]] | None,
    ) -> bool:
        """Produce one record, waiting while librdkafka's queue is full. False: refused for
        good (the transaction goes on without it); other errors raise."""
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers)
            except BufferError:
                producer.poll(0.05)
            except KafkaException as exc:
                error = kafka_error(exc)
                if error is not None and error.code() in REFUSED_RECORD_CODES:
                    return False
                raise
            else:
                return True

    def _on_statistics(self, generation: int, text: str) -> None:
        try:
            self._reports.append(self._statistics.receive(generation, text))
        except ValueError as exc:
            logger.warning("unreadable librdkafka statistics ignored: %s", exc)

    def _on_client_error(self, generation: int, error: KafkaError) -> None:
        if generation == self._generation:
            self._reports.append(_ClientError(error))

    # --- event loop -----------------------------------------------------------------------

    def _serve_callbacks(self) -> None:
        producer = self._producer
        if producer is not None:
            producer.poll(0)
        self._drain_reports()

    def _drain_reports(self) -> None:
        while self._reports:
            report = self._reports.popleft()
            if isinstance(report, StatisticsReport):
                if self._statistics.accept(report, self._generation):
                    self.stats.brokers_up = report.statistics.brokers_up
            else:
                logger.debug("Kafka client error: %s", report.error)

    def _warn(self, kind: str, message: str, *args: object, level: int = logging.WARNING) -> None:
        """Log at `level`, at most once a minute per `kind` (the rest at DEBUG)."""
        left_out = self._warnings.allow(kind, self._monotonic())
        logger.log(logging.DEBUG if left_out is None else level, message, *args)

    def _give_up(self, event: PolymarketEvent, reason: str) -> None:
        self.stats.failed += 1
        self.failed.append(FailedDelivery(event, reason, 1))
        logger.error(
            "event NOT delivered to %s: %s: event_id=%s market %s",
            self.topic,
            reason,
            event.event_id,
            event.market_id,
            extra={"market_id": event.market_id, "event_id": event.event_id, "rule": event.rule},
        )

    def _count_pending(self) -> None:
        self.stats.pending += len(self._book) - self._pending_counted
        self._pending_counted = len(self._book)

    def hand_over(self) -> None:
        """The partition this publisher writes for moves to another instance: at the close,
        what is not committed is logged as left to it (WARNING, `stats.handed_over`), not
        as lost -- the new owner detects it again from the committed state."""
        self._handing_over = True

    def hand_over_if_fenced(self) -> None:
        """Several instances: being fenced means the partition has a new owner, so what is
        not committed at the close is handed over to it (as with `hand_over`), not lost."""
        self._hand_over_on_fence = True

    def abandon(self) -> None:
        """The partition was lost (another instance owns it and has fenced this producer):
        the close tries no commit (`hand_over` applies too)."""
        self._handing_over = True
        self._abandoned = True

    def _settle(self) -> None:
        self._count_pending()
        self._settled.set()
        self._settled = anyio.Event()

    async def _close(self, grace_seconds: float) -> None:
        """Commit what is left for at most `grace_seconds`, stop the committer (a commit
        under way finishes and is booked), then name what is not committed at ERROR."""
        self._closing = True
        self._work.set()
        self._settle()  # a publish waiting for room returns (closed) instead of waiting on
        await self.flush(0.0 if self._abandoned else grace_seconds)
        self._committer.cancel()
        await self._committer_done.wait()
        left = list(self._book)
        # What is left is accounted for below, no longer as pending.
        self.stats.pending -= self._pending_counted
        self._pending_counted = 0
        handing_over = self._handing_over or (self._fenced and self._hand_over_on_fence)
        if handing_over and left:
            self.stats.handed_over += len(left)
            logger.warning(
                "%d event(s) of %s not committed before the hand-over: its new owner "
                "detects them again from the committed state (event ids %s)",
                len(left),
                self.transactional_id,
                ", ".join(outgoing.event.event_id for outgoing in left[:10]),
            )
            return
        who = "the instance that fenced this one" if self._fenced else "a restart"
        for outgoing in left:
            event = outgoing.event
            logger.error(
                "event NOT committed to Kafka at shutdown: event_id=%s market %s (%s detects "
                "it again from the committed state)",
                event.event_id,
                event.market_id,
                who,
                extra={
                    "market_id": event.market_id,
                    "event_id": event.event_id,
                    "rule": event.rule,
                },
            )
        self.stats.unacknowledged_at_close += len(left)
        if left:
            logger.error("%d event(s) NOT committed at shutdown", len(left))


@asynccontextmanager
async def open_transactional_publisher(
    config: KafkaConfig,
    *,
    producer_factory: Callable[[dict[str, object]], TransactionalProducer] = (
        confluent_kafka.Producer
    ),
    clock: Callable[[], datetime] = now_utc,
    grace_seconds: float = 10.0,
    statistics_interval_ms: int = 5000,
    monotonic: Callable[[], float] = time.monotonic,
    timeout_seconds: float = 10.0,
    backoff_seconds: tuple[float, float] = (0.5, 30.0),
    start: bool = True,
    stats: DeliveryStats | None = None,
) -> AsyncIterator[TransactionalPublisher]:
    """Open a `TransactionalPublisher`: its producer is initialised (`start`, retried until
    Kafka answers) before this yields -- or, with `start=False`, when the caller calls
    `start` or at the first commit -- then its committer runs until the caller is done. On
    exit -- also on error or cancellation -- what is left gets at most `grace_seconds` to be
    committed (shielded); events still uncommitted are logged at ERROR. Fenced, the
    committer raises `ProducerFencedError`, which ends the caller's block."""
    publisher = TransactionalPublisher(
        config,
        producer_factory=producer_factory,
        clock=clock,
        monotonic=monotonic,
        statistics_interval_ms=statistics_interval_ms,
        timeout_seconds=timeout_seconds,
        backoff_seconds=backoff_seconds,
        stats=stats,
    )
    logger.info(
        "opening Kafka transactional producer %s for topics %s and %s: %s",
        publisher.transactional_id,
        publisher.topic,
        publisher.state_topic,
        redacted_producer_config(config),
    )
    if start:
        await publisher.start()
    caller_error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher._run_committer)
            try:
                yield publisher
            finally:
                with anyio.CancelScope(shield=True):
                    await publisher._close(grace_seconds)
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        caller_error = group.exceptions[0]
    finally:
        publisher._producer = None
        publisher._librdkafka_log.close()
    if caller_error is not None:
        raise caller_error
