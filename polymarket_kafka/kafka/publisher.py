"""Kafka delivery: an idempotent producer whose delivery reports come back into the event loop.

Why this file is over 400 lines: `KafkaPublisher` is one object whose methods share the
current producer, its generation and the swap lock; cutting it would spread that protocol
over several files. Everything that can stand alone already does: the decisions
(`ledger`), the counters and error classification (`delivery`), the statistics
(`statistics`), the outage bookkeeping (`connectivity`) and the poll thread (`poll_thread`).

Why it is shaped like this:

* confluent-kafka runs callbacks only inside the blocking `poll()`: one worker thread
  (`poll_thread.PollThread`) polls, the callbacks only queue records, and the thread hands
  them to the event loop. All bookkeeping -- pending events, retries, stats -- therefore
  happens on the event loop thread, without locks; only the poll thread closes producers.
* `produce()` is called on the event loop thread: it never blocks, it raises `BufferError`
  when librdkafka's local queue is full. `publish` then waits for a delivery report (at most
  50 ms) and tries again: a slow broker slows the caller down instead of dropping events.
* What is in flight, and what each delivery report calls for, is decided by the pure
  `ledger.DeliveryLedger`; this class only carries its actions out. An event is *pending*
  from `publish` until Kafka acknowledged it on the events topic or on the dead-letter topic
  (`KafkaConfig.full_dead_letter_topic`, the reason in headers), or the ledger gave up on
  it (logged at ERROR, counted, the latest kept in `failed`): never dropped silently.
* Bounded: `publish` waits while `KafkaConfig.max_in_flight` events are pending, so a broker
  that refuses everything slows the pipeline down (backpressure) instead of filling memory.
* Fast: an event is stamped and serialised once, without a copy (`value.stamped_value`);
  while nothing waits for the producer, a `publish` produces without taking the lock or
  yielding to the scheduler; the poll thread hands the delivery reports over in batches (one
  hand-off per `poll`) and waiting publishers are woken once per batch.
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
  (`delivery_backlog`: the age of the oldest pending event): `statistics`.
* A broker outage is logged as transitions, not as a stream of errors: connection errors from
  `error_cb`, the statistics and the delivery reports feed a pure `ConnectivityTracker`
  (`connectivity`): one WARNING when Kafka is unreachable (confirmed after two
  statistics intervals, at least 2 s), a WARNING reminder every `outage_reminder_seconds`
  (60 s) while it stays so, one INFO when it is back; each connection error is at DEBUG.
  librdkafka's own lines go through `librdkafka_log.LibrdkafkaLog` (its connection failures at
  DEBUG, repeats limited), which is closed once the poll thread has ended: nothing from the
  publisher or librdkafka is logged after `open_kafka_publisher` exits.
* Every duration (delivery latency, pending age, statistics age) is measured on one injected
  `monotonic` clock, read from the poll thread too: tests move it instead of waiting.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Literal

import anyio
import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, Message

from polymarket_kafka.clock import now_utc
from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.detector_state import StateRecord
from polymarket_kafka.kafka.connectivity import (
    CameBack,
    ConnectivityTracker,
    RepeatLimiter,
    Transition,
)
from polymarket_kafka.kafka.delivery import (
    DeliveryStats,
    FailedDelivery,
    classify,
    dead_letter_headers,
    log_event,
    needs_new_producer,
)
from polymarket_kafka.kafka.ledger import (
    Acknowledged,
    Action,
    DeadLettered,
    DeliveryLedger,
    Entry,
    GaveUp,
    Outcome,
    ReplaceProducer,
    Retry,
    SendToDeadLetter,
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
from polymarket_kafka.kafka.value import event_headers, stamped_value
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
# least `_MIN_CONFIRM_SECONDS`): a reconnection blip is not an outage (`connectivity`).
_CONFIRM_INTERVALS = 2
_MIN_CONFIRM_SECONDS = 2.0
#: How many given-up events `KafkaPublisher.failed` keeps (the latest; all are counted).
MAX_FAILED_KEPT = 1000
_Outcome = Literal["accepted", "rejected", "full", "broken"]


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
        #: The latest events given up on (at most `MAX_FAILED_KEPT`; `stats.failed` counts all).
        self.failed: deque[FailedDelivery] = deque(maxlen=MAX_FAILED_KEPT)
        self.topic = config.full_topic
        self.dead_letter_topic = config.full_dead_letter_topic
        self._ledger = DeliveryLedger(
            max_in_flight=config.max_in_flight,
            max_attempts=max_attempts,
            backoff_seconds=retry_backoff_seconds,
            max_backoff_seconds=max_backoff_seconds,
            dead_letter=bool(self.dead_letter_topic),
        )
        self._conf = producer_config(config)
        self._factory = producer_factory
        self._clock = clock
        self._backoff = retry_backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._tokens = itertools.count()
        self._generation = 0
        self._producer: ProducerLike | None = None
        self._thread = PollThread(self._drain_reports)
        self._reports = self._thread.reports  # appended to by the callbacks (poll thread)
        self._replace_reason: str | None = None
        self._swap = anyio.Lock()  # held while producing slowly, and while replacing
        self._settled = anyio.Event()  # set (and renewed) whenever events leave pending
        self._wake = anyio.Event()  # wakes the maintenance task
        self._maintenance = anyio.CancelScope(shield=True)
        self._closed = False

    async def publish(self, event: PolymarketEvent, state: StateRecord | None = None) -> None:
        """Stamp `published_at` and hand the event to librdkafka; wait while `max_in_flight`
        events are pending, or while librdkafka's queue is full.

        At least once, detector state is written by checkpoints only: `state` must be None
        (`ValueError` otherwise; `transactional.TransactionalPublisher` takes it).

        Returns once librdkafka accepted the message; delivery is tracked from then on. An
        event librdkafka rejects outright (e.g. larger than `message.max.bytes`) goes to the
        dead-letter topic. A publish cancelled before the event was accepted is logged at
        ERROR and added to `failed`.
        """
        if state is not None:
            raise ValueError("an at-least-once publisher does not commit state with events")
        # No checkpoint on the fast path (it costs as much as the produce): the caller's loop
        # yields on its own channel; a wait below is where cancellation is delivered.
        try:
            while not self._ledger.has_room() and not self._closed:
                self.stats.in_flight_waits += 1
                await self._settled.wait()
        except anyio.get_cancelled_exc_class():
            # Handed to us, never accepted: counted and named like any event given up.
            self.stats.published += 1
            reason = "publish cancelled while waiting for room (KAFKA_MAX_IN_FLIGHT)"
            entry = Entry(-1, event, b"", self._monotonic())
            self._execute([GaveUp(entry, reason)])
            raise
        if self._closed:
            raise RuntimeError("the Kafka publisher is closed")
        value = stamped_value(event, self._clock())  # serialised once, without a copy
        entry = self._ledger.add(event, value, self._monotonic())
        self.stats.published += 1
        self.stats.pending = len(self._ledger)
        try:
            # Fast path: nobody is waiting for the producer, so producing now keeps the order.
            if self._replace_reason is None and not self._swap.locked():
                outcome = self._try_produce(entry)
                if outcome in ("accepted", "rejected"):
                    return
                if outcome == "full":  # counted with the refusal, then the slow path
                    self.stats.buffer_full_waits += 1
                    await self._wait_for_progress()
            while True:
                # The lock is fair: under backpressure, publishers go on in arrival order.
                async with self._swap:
                    if await self._produce_locked(entry):
                        return
                await self._wait_for_progress()  # for the producer's replacement
        finally:
            if entry.token is None and entry.dead_letter is None and entry in self._ledger:
                reason = "publish interrupted (cancelled?) before Kafka accepted it"
                self._execute(self._ledger.give_up(entry, reason))

    async def flush(self, timeout: float) -> int:  # noqa: ASYNC109 (a budget, not an I/O timeout)
        """Wait until every pending event is acknowledged, at most `timeout` seconds.

        Returns how many events are still pending (0: everything is in Kafka).
        """
        with anyio.move_on_after(timeout):
            while len(self._ledger):
                await self._settled.wait()
        return len(self._ledger)

    def pending_events(self) -> list[PolymarketEvent]:
        """The events not acknowledged yet, in publish order, as they were handed to `publish`
        (`published_at` is in their Kafka value only)."""
        return [entry.event for entry in self._ledger]

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
        oldest = self._ledger.oldest()
        if oldest is None:
            return DeliveryBacklog(0)
        age = max(0.0, self._monotonic() - oldest.published_at)
        return DeliveryBacklog(len(self._ledger), age)

    @property
    def delivery_timeout_seconds(self) -> float:
        """librdkafka's `delivery.timeout.ms`, in seconds: the readiness bound on pending age."""
        return DELIVERY_TIMEOUT_MS / 1000

    # --- producing (event loop thread) ----------------------------------------------------

    def _try_produce(self, entry: Entry) -> _Outcome:
        producer = self._producer
        if producer is None:
            return "broken"
        token = next(self._tokens)
        headers = event_headers(entry.event)
        if entry.dead_letter is not None:
            headers += dead_letter_headers(self.topic, entry)
        try:
            producer.produce(
                self.topic if entry.dead_letter is None else self.dead_letter_topic,
                value=entry.value,
                key=entry.event.kafka_key,
                headers=headers,
                on_delivery=functools.partial(
                    self._on_delivery, entry.seq, token, self._generation
                ),
            )
        except BufferError:
            return "full"
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            if needs_new_producer(error):
                self._request_new_producer(self._generation, f"produce failed: {error}")
                return "broken"
            self._execute(self._ledger.rejected(entry, str(error)))
            return "rejected"
        if self._ledger.sent(entry, token):
            self.stats.retried += 1
        return "accepted"

    async def _produce_locked(self, entry: Entry) -> bool:
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

    def _execute(self, actions: list[Action]) -> None:
        """Carry out what the ledger decided (event loop thread, no waiting)."""
        settled = False
        for action in actions:
            if isinstance(action, Acknowledged):
                self.stats.delivered += 1
                self.stats.delivery_latency.observe(action.latency)
                settled = True
            elif isinstance(action, DeadLettered):
                self.stats.dead_lettered += 1
                entry = action.entry
                message = (
                    f"event NOT delivered to {self.topic}, written to {self.dead_letter_topic}"
                )
                log_event(
                    logging.ERROR, message, entry, entry.dead_letter or "", entry.topic_attempts
                )
                settled = True
            elif isinstance(action, GaveUp):
                self.stats.failed += 1
                entry = action.entry
                self.failed.append(FailedDelivery(_as_sent(entry), action.reason, entry.attempts))
                message = f"event NOT delivered to {self.topic}"
                log_event(logging.ERROR, message, entry, action.reason, entry.attempts)
                settled = True
            elif isinstance(action, Retry):
                entry, suffix = action.entry, f"; retrying in {action.delay:.2f}s"
                log_event(
                    logging.WARNING, "delivery failed", entry, action.reason, entry.attempts, suffix
                )
                self._wake.set()
            elif isinstance(action, SendToDeadLetter):
                entry = action.entry
                message = f"refused for good, routing to {self.dead_letter_topic}"
                log_event(
                    logging.WARNING, message, entry, entry.dead_letter or "", entry.topic_attempts
                )
                if self._try_produce(entry) in ("full", "broken"):
                    self._execute([self._ledger.retry_later(entry, "queue full", self._now())])
            elif isinstance(action, ReplaceProducer):
                self._request_new_producer(action.generation, action.reason)
        if settled:
            self._settle()

    def _now(self) -> float:
        return anyio.current_time()

    def _settle(self) -> None:
        self.stats.pending = len(self._ledger)
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
        now, loop_now = self._monotonic(), self._now()  # once per batch, not per report
        actions: list[Action] = []
        delivery_noted = False  # the connectivity tracker hears of deliveries once per run
        while self._reports:
            report = self._reports.popleft()
            if isinstance(report, StatisticsReport):
                delivery_noted = False
                if self._statistics.accept(report, self._generation):  # not a retired producer's
                    self.stats.brokers_up = up = report.statistics.brokers_up
                    total = report.statistics.brokers_total
                    self._log_transition(self._connectivity.statistics(up, total, now))
            elif isinstance(report, ClientErrorReport):
                delivery_noted = False
                self._handle_client_error(report, now)
            else:
                error = report.error
                if error is None and not delivery_noted:
                    # Whichever copy, and whether or not still pending: Kafka acknowledged it.
                    self._log_transition(self._connectivity.delivered(now))
                    delivery_noted = True
                failure = None if error is None else classify(error)
                outcome = Outcome(
                    report.seq, report.token, report.generation, failure, str(error), report.at
                )
                actions += self._ledger.on_outcome(outcome, self._generation, loop_now)
        self._execute(actions)  # waiting publishers are woken once per batch
        self._log_transition(self._connectivity.tick(now, len(self._ledger)))

    def _handle_client_error(self, report: ClientErrorReport, now: float) -> None:
        error = report.error
        if needs_new_producer(error):
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
                due = self._ledger.next_due()
                delay = None if due is None else due - anyio.current_time()
                if delay is not None and delay <= 0:
                    await self._resend_due()
                    continue
                with anyio.move_on_after(delay):
                    await self._wake.wait()

    async def _resend_due(self) -> None:
        async with self._swap:
            for entry in self._ledger.pop_due(anyio.current_time()):
                if entry in self._ledger and not await self._produce_locked(entry):
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
            self.stats.producer_recreated += 1
            unacked = self._ledger.after_replacement()
            logger.warning(
                "Kafka producer recreated (%s); re-sending %d unacknowledged event(s)",
                reason,
                len(unacked),
            )
            for entry in unacked:
                if entry in self._ledger and not await self._produce_locked(entry):
                    return  # broken again: the next replacement re-sends the rest

    async def _close(self, grace_seconds: float) -> None:
        """Flush for at most `grace_seconds`, name what is left at ERROR, stop the threads."""
        self._closed = True
        await self.flush(grace_seconds)
        for entry in self._ledger:
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
        self.stats.unacknowledged_at_close = len(self._ledger)
        if len(self._ledger):
            logger.error("%d event(s) NOT acknowledged at shutdown", len(self._ledger))
        self._maintenance.cancel()
        self._set_producer(None)
        self._thread.stop()


def _as_sent(entry: Entry) -> PolymarketEvent:
    """The event as its Kafka value has it (with `published_at`), for `failed`: read back
    from the bytes on this rare path, so the common one never copies the event."""
    if not entry.value:  # never serialised: given up before it was accepted
        return entry.event
    return PolymarketEvent.model_validate_json(entry.value)


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
    and once at INFO when Kafka is back (`connectivity`). Once this exits, neither the
    publisher nor librdkafka logs anything more.
    """
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
