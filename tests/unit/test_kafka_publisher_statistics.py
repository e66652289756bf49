"""The publisher's view of broker connectivity, its backlog and its delivery latency, with a
fake producer.

The fake producer (shared with test_kafka_publisher_fake) hands the publisher's `stats_cb`
to the test, which calls it like librdkafka would, with statistics captured from Tansu.
Durations are measured on a `FakeMonotonic` clock the test moves: nothing waits for time to
pass. A real broker going away is in tests/component/test_kafka_broker_status.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest
from confluent_kafka import KafkaError

from polymarket_kafka.app import kafka_check
from polymarket_kafka.kafka.publisher import BrokerStatus, DeliveryBacklog, open_kafka_publisher
from tests.unit.test_kafka_publisher_fake import (
    CONFIG,
    EVENTS,
    Factory,
    FakeProducer,
    publisher_for,
    wait_until,
)

pytestmark = pytest.mark.anyio

DATA = Path(__file__).resolve().parents[1] / "data"
UP = (DATA / "librdkafka-stats-tansu-up.json").read_text()
DOWN = (DATA / "librdkafka-stats-tansu-down.json").read_text()
FATAL = KafkaError(KafkaError._FATAL, "fatal", fatal=True)


def emit(producer: FakeProducer, text: str) -> None:
    """What librdkafka does every `statistics.interval.ms` (from any thread: it only queues)."""
    producer.conf["stats_cb"](text)


class FakeMonotonic:
    """The publisher's monotonic clock, moved by the test (read from the poll thread too)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_statistics_are_requested_from_librdkafka(anyio_backend: str) -> None:
    factory = Factory()
    async with publisher_for(factory, statistics_interval_ms=250):
        pass
    conf = factory.producers[0].conf
    assert conf["statistics.interval.ms"] == 250
    assert callable(conf["stats_cb"])


async def test_connected_once_statistics_show_a_broker_up(anyio_backend: str) -> None:
    factory = Factory()
    async with publisher_for(factory) as publisher:
        assert publisher.broker_status() == BrokerStatus(
            False, "no statistics from the Kafka producer yet"
        )
        emit(factory.producers[0], UP)
        await wait_until(lambda: publisher.broker_status().connected)
        assert publisher.broker_status() == BrokerStatus(True, "1/1 brokers up")
        assert publisher.stats.brokers_up == 1

        emit(factory.producers[0], DOWN)
        await wait_until(lambda: not publisher.broker_status().connected)
        assert publisher.broker_status().detail == "all brokers down (0/1 brokers up)"
        assert publisher.stats.brokers_up == 0
    assert publisher.broker_status() == BrokerStatus(False, "the Kafka publisher is closed")


async def test_statistics_that_stop_coming_go_stale(anyio_backend: str) -> None:
    # Stale after 3 intervals, as when the poll thread stops serving callbacks.
    factory, clock = Factory(), FakeMonotonic()
    async with publisher_for(factory, statistics_interval_ms=500, monotonic=clock) as publisher:
        emit(factory.producers[0], UP)
        await wait_until(lambda: publisher.broker_status().connected)
        clock.now += 1.5
        assert publisher.broker_status().connected
        clock.now += 0.25
        assert publisher.broker_status() == BrokerStatus(
            False, "statistics are 1.8s old (the producer's poll thread stalled?)"
        )
        emit(factory.producers[0], UP)  # stamped on the moved clock: fresh again
        await wait_until(lambda: publisher.broker_status().connected)


async def test_a_replaced_producer_starts_over_and_its_old_statistics_are_ignored(
    anyio_backend: str,
) -> None:
    factory = Factory({"outcome": lambda sent: FATAL})
    async with publisher_for(factory) as publisher:
        old = factory.producers[0]
        emit(old, UP)
        await wait_until(lambda: publisher.broker_status().connected)
        await publisher.publish(EVENTS[0])  # its fatal report replaces the producer
        assert await publisher.flush(5) == 0
        assert len(factory.producers) == 2
        assert not publisher.broker_status().connected
        assert publisher.stats.brokers_up == 0

        # The retired producer's callback is stale; the new producer's counts.
        emit(old, UP)
        emit(factory.producers[1], DOWN)
        await wait_until(lambda: "all brokers down" in publisher.broker_status().detail)
        emit(factory.producers[1], UP)
        await wait_until(lambda: publisher.broker_status().connected)


async def test_unreadable_statistics_are_logged_and_ignored(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory()
    async with publisher_for(factory) as publisher:
        emit(factory.producers[0], UP)
        await wait_until(lambda: publisher.broker_status().connected)
        with caplog.at_level(logging.WARNING, logger="polymarket_kafka.kafka.publisher"):
            emit(factory.producers[0], "{not json")
        assert "unreadable librdkafka statistics" in caplog.text
        assert publisher.broker_status().connected


async def test_delivery_latency_is_measured_on_the_monotonic_clock(anyio_backend: str) -> None:
    factory, clock = Factory({"hold": True}), FakeMonotonic()
    async with publisher_for(factory, monotonic=clock) as publisher:
        await publisher.publish(EVENTS[0])
        clock.now += 0.25
        await publisher.publish(EVENTS[1])
        clock.now += 2.0
        factory.producers[0].release()  # both acknowledged at 1002.25
        assert await publisher.flush(5) == 0
    latency = publisher.stats.delivery_latency
    assert latency.count == publisher.stats.delivered == 2
    assert latency.sum == pytest.approx(2.25 + 2.0)
    assert dict(latency.cumulative())[2.5] == 2
    assert dict(latency.cumulative())[1.0] == 0


async def test_the_backlog_ages_until_the_events_are_acknowledged(anyio_backend: str) -> None:
    factory, clock = Factory({"hold": True}), FakeMonotonic()
    async with publisher_for(factory, monotonic=clock) as publisher:
        assert publisher.delivery_backlog() == DeliveryBacklog(0)
        await publisher.publish(EVENTS[0])
        clock.now += 10.0
        await publisher.publish(EVENTS[1])
        clock.now += 5.0
        assert publisher.delivery_backlog() == DeliveryBacklog(2, 15.0)  # the oldest's age
        factory.producers[0].release()
        assert await publisher.flush(5) == 0
        assert publisher.delivery_backlog() == DeliveryBacklog(0)


async def test_kafka_is_not_ready_while_deliveries_keep_failing_with_a_broker_up(
    anyio_backend: str,
) -> None:
    # A missing topic or a denied ACL: the broker is UP, every delivery fails and is retried.
    denied = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Topic authorization failed")
    factory, clock = Factory({"outcome": lambda sent: denied}), FakeMonotonic()
    options = {"monotonic": clock, "retry_backoff_seconds": 0.05, "grace_seconds": 0.0}
    async with publisher_for(factory, **options) as publisher:
        check = kafka_check(publisher)
        emit(factory.producers[0], UP)
        await wait_until(lambda: check().ok)
        assert check().detail == "1/1 brokers up"

        await publisher.publish(EVENTS[0])
        await wait_until(lambda: publisher.stats.retried >= 2)  # failing, and retried
        status = check()
        assert status.ok  # within librdkafka's delivery timeout: may still go through
        assert status.detail == "1/1 brokers up; 1 event pending, the oldest for 0.0s"

        assert publisher.delivery_timeout_seconds == 60.0  # the specification's 60000 ms
        clock.now += 60.5
        assert not publisher.broker_status().connected  # these statistics are old now...
        emit(factory.producers[0], UP)  # ...and fresh ones say the broker is still up
        await wait_until(lambda: publisher.broker_status().connected)
        status = check()
        assert not status.ok
        assert status.detail == (
            "delivery stalled: 1 event pending, the oldest for 60.5s (limit 60s); 1/1 brokers up"
        )
        assert status.extra == {
            "pending_events": 1,
            "oldest_pending_seconds": 60.5,
            "max_pending_seconds": 60.0,
        }
    # Never acknowledged: named at shutdown, not counted as delivered.
    assert publisher.stats.delivered == 0
    assert [e.event_id for e in publisher.pending_events()] == [EVENTS[0].event_id]


def test_the_statistics_interval_must_be_positive() -> None:
    async def main() -> None:
        async with open_kafka_publisher(CONFIG, statistics_interval_ms=0):
            pass  # pragma: no cover

    with pytest.raises(ValueError, match="statistics_interval_ms"):
        anyio.run(main)
