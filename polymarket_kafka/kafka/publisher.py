"""Kafka delivery: an idempotent producer whose delivery reports come back into the event loop.

Why it is shaped like this:

* confluent-kafka runs callbacks only inside the blocking `poll()`: one worker thread
  (`kafka_thread.PollThread`) polls, the callbacks only queue records, and the thread hands
  them to the event loop. All bookkeeping -- pending events, retries, stats -- therefore
  happens on the event loop thread, without locks; only the poll thread closes producers.
* `produce()` is called on the event loop thread: it never blocks, it raises `BufferError`
  when librdkafka's local queue is full. `publish` then waits for a delivery report (at most
  50 ms) and tries again: a slow broker slows the caller down instead of dropping events.
* An event is *pending* from `publish` until a successful delivery report. A failed report is
  retried with backoff (same event_id: consumers deduplicate). With `max_attempts`, an event
  that keeps failing is logged at ERROR and kept in `failed` -- never dropped silently.
* An idempotent producer can get stuck for good: after a fatal error, or when the broker lost
  its producer state (UNKNOWN_PRODUCER_ID). A Tansu restart with memory storage does exactly
  that: librdkafka bumps its epoch in a loop and every message times out. Retrying on the
  same producer never succeeds, so on a fatal error or a message timeout (librdkafka has then
  already retried for `delivery.timeout.ms`) the publisher purges and closes the producer,
  builds a new one (new producer id) and re-sends every unacknowledged event in publish order.
* Connectivity (`broker_status`, for readiness) is judged from librdkafka's statistics, which
  it emits every `statistics_interval_ms` from the poll thread. They take the same road as
  delivery reports (parsed in the callback, handed over through the deque), so the latest
  statistics are event loop state too. How they are judged, and what else readiness looks at
  (`delivery_backlog`: the age of the oldest pending event): `kafka_health`.
* A broker outage is logged as transitions, not as a stream of errors: connection errors from
  `error_cb`, the statistics and the delivery reports feed a pure `ConnectivityTracker`
  (`kafka_connectivity`): one WARNING when Kafka is unreachable (confirmed after two
  statistics intervals, at least 2 s), a WARNING reminder every `outage_reminder_seconds`
  (60 s) while it stays so, one INFO when it is back; each connection error is at DEBUG.
  librdkafka's own lines go through `kafka_log.LibrdkafkaLog` (its connection failures at
  DEBUG, repeats limited), which is closed once the poll thread has ended: nothing from the
  publisher or librdkafka is logged after `open_kafka_publisher` exits.
* Every duration (delivery latency, pending age, statistics age) is measured on one injected
  `monotonic` clock, read from the poll thread too: tests move it instead of waiting.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import anyio
import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, Message

from polymarket_kafka.clock import now_utc
from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.histogram import Histogram
from polymarket_kafka.kafka.connectivity import (
    CameBack,
    ConnectivityTracker,
    RepeatLimiter,
    Transition,
)
from polymarket_kafka.kafka.librdkafka_log import LibrdkafkaLog
from polymarket_kafka.kafka.poll_thread import ClientErrorReport, DeliveryReport, PollThread
from polymarket_kafka.kafka.settings import (
    DELIVERY_TIMEOUT_MS,
    ProducerLike,
    producer_config,
    redacted_producer_config,
)
from polymarket_kafka.kafka.statistics import (
    BrokerStatus,
    DeliveryBacklog,
    StatisticsBridge,
    StatisticsReport,
)
from polymarket_kafka.models import PolymarketEvent

__all__ = [
    "BrokerStatus",
    "DeliveryBacklog",
    "DeliveryStats",
    "FailedDelivery",
    "KafkaPublisher",
    "ProducerLike",
    "open_kafka_publisher",
    "producer_config",
    "redacted_producer_config",
]

logger = logging.getLogger(__name__)
_librdkafka_logger = logging.getLogger(f"{__name__}.librdkafka")

_ROOM_WAIT_SECONDS = 0.05
# An outage is confirmed after this many statistics intervals without a broker back (and at
# least `_MIN_CONFIRM_SECONDS`): a reconnection blip is not an outage (`kafka_connectivity`).
_CONFIRM_INTERVALS = 2
_MIN_CONFIRM_SECONDS = 2.0
# Errors after which the producer itself is unusable (see the module docstring).
_NEW_PRODUCER_CODES = frozenset(
    {
        KafkaError._FATAL,
        KafkaError._MSG_TIMED_OUT,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        KafkaError.PRODUCER_FENCED,
    }
)


@dataclass
class DeliveryStats:
    """Plain counters of the publisher (`metrics` exports them at scrape time)."""

    published: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    producer_recreated: int = 0
    buffer_full_waits: int = 0
    pending: int = 0
    #: From `publish` to the successful delivery report (count, sum and buckets).
    delivery_latency: Histogram = field(default_factory=Histogram)
    #: Brokers `UP` in the latest statistics of the current producer (0 before any).
    brokers_up: int = 0
    #: Confirmed Kafka outages (each logged once at WARNING).
    outages: int = 0
    #: Events still pending when the publisher closed (logged at ERROR, maybe not in Kafka).
    unacknowledged_at_close: int = 0

    @property
    def unacknowledged(self) -> int:
        """Events handed to the publisher that Kafka never acknowledged: given up, or still
        pending at close. Final once the publisher has closed."""
        return self.failed + self.unacknowledged_at_close


@dataclass(frozen=True)
class FailedDelivery:
    """An event the publisher gave up on: it was logged at ERROR and is NOT in Kafka."""

    event: PolymarketEvent
    reason: str
    attempts: int


@dataclass(eq=False)
class _Pending:
    seq: int
    event: PolymarketEvent
    value: bytes
    published_monotonic: float
    attempts: int = 0
    #: Id of the latest `produce()` of this event; None until librdkafka accepted it once.
    token: int | None = None


_Outcome = Literal["accepted", "rejected", "full", "broken"]


def _needs_new_producer(error: object) -> bool:
    return isinstance(error, KafkaError) and bool(
        error.fatal() or error.code() in _NEW_PRODUCER_CODES
    )


class KafkaPublisher:
    """Publishes `PolymarketEvent`s to one topic, at least once. Open with `open_kafka_publisher`.

    `stats` and `failed` are plain data, read them at any time on the event loop thread.
    """

    def __init__(
        self,
        config: KafkaConfig,
        *,
        producer_factory: Callable[[dict[str, object]], ProducerLike],
        clock: Callable[[], datetime],
        max_attempts: int | None,
        retry_backoff_seconds: float,
        max_backoff_seconds: float,
        statistics_interval_ms: int = 5000,
        monotonic: Callable[[], float] = time.monotonic,
        outage_reminder_seconds: float = 60.0,
    ) -> None:
        self._statistics = StatisticsBridge(statistics_interval_ms, monotonic=monotonic)
        self._connectivity = ConnectivityTracker(
            config.bootstrap_servers,
            confirm_seconds=max(
                _CONFIRM_INTERVALS * statistics_interval_ms / 1000, _MIN_CONFIRM_SECONDS
            ),
            reminder_seconds=outage_reminder_seconds,
        )
        self._client_error_repeats = RepeatLimiter(outage_reminder_seconds)
        self._librdkafka_log = LibrdkafkaLog(
            _librdkafka_logger, window=outage_reminder_seconds, monotonic=monotonic
        )
        self._monotonic = monotonic
        self.stats = DeliveryStats()
        self.failed: list[FailedDelivery] = []
        self.topic = config.full_topic
        self._conf = producer_config(config)
        self._factory = producer_factory
        self._clock = clock
        self._max_attempts = max_attempts
        self._backoff = retry_backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._pending: dict[int, _Pending] = {}  # insertion order = publish order
        self._seqs = itertools.count()
        self._tokens = itertools.count()
        self._generation = 0
        self._producer: ProducerLike | None = None
        self._thread = PollThread(self._drain_reports)
        self._reports = self._thread.reports  # appended to by the callbacks (poll thread)
        self._retries: list[tuple[float, int, int]] = []  # heap of (due, seq, token)
        self._replace_reason: str | None = None
        self._swap = anyio.Lock()  # held while producing, and while replacing the producer
        self._settled = anyio.Event()  # set (and renewed) whenever an event leaves pending
        self._wake = anyio.Event()  # wakes the maintenance task
        self._maintenance = anyio.CancelScope(shield=True)
        self._closed = False

    async def publish(self, event: PolymarketEvent) -> None:
        """Stamp `published_at` and hand the event to librdkafka; wait while its queue is full.

        Returns once librdkafka accepted the message; delivery is tracked from then on. An
        event librdkafka rejects outright (e.g. larger than `message.max.bytes`), or whose
        publish is cancelled before it was accepted, is logged at ERROR and added to `failed`.
        """
        if self._closed:
            raise RuntimeError("the Kafka publisher is closed")
        stamped = event.model_copy(update={"published_at": self._clock()})
        entry = _Pending(next(self._seqs), stamped, stamped.to_kafka_value(), self._monotonic())
        self._pending[entry.seq] = entry
        self.stats.published += 1
        self.stats.pending = len(self._pending)
        try:
            while True:
                # The lock is fair: under backpressure, publishers go on in arrival order.
                async with self._swap:
                    if await self._produce_locked(entry):
                        return
                await self._wait_for_progress()  # for the producer's replacement
        finally:
            if entry.token is None and entry.seq in self._pending:
                self._give_up(entry, "publish interrupted (cancelled?) before Kafka accepted it")

    async def flush(self, timeout: float) -> int:  # noqa: ASYNC109 (a budget, not an I/O timeout)
        """Wait until every pending event is acknowledged, at most `timeout` seconds.

        Returns how many events are still pending (0: everything is in Kafka).
        """
        with anyio.move_on_after(timeout):
            while self._pending:
                await self._settled.wait()
        return len(self._pending)

    def pending_events(self) -> list[PolymarketEvent]:
        """The events not acknowledged yet, in publish order."""
        return [entry.event for entry in self._pending.values()]

    def broker_status(self) -> BrokerStatus:
        """Whether the current producer reaches Kafka, from its latest statistics (no I/O).

        Not connected before the first statistics of the current producer (a replaced
        producer starts over), when no broker is `UP`, when the idempotent producer has no
        producer id, or when the statistics are older than 3 intervals (at least 1 s): the
        poll thread is not serving callbacks any more. Call it on the event loop thread.
        """
        if self._closed:
            return BrokerStatus(False, "the Kafka publisher is closed")
        return self._statistics.status()

    def delivery_backlog(self) -> DeliveryBacklog:
        """How many events are pending, and for how long the oldest has been (no I/O)."""
        oldest = next(iter(self._pending.values()), None)
        if oldest is None:
            return DeliveryBacklog(0)
        age = max(0.0, self._monotonic() - oldest.published_monotonic)
        return DeliveryBacklog(len(self._pending), age)

    @property
    def delivery_timeout_seconds(self) -> float:
        """librdkafka's `delivery.timeout.ms`, in seconds: the readiness bound on pending age."""
        return DELIVERY_TIMEOUT_MS / 1000

    # --- producing (event loop thread) ----------------------------------------------------

    def _try_produce(self, entry: _Pending) -> _Outcome:
        producer = self._producer
        if producer is None:
            return "broken"
        token = next(self._tokens)
        try:
            producer.produce(
                self.topic,
                value=entry.value,
                key=entry.event.kafka_key,
                headers=[
                    ("event_id", entry.event.event_id.encode()),
                    ("content-type", b"application/json"),
                ],
                on_delivery=functools.partial(
                    self._on_delivery, entry.seq, token, self._generation
                ),
            )
        except BufferError:
            return "full"
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            if _needs_new_producer(error):
                self._request_new_producer(self._generation, f"produce failed: {error}")
                return "broken"
            entry.attempts += 1
            self._give_up(entry, f"rejected by the producer: {error}")
            return "rejected"
        if entry.token is not None:
            self.stats.retried += 1
        entry.token = token
        entry.attempts += 1
        return "accepted"

    async def _produce_locked(self, entry: _Pending) -> bool:
        """Produce `entry`, waiting while the queue is full (caller holds `_swap`).

        True once accepted or rejected; False if the producer must be replaced first.
        """
        while True:
            if self._replace_reason is not None:
                return False
            outcome = self._try_produce(entry)
            if outcome == "broken":
                return False
            if outcome != "full":
                return True
            self.stats.buffer_full_waits += 1
            await self._wait_for_progress()

    async def _wait_for_progress(self) -> None:
        with anyio.move_on_after(_ROOM_WAIT_SECONDS):
            await self._settled.wait()

    def _give_up(self, entry: _Pending, reason: str) -> None:
        del self._pending[entry.seq]
        self.stats.failed += 1
        self.failed.append(FailedDelivery(entry.event, reason, entry.attempts))
        logger.error(
            "event NOT delivered to %s: event_id=%s market %s after %d attempt(s): %s",
            self.topic,
            entry.event.event_id,
            entry.event.market_id,
            entry.attempts,
            reason,
            extra={
                "market_id": entry.event.market_id,
                "event_id": entry.event.event_id,
                "rule": entry.event.rule,
                "attempt": entry.attempts,
            },
        )
        self._settle()

    def _settle(self) -> None:
        self.stats.pending = len(self._pending)
        self._settled.set()
        self._settled = anyio.Event()

    # --- delivery reports -----------------------------------------------------------------

    def _on_delivery(
        self, seq: int, token: int, generation: int, error: KafkaError | None, _msg: Message
    ) -> None:
        # Runs inside poll() in the poll thread: only record, the event loop decides.
        self._reports.append(DeliveryReport(seq, token, generation, error, self._monotonic()))

    def _on_client_error(self, generation: int, error: KafkaError) -> None:
        self._reports.append(ClientErrorReport(generation, error))

    def _on_statistics(self, generation: int, text: str) -> None:
        # Poll thread again: parse (a few KB of JSON per interval) and hand over.
        try:
            report = self._statistics.receive(generation, text)
        except ValueError as exc:
            logger.warning("unreadable librdkafka statistics ignored: %s", exc)
            return
        self._reports.append(report)

    def _drain_reports(self) -> None:
        now = self._monotonic()
        while self._reports:
            report = self._reports.popleft()
            if isinstance(report, StatisticsReport):
                if self._statistics.accept(report, self._generation):  # not a retired producer's
                    self.stats.brokers_up = up = report.statistics.brokers_up
                    total = report.statistics.brokers_total
                    self._log_transition(self._connectivity.statistics(up, total, now))
            elif isinstance(report, ClientErrorReport):
                self._handle_client_error(report, now)
            else:
                self._handle_delivery(report, now)
        self._log_transition(self._connectivity.tick(now, len(self._pending)))

    def _handle_client_error(self, report: ClientErrorReport, now: float) -> None:
        error = report.error
        if _needs_new_producer(error):
            self._request_new_producer(report.generation, f"client error: {error}")
        elif report.generation != self._generation:
            logger.debug("Kafka client error of a retired producer: %s", error)
        elif self._connectivity.connection_error(error.name(), error.str(), now):
            logger.debug("Kafka connection error: %s", error)
        else:
            left_out = self._client_error_repeats.allow(error.code(), now)
            if left_out is None:
                logger.debug("Kafka client error (repeated): %s", error)
            elif left_out:
                logger.warning("Kafka client error: %s (%d more left out)", error, left_out)
            else:
                logger.warning("Kafka client error: %s", error)

    def _log_transition(self, transition: Transition | None) -> None:
        if transition is None:
            return
        if isinstance(transition, CameBack):
            logger.info("%s", transition.message())
        else:
            logger.warning("%s", transition.message())
        self.stats.outages = self._connectivity.outages

    def _handle_delivery(self, report: DeliveryReport, now: float) -> None:
        if report.error is None:
            # Whichever copy, and whether or not still pending: Kafka acknowledged it.
            self._log_transition(self._connectivity.delivered(now))
        entry = self._pending.get(report.seq)
        if entry is None:
            return  # settled already, e.g. an older copy was delivered first
        if report.error is None:
            # Any copy counts, even one from a retired producer: the event is in Kafka.
            del self._pending[report.seq]
            self.stats.delivered += 1
            self.stats.delivery_latency.observe(max(0.0, report.at - entry.published_monotonic))
            self._settle()
            return
        if report.token != entry.token or report.generation != self._generation:
            return  # a superseded copy failed (e.g. purged with its producer): not news
        reason = str(report.error)
        if self._max_attempts is not None and entry.attempts >= self._max_attempts:
            self._give_up(entry, reason)
        if _needs_new_producer(report.error):
            self._request_new_producer(report.generation, reason)
        elif entry.seq in self._pending:
            delay = min(self._backoff * 2 ** (entry.attempts - 1), self._max_backoff)
            logger.warning(
                "delivery of event_id=%s failed (attempt %d): %s; retrying in %.2fs",
                entry.event.event_id,
                entry.attempts,
                reason,
                delay,
                extra={
                    "market_id": entry.event.market_id,
                    "event_id": entry.event.event_id,
                    "rule": entry.event.rule,
                    "attempt": entry.attempts,
                },
            )
            heapq.heappush(self._retries, (anyio.current_time() + delay, entry.seq, report.token))
            self._wake.set()

    def _request_new_producer(self, generation: int, reason: str) -> None:
        if generation != self._generation or self._replace_reason is not None:
            return  # that producer is already replaced, or about to be
        logger.warning("Kafka producer unusable (%s): replacing it", reason)
        self._replace_reason = reason
        self._wake.set()

    # --- background work ------------------------------------------------------------------

    def _create_producer(self, generation: int) -> ProducerLike:
        conf = {
            **self._conf,
            "error_cb": functools.partial(self._on_client_error, generation),
            "statistics.interval.ms": self._statistics.interval_ms,
            "stats_cb": functools.partial(self._on_statistics, generation),
            "logger": self._librdkafka_log,
        }
        return self._factory(conf)

    def _set_producer(self, producer: ProducerLike | None) -> None:
        """Swap the current producer (the old one goes to the poll thread to be closed)."""
        self._producer = producer
        self._thread.serve(producer, self._generation)

    async def _maintain(self) -> None:
        """Replace a broken producer and re-send failed events when their backoff is over."""
        with self._maintenance:
            while True:
                self._wake = anyio.Event()
                if self._replace_reason is not None:
                    await self._replace_producer()
                    continue
                delay = self._retries[0][0] - anyio.current_time() if self._retries else None
                if delay is not None and delay <= 0:
                    await self._resend_due()
                    continue
                with anyio.move_on_after(delay):
                    await self._wake.wait()

    async def _resend_due(self) -> None:
        async with self._swap:
            now = anyio.current_time()
            while self._retries and self._retries[0][0] <= now:
                _, seq, token = heapq.heappop(self._retries)
                entry = self._pending.get(seq)
                if entry is None or entry.token != token:
                    continue  # settled, or re-sent by a producer replacement since
                if not await self._produce_locked(entry):
                    return  # the producer replacement re-sends it

    async def _replace_producer(self) -> None:
        async with self._swap:
            reason, self._replace_reason = self._replace_reason, None
            # Bumped first: from now on, every report of the old producer (its purge
            # included) is stale and cannot schedule a retry or another replacement.
            self._generation += 1
            self._set_producer(None)
            self._statistics.reset()  # the new producer must show it is connected
            self.stats.brokers_up = 0
            delay = self._backoff
            while True:
                try:
                    producer = await anyio.to_thread.run_sync(
                        self._create_producer, self._generation
                    )
                    break
                except Exception:
                    logger.exception("creating a Kafka producer failed; retrying in %.2fs", delay)
                    await anyio.sleep(delay)
                    delay = min(max(2 * delay, 0.1), self._max_backoff)
            self._set_producer(producer)
            self._retries.clear()
            self.stats.producer_recreated += 1
            unacked = [e for e in self._pending.values() if e.token is not None]
            logger.warning(
                "Kafka producer recreated (%s); re-sending %d unacknowledged event(s)",
                reason,
                len(unacked),
            )
            for entry in unacked:
                if entry.seq in self._pending and not await self._produce_locked(entry):
                    return  # broken again: the next replacement re-sends the rest

    async def _close(self, grace_seconds: float) -> None:
        """Flush for at most `grace_seconds`, name what is left at ERROR, stop the threads."""
        self._closed = True
        await self.flush(grace_seconds)
        for entry in self._pending.values():
            logger.error(
                "event NOT acknowledged by Kafka at shutdown, it may be lost: event_id=%s "
                "market %s (%d attempt(s))",
                entry.event.event_id,
                entry.event.market_id,
                entry.attempts,
                extra={
                    "market_id": entry.event.market_id,
                    "event_id": entry.event.event_id,
                    "rule": entry.event.rule,
                    "attempt": entry.attempts,
                },
            )
        self.stats.unacknowledged_at_close = len(self._pending)
        if self._pending:
            logger.error("%d event(s) NOT acknowledged at shutdown", len(self._pending))
        self._maintenance.cancel()
        self._set_producer(None)
        self._thread.stop()


@asynccontextmanager
async def open_kafka_publisher(
    config: KafkaConfig,
    *,
    producer_factory: Callable[[dict[str, object]], ProducerLike] = confluent_kafka.Producer,
    clock: Callable[[], datetime] = now_utc,
    grace_seconds: float = 10.0,
    max_attempts: int | None = None,
    retry_backoff_seconds: float = 0.5,
    max_backoff_seconds: float = 30.0,
    statistics_interval_ms: int = 5000,
    monotonic: Callable[[], float] = time.monotonic,
    outage_reminder_seconds: float = 60.0,
) -> AsyncIterator[KafkaPublisher]:
    """Open a `KafkaPublisher` on `config.full_topic`, with its poll thread and retry task.

    `max_attempts=None` retries a failing event forever; otherwise it is given up (ERROR log,
    `failed`) after that many produce attempts. On exit -- also on error or cancellation --
    pending events are flushed under a shielded scope for at most `grace_seconds`; those
    still unacknowledged are logged at ERROR by event_id, then the producer is closed.
    librdkafka reports statistics every `statistics_interval_ms` (>= 1): they drive
    `KafkaPublisher.broker_status` and `DeliveryStats.brokers_up`. `monotonic` (called from
    the poll thread too) times delivery latency, pending age and statistics age.

    A broker outage is logged once at WARNING when confirmed (no broker back within two
    statistics intervals, at least 2 s), then every `outage_reminder_seconds` while it lasts,
    and once at INFO when Kafka is back (`kafka_connectivity`). Once this exits, neither the
    publisher nor librdkafka logs anything more.
    """
    if max_attempts is not None and max_attempts < 1:
        raise ValueError("max_attempts must be >= 1 or None")
    publisher = KafkaPublisher(
        config,
        producer_factory=producer_factory,
        clock=clock,
        max_attempts=max_attempts,
        retry_backoff_seconds=retry_backoff_seconds,
        max_backoff_seconds=max_backoff_seconds,
        statistics_interval_ms=statistics_interval_ms,
        monotonic=monotonic,
        outage_reminder_seconds=outage_reminder_seconds,
    )
    logger.info(
        "opening Kafka producer for topic %s: %s", publisher.topic, redacted_producer_config(config)
    )
    publisher._set_producer(await anyio.to_thread.run_sync(publisher._create_producer, 0))
    caller_error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher._thread.run)
            tg.start_soon(publisher._maintain)
            try:
                yield publisher
            finally:
                with anyio.CancelScope(shield=True):
                    await publisher._close(grace_seconds)
    except BaseExceptionGroup as group:
        # Our tasks do not raise, so a lone exception is the caller's own: give it back
        # unwrapped (raised outside this block, so its own context chain stays intact).
        if len(group.exceptions) != 1:
            raise
        caller_error = group.exceptions[0]
    finally:
        # The poll thread has ended (the task group waited for it): from now on a librdkafka
        # line can only come from a producer destroyed late, after the caller moved on.
        publisher._librdkafka_log.close()
    if caller_error is not None:
        raise caller_error
