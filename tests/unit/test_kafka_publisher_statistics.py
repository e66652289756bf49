"""The publisher's view of broker connectivity and its delivery latency, with a fake producer.

The fake producer (shared with test_kafka_publisher_fake) hands the publisher's `stats_cb`
to the test, which calls it like librdkafka would, with statistics captured from Tansu.
A real broker going away is in tests/component/test_kafka_broker_status.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest
from confluent_kafka import KafkaError

from polymarket_kafka.kafka import BrokerStatus, open_kafka_publisher
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
    # 1 ms interval: stale after the 1 s floor, as when the poll thread stops serving.
    factory = Factory()
    async with publisher_for(factory, statistics_interval_ms=1) as publisher:
        emit(factory.producers[0], UP)
        await wait_until(lambda: publisher.broker_status().connected)
        await wait_until(lambda: not publisher.broker_status().connected)  # within 5 s
        assert "old" in publisher.broker_status().detail


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
        with caplog.at_level(logging.WARNING, logger="polymarket_kafka.kafka"):
            emit(factory.producers[0], "{not json")
        assert "unreadable librdkafka statistics" in caplog.text
        assert publisher.broker_status().connected


async def test_delivery_latency_is_observed_per_acknowledged_event(anyio_backend: str) -> None:
    factory = Factory()
    async with publisher_for(factory) as publisher:
        for event in EVENTS[:3]:
            await publisher.publish(event)
        assert await publisher.flush(5) == 0
    latency = publisher.stats.delivery_latency
    assert latency.count == publisher.stats.delivered == 3
    assert latency.sum == pytest.approx(publisher.stats.delivery_latency_seconds_sum)
    assert 0 <= publisher.stats.delivery_latency_seconds_max <= latency.sum


def test_the_statistics_interval_must_be_positive() -> None:
    async def main() -> None:
        async with open_kafka_publisher(CONFIG, statistics_interval_ms=0):
            pass  # pragma: no cover

    with pytest.raises(ValueError, match="statistics_interval_ms"):
        anyio.run(main)
