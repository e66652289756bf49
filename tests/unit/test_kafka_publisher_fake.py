"""The publisher against a fake librdkafka producer that the test controls.

The fake sits at the boundary (produce / poll / purge / flush / close, called from the
publisher's event loop and poll thread); assertions are on what crossed it. Nothing here
asserts on timing: tests wait (bounded) for a state, never for a duration.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from confluent_kafka import KafkaError, KafkaException

from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.kafka.publisher import FailedDelivery, KafkaPublisher, open_kafka_publisher
from polymarket_kafka.models import PolymarketEvent
from tests import factories

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 11, 6, 1, 0, tzinfo=UTC)
PUBLISHED_AT = datetime(2024, 11, 6, 1, 0, 5, tzinfo=UTC)
CONFIG = KafkaConfig(bootstrap_servers="fake:9092", topic="polymarket-events", topic_prefix="t.")
NAMESPACE = uuid.UUID("0b5a3e8e-60a3-4c6f-9d47-0a1f3f4b7c11")


def make_event(n: int) -> PolymarketEvent:
    return factories.make_event(
        event_id=str(uuid.uuid5(NAMESPACE, str(n))),
        market_id=f"0x{n:064x}",
        question=f"Question {n}?",
        yes_price=0.7,
        no_price=0.3,
        baseline_yes_price=0.6,
        baseline_timestamp=T0 - timedelta(minutes=10),
        price_change=0.1,
        abs_price_change=0.1,
        log_odds_change=0.44,
        window_seconds=600,
    )


EVENTS = [make_event(n) for n in range(6)]


def ids(events: list[PolymarketEvent]) -> list[str]:
    return [e.event_id for e in events]


@dataclass
class Sent:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, Any]]
    on_delivery: Callable[[KafkaError | None, Any], None]

    @property
    def event_id(self) -> str:
        value = dict(self.headers)["event_id"]
        assert isinstance(value, bytes)
        return value.decode()


Outcome = Callable[[Sent], KafkaError | None]


@dataclass(eq=False)
class FakeProducer:
    """A bounded local queue; `poll` reports on everything queued unless `hold` is set."""

    conf: dict[str, Any]
    capacity: int = 1000
    hold: bool = False
    outcome: Outcome = lambda sent: None
    produce_error: Exception | None = None
    produced: list[Sent] = field(default_factory=list)
    delivered: list[Sent] = field(default_factory=list)
    buffer_errors: int = 0
    purged: bool = False
    closed: bool = False
    _queue: list[Sent] = field(default_factory=list)
    _client_errors: list[KafkaError] = field(default_factory=list)
    _raise_from_poll: KafkaError | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def produce(self, topic: str, **kw: Any) -> None:
        with self._cond:
            assert not self.closed, "produce() on a closed producer"
            if self.produce_error is not None:
                raise self.produce_error
            if len(self._queue) >= self.capacity:
                self.buffer_errors += 1
                raise BufferError("Local: Queue full")
            sent = Sent(topic, kw["key"], kw["value"], kw["headers"], kw["on_delivery"])
            self._queue.append(sent)
            self.produced.append(sent)
            self._cond.notify_all()

    def poll(self, timeout: float) -> int:
        assert not self.closed, "poll() on a closed producer"
        with self._cond:
            if self.hold or not self._queue:
                self._cond.wait(timeout)
            errors, self._client_errors = self._client_errors, []
            raised, self._raise_from_poll = self._raise_from_poll, None
            batch, self._queue = ([], self._queue) if self.hold else (self._queue, [])
        for error in errors:
            self.conf["error_cb"](error)
        if raised is not None:
            raise KafkaException(raised)  # what confluent-kafka does with a fatal error
        for sent in batch:
            result = self.outcome(sent)
            if result is None:
                self.delivered.append(sent)
            sent.on_delivery(result, None)
        return len(errors) + len(batch)

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        with self._cond:
            batch, self._queue, self.purged = self._queue, [], True
        for sent in batch:
            sent.on_delivery(KafkaError(KafkaError._PURGE_QUEUE), None)

    def flush(self, timeout: float) -> int:
        return 0

    def close(self) -> bool:
        self.closed = True
        return True

    # --- test controls (any thread) -------------------------------------------------------
    def release(self) -> None:
        with self._cond:
            self.hold = False
            self._cond.notify_all()

    def emit_client_error(self, error: KafkaError, *, from_poll: bool = False) -> None:
        with self._cond:
            if from_poll:
                self._raise_from_poll = error
            else:
                self._client_errors.append(error)
            self._cond.notify_all()


class Factory:
    """Builds FakeProducers: the n-th one with `settings[n]` (default settings after that)."""

    def __init__(self, *settings: dict[str, Any], failures: int = 0) -> None:
        self.settings = list(settings)
        self.producers: list[FakeProducer] = []
        self.failures = failures  # creations to fail after the first producer

    def __call__(self, conf: dict[str, Any]) -> FakeProducer:
        if self.producers and self.failures > 0:
            self.failures -= 1
            raise KafkaException(KafkaError(KafkaError._INVALID_ARG, "cannot create"))
        index = len(self.producers)
        kwargs = self.settings[index] if index < len(self.settings) else {}
        producer = FakeProducer(conf, **kwargs)
        self.producers.append(producer)
        return producer


def publisher_for(factory: Factory, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"clock": lambda: PUBLISHED_AT, "retry_backoff_seconds": 0.0}
    return open_kafka_publisher(CONFIG, producer_factory=factory, **(options | kwargs))


async def wait_until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not predicate():  # noqa: ASYNC110 (set by another thread: nothing to await)
            await anyio.sleep(0.001)


def sent_ids(sent: list[Sent]) -> list[str]:
    return [s.event_id for s in sent]


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="polymarket_kafka")


def errors_logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


async def test_publish_stamps_the_clock_and_produces_key_value_headers(
    anyio_backend: str,
) -> None:
    factory = Factory()
    async with publisher_for(factory) as publisher:
        for event in EVENTS[:3]:
            await publisher.publish(event)
        assert await publisher.flush(5) == 0
    (producer,) = factory.producers
    assert sent_ids(producer.delivered) == ids(EVENTS[:3])
    for sent, event in zip(producer.delivered, EVENTS, strict=False):
        assert sent.topic == "t.polymarket-events"
        assert sent.key == event.market_id.encode()
        assert dict(sent.headers)["content-type"] == b"application/json"
        stamped = PolymarketEvent.model_validate_json(sent.value)
        assert stamped == event.model_copy(update={"published_at": PUBLISHED_AT})
    assert EVENTS[0].published_at is None  # the caller's event is untouched
    stats = publisher.stats
    assert (stats.published, stats.delivered, stats.pending, stats.failed) == (3, 3, 0, 0)
    assert stats.retried == stats.producer_recreated == stats.buffer_full_waits == 0
    assert stats.delivery_latency.count == 3
    assert producer.purged and producer.closed
    with pytest.raises(RuntimeError, match="closed"):
        await publisher.publish(EVENTS[3])


async def test_full_queue_applies_backpressure_and_loses_nothing(anyio_backend: str) -> None:
    factory = Factory({"capacity": 2, "hold": True})
    async with publisher_for(factory) as publisher, anyio.create_task_group() as tg:
        await publisher.publish(EVENTS[0])
        await publisher.publish(EVENTS[1])
        producer = factory.producers[0]

        async def publish_rest() -> None:
            for event in EVENTS[2:]:
                await publisher.publish(event)

        tg.start_soon(publish_rest)
        await wait_until(lambda: producer.buffer_errors > 0)
        assert sent_ids(producer.produced) == ids(EVENTS[:2])  # the third one is waiting
        assert publisher.stats.buffer_full_waits > 0
        assert publisher.stats.pending == 3
        producer.release()
        await wait_until(lambda: publisher.stats.published == len(EVENTS))
        assert await publisher.flush(5) == 0
    assert sent_ids(producer.delivered) == ids(EVENTS)
    assert publisher.stats.delivered == len(EVENTS) and not publisher.failed


async def test_failed_delivery_is_retried_with_the_same_event_id(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    failures = {EVENTS[1].event_id: 2}

    def outcome(sent: Sent) -> KafkaError | None:
        if failures.get(sent.event_id, 0) > 0:
            failures[sent.event_id] -= 1
            return KafkaError(KafkaError.NOT_ENOUGH_REPLICAS)
        return None

    factory = Factory({"outcome": outcome})
    async with publisher_for(factory) as publisher:
        for event in EVENTS[:3]:
            await publisher.publish(event)
        assert await publisher.flush(5) == 0
    (producer,) = factory.producers
    copies = [s for s in producer.produced if s.event_id == EVENTS[1].event_id]
    assert len(copies) == 3 and len({s.value for s in copies}) == 1  # same bytes each time
    assert sorted(sent_ids(producer.delivered)) == sorted(ids(EVENTS[:3]))
    stats = publisher.stats
    assert (stats.delivered, stats.retried, stats.failed, stats.pending) == (3, 2, 0, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(EVENTS[1].event_id in m and "NOT_ENOUGH_REPLICAS" in m for m in warnings)


async def refuse_the_second_of_three(*, topics: set[str]) -> tuple[KafkaPublisher, FakeProducer]:
    """Publish three events with `max_attempts=3`; the second is refused (not enough
    replicas) on `topics`. Returns the closed publisher and its producer."""

    def outcome(sent: Sent) -> KafkaError | None:
        if sent.event_id == EVENTS[1].event_id and sent.topic in topics:
            return KafkaError(KafkaError.NOT_ENOUGH_REPLICAS)
        return None

    factory = Factory({"outcome": outcome})
    async with publisher_for(factory, max_attempts=3) as publisher:
        for event in EVENTS[:3]:
            await publisher.publish(event)
        assert await publisher.flush(5) == 0
    (producer,) = factory.producers
    return publisher, producer


async def test_exhausted_retries_go_to_the_dead_letter_topic(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    publisher, producer = await refuse_the_second_of_three(topics={CONFIG.full_topic})
    assert sent_ids(producer.produced).count(EVENTS[1].event_id) == 4
    (dead,) = [s for s in producer.delivered if s.topic == "t.polymarket-events.dlq"]
    headers = dict(dead.headers)
    assert dead.event_id == EVENTS[1].event_id and dead.key == EVENTS[1].kafka_key
    assert b"NOT_ENOUGH_REPLICAS" in headers["dlq-reason"]
    assert headers["dlq-original-topic"] == b"t.polymarket-events"
    assert not publisher.failed
    assert publisher.stats.dead_lettered == 1 and publisher.stats.delivered == 2
    assert publisher.stats.unacknowledged == 1  # not on the events topic
    assert EVENTS[1].event_id in errors_logged(caplog)


async def test_exhausted_retries_that_the_dead_letter_topic_refuses_are_reported(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    both = {CONFIG.full_topic, CONFIG.full_dead_letter_topic}
    publisher, producer = await refuse_the_second_of_three(topics=both)
    # Three attempts on the events topic, three on the dead-letter topic.
    assert sent_ids(producer.produced).count(EVENTS[1].event_id) == 6
    assert sent_ids(producer.delivered) == [EVENTS[0].event_id, EVENTS[2].event_id]
    (failed,) = publisher.failed
    assert isinstance(failed, FailedDelivery) and failed.attempts == 3
    assert failed.event == EVENTS[1].model_copy(update={"published_at": PUBLISHED_AT})
    assert "NOT_ENOUGH_REPLICAS" in failed.reason
    assert (publisher.stats.failed, publisher.stats.delivered) == (1, 2)
    assert publisher.stats.dead_lettered == 0
    assert EVENTS[1].event_id in errors_logged(caplog)


FATAL = KafkaError(KafkaError.UNKNOWN_PRODUCER_ID, "broker lost the producer state", fatal=True)


@pytest.mark.parametrize(
    "trigger",
    ["fatal delivery report", "message timed out", "fatal raised by poll", "fatal error_cb"],
)
async def test_unusable_producer_is_replaced_and_unacked_events_resent_in_order(
    anyio_backend: str, trigger: str
) -> None:
    first: dict[str, Any] = {"hold": True}
    if trigger == "fatal delivery report":
        first["outcome"] = lambda sent: FATAL
    elif trigger == "message timed out":
        first["outcome"] = lambda sent: KafkaError(KafkaError._MSG_TIMED_OUT)
    factory = Factory(first)
    async with publisher_for(factory) as publisher:
        for event in EVENTS[:4]:
            await publisher.publish(event)
        old = factory.producers[0]
        fenced = KafkaError(KafkaError.PRODUCER_FENCED, "fenced", fatal=True)
        if trigger.startswith("fatal raised"):
            old.emit_client_error(fenced, from_poll=True)
        elif trigger == "fatal error_cb":
            old.emit_client_error(fenced)
        else:
            old.release()
        await wait_until(lambda: len(factory.producers) == 2)
        assert await publisher.flush(5) == 0
        new = factory.producers[1]
        await publisher.publish(EVENTS[4])
        assert await publisher.flush(5) == 0
    assert old.purged and old.closed and old.delivered == []
    assert sent_ids(new.produced) == ids(EVENTS[:5])  # re-sent in publish order, then new
    assert sent_ids(new.delivered) == ids(EVENTS[:5])
    stats = publisher.stats
    assert (stats.producer_recreated, stats.delivered, stats.failed) == (1, 5, 0)
    assert stats.retried == 4


async def test_produce_refused_by_a_fatal_producer_goes_to_the_new_one(
    anyio_backend: str,
) -> None:
    factory = Factory()
    async with publisher_for(factory) as publisher:
        await publisher.publish(EVENTS[0])
        assert await publisher.flush(5) == 0
        old = factory.producers[0]
        old.produce_error = KafkaException(FATAL)
        await publisher.publish(EVENTS[1])
        assert await publisher.flush(5) == 0
    new = factory.producers[1]
    assert sent_ids(old.delivered) == [EVENTS[0].event_id]
    assert sent_ids(new.delivered) == [EVENTS[1].event_id]  # nothing acknowledged is re-sent
    assert publisher.stats.producer_recreated == 1 and publisher.stats.delivered == 2


async def test_failing_producer_creation_is_retried(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory({"outcome": lambda sent: FATAL}, failures=2)
    async with publisher_for(factory) as publisher:
        await publisher.publish(EVENTS[0])
        assert await publisher.flush(5) == 0
    assert len(factory.producers) == 2 and factory.failures == 0
    assert sent_ids(factory.producers[1].delivered) == [EVENTS[0].event_id]
    assert "creating a Kafka producer failed" in errors_logged(caplog)


async def test_non_fatal_client_errors_are_logged_only(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory()
    async with publisher_for(factory) as publisher:
        factory.producers[0].emit_client_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
        await wait_until(lambda: "_ALL_BROKERS_DOWN" in caplog.text)
        await publisher.publish(EVENTS[0])
        assert await publisher.flush(5) == 0
    assert len(factory.producers) == 1 and publisher.stats.producer_recreated == 0


async def test_message_rejected_by_the_producer_is_reported(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory(
        {"produce_error": KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too big"))}
    )
    async with publisher_for(factory) as publisher:
        await publisher.publish(EVENTS[0])
        assert await publisher.flush(5) == 0
    (failed,) = publisher.failed
    assert failed.event.event_id == EVENTS[0].event_id and "too big" in failed.reason
    assert publisher.stats.failed == 1 and len(factory.producers) == 1
    assert EVENTS[0].event_id in errors_logged(caplog)


async def test_flush_timeout_leaves_pending_and_exit_reports_them(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory({"hold": True})
    async with publisher_for(factory, grace_seconds=0.01) as publisher:
        await publisher.publish(EVENTS[0])
        await publisher.publish(EVENTS[1])
        assert await publisher.flush(0.01) == 2
        assert ids(publisher.pending_events()) == ids(EVENTS[:2])
        assert errors_logged(caplog) == ""
    logged = errors_logged(caplog)
    assert EVENTS[0].event_id in logged and EVENTS[1].event_id in logged
    assert "2 event(s) NOT acknowledged" in logged
    assert publisher.stats.pending == 2 and publisher.stats.delivered == 0
    assert factory.producers[0].purged and factory.producers[0].closed


async def test_publish_cancelled_while_waiting_for_room_is_reported(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory({"capacity": 1, "hold": True})
    async with publisher_for(factory, grace_seconds=0.01) as publisher:
        await publisher.publish(EVENTS[0])
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher.publish, EVENTS[1])
            await wait_until(lambda: factory.producers[0].buffer_errors > 0)
            tg.cancel_scope.cancel()
        (failed,) = publisher.failed
        assert failed.event.event_id == EVENTS[1].event_id and "cancelled" in failed.reason
        assert EVENTS[1].event_id in errors_logged(caplog)
        assert ids(publisher.pending_events()) == [EVENTS[0].event_id]


async def test_the_callers_exception_comes_out_unwrapped(anyio_backend: str) -> None:
    factory = Factory()
    with pytest.raises(ValueError, match="boom"):
        async with publisher_for(factory):
            raise ValueError("boom")
    assert factory.producers[0].closed


async def test_the_publisher_survives_outer_cancellation_with_a_bounded_flush(
    anyio_backend: str,
) -> None:
    factory = Factory({"hold": True})
    publisher: KafkaPublisher | None = None
    with anyio.CancelScope() as scope:
        async with publisher_for(factory, grace_seconds=5) as publisher:
            await publisher.publish(EVENTS[0])
            scope.cancel()
            factory.producers[0].release()  # delivered during the shielded grace period
            await anyio.sleep_forever()
    assert publisher is not None and publisher.stats.delivered == 1


def test_max_attempts_must_be_positive() -> None:
    async def main() -> None:
        async with open_kafka_publisher(CONFIG, max_attempts=0):
            pass  # pragma: no cover

    with pytest.raises(ValueError, match="max_attempts"):
        anyio.run(main)


async def test_publish_waits_while_max_in_flight_events_are_unacknowledged(
    anyio_backend: str,
) -> None:
    """A broker that refuses everything with a retriable error (retried forever): publishing
    blocks at the bound instead of piling events up in memory."""
    factory = Factory({"outcome": lambda sent: KafkaError(KafkaError.NOT_ENOUGH_REPLICAS)})
    config = dataclasses.replace(CONFIG, max_in_flight=50)
    published = 0
    async with open_kafka_publisher(
        config, producer_factory=factory, clock=lambda: PUBLISHED_AT, retry_backoff_seconds=0.01
    ) as publisher:

        async def publish_many() -> None:
            nonlocal published
            for n in range(5000):
                await publisher.publish(make_event(n))
                published += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_many)
            await wait_until(lambda: publisher.stats.in_flight_waits > 0)
            await wait_until(lambda: publisher.stats.retried > 100)  # retries go on meanwhile
            assert published == 50
            assert len(publisher.pending_events()) == 50 == publisher.stats.pending
            tg.cancel_scope.cancel()
        factory.producers[0].outcome = lambda sent: None  # the broker recovers
        assert await publisher.flush(5) == 0
    assert publisher.stats.delivered == 50 and published == 50
    # The publish cancelled while waiting for room is counted and named, never silent.
    (cancelled,) = publisher.failed
    assert cancelled.event.event_id == make_event(50).event_id
    assert "waiting for room" in cancelled.reason
    assert publisher.stats.published == 51 and publisher.stats.unacknowledged == 1


async def test_a_rejected_record_goes_to_the_dead_letter_topic(anyio_backend: str) -> None:
    class Refusing(FakeProducer):
        def produce(self, topic: str, **kw: Any) -> None:
            if topic == CONFIG.full_topic:
                raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too big"))
            super().produce(topic, **kw)

    class RefusingFactory(Factory):
        def __call__(self, conf: dict[str, Any]) -> FakeProducer:
            self.producers.append(Refusing(conf))
            return self.producers[-1]

    factory = RefusingFactory()
    async with publisher_for(factory) as publisher:
        await publisher.publish(EVENTS[0])
        assert await publisher.flush(5) == 0
    (dead,) = factory.producers[0].delivered
    assert dead.topic == CONFIG.full_dead_letter_topic and dead.event_id == EVENTS[0].event_id
    assert b"too big" in dict(dead.headers)["dlq-reason"]
    assert publisher.stats.dead_lettered == 1 and not publisher.failed


async def test_without_a_dead_letter_topic_exhausted_events_are_given_up(
    anyio_backend: str,
) -> None:
    factory = Factory({"outcome": lambda sent: KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)})
    config = dataclasses.replace(CONFIG, dead_letter_topic="")
    async with open_kafka_publisher(
        config, producer_factory=factory, clock=lambda: PUBLISHED_AT, retry_backoff_seconds=0.0
    ) as publisher:
        await publisher.publish(EVENTS[0])
        assert await publisher.flush(5) == 0
    # A permanent error: three attempts, then given up (there is nowhere else to put it).
    assert sent_ids(factory.producers[0].produced) == [EVENTS[0].event_id] * 3
    (failed,) = publisher.failed
    assert "TOPIC_AUTHORIZATION_FAILED" in failed.reason and failed.attempts == 3
