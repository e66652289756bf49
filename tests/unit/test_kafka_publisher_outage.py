"""What the publisher logs when Kafka goes away and comes back, with a fake producer.

The test plays librdkafka: it raises client errors through `error_cb`, hands statistics to
`stats_cb` and calls the configured `logger`, and moves the publisher's monotonic clock. The
error texts are made up; the publisher's own messages are asserted, librdkafka's never.
"""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError

from tests.unit.test_kafka_publisher_fake import EVENTS, Factory, publisher_for, wait_until
from tests.unit.test_kafka_publisher_statistics import DOWN, FATAL, UP, FakeMonotonic, emit

pytestmark = pytest.mark.anyio

KAFKA = "polymarket_kafka.kafka.publisher"
LIBRDKAFKA = "polymarket_kafka.kafka.publisher.librdkafka"
REFUSED = KafkaError(KafkaError._TRANSPORT, "fake:9092/bootstrap: refused")
ALL_DOWN = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="polymarket_kafka")


def said(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    """The publisher's own lines at `level` and above, after the opening one."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == KAFKA and r.levelno >= level and not r.getMessage().startswith("opening")
    ]


def debug_count(caplog: pytest.LogCaptureFixture, prefix: str) -> int:
    return sum(
        r.levelno == logging.DEBUG and r.getMessage().startswith(prefix) for r in caplog.records
    )


async def test_an_outage_is_one_warning_a_reminder_and_one_info(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    factory, clock = Factory({"hold": True}), FakeMonotonic()
    options = {"statistics_interval_ms": 1000, "outage_reminder_seconds": 60.0}
    async with publisher_for(factory, monotonic=clock, grace_seconds=5, **options) as publisher:
        producer = factory.producers[0]
        emit(producer, UP)
        await wait_until(lambda: publisher.broker_status().connected)
        await publisher.publish(EVENTS[0])  # held: pending through the outage

        for _ in range(20):  # what a reconnection loop sends
            producer.emit_client_error(REFUSED)
        producer.emit_client_error(ALL_DOWN)
        await wait_until(lambda: debug_count(caplog, "Kafka connection error") == 21)
        emit(producer, DOWN)
        assert said(caplog) == []  # not confirmed yet: it might be a blip

        clock.now += 2.0  # two statistics intervals, the confirmation delay
        emit(producer, DOWN)
        await wait_until(lambda: len(said(caplog)) == 1)
        assert publisher.stats.outages == 1
        clock.now += 59.0
        emit(producer, DOWN)
        producer.emit_client_error(REFUSED)
        await wait_until(lambda: debug_count(caplog, "Kafka connection error") == 22)
        clock.now += 1.0  # a full reminder interval after the confirmation
        emit(producer, DOWN)
        await wait_until(lambda: len(said(caplog)) == 2)

        clock.now += 0.5
        emit(producer, UP)
        await wait_until(lambda: len(said(caplog)) == 3)
        assert publisher.stats.outages == 1
        ours = [r for r in caplog.records if r.name == KAFKA and r.getMessage() in said(caplog)]
        producer.release()  # delivered: nothing left for the exit to report

    assert [r.levelno for r in ours] == [logging.WARNING, logging.WARNING, logging.INFO]
    down, reminder, back = (r.getMessage() for r in ours)
    assert down == (
        "Kafka unreachable for 2.0s: all brokers down (bootstrap servers fake:9092); "
        "last error: fake:9092/bootstrap: refused; 1 event pending, kept and re-sent once it is "
        "back (connection errors are logged at DEBUG until then)"
    )
    assert reminder == (
        "Kafka still unreachable after 62.0s: all brokers down (bootstrap servers fake:9092); "
        "1 event pending; 1 failed connection attempt; last error: fake:9092/bootstrap: refused"
    )
    assert back == (
        "Kafka reachable again after 62.5s down (statistics: 1/1 brokers up); "
        "1 failed connection attempt during the outage"
    )
    assert said(caplog) == [down, reminder, back]  # and nothing else, up to the exit


async def test_kafka_is_back_when_an_event_is_delivered(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    factory, clock = Factory({"hold": True}), FakeMonotonic()
    async with publisher_for(factory, monotonic=clock, statistics_interval_ms=100) as publisher:
        producer = factory.producers[0]
        await publisher.publish(EVENTS[0])
        producer.emit_client_error(ALL_DOWN)
        await wait_until(lambda: debug_count(caplog, "Kafka connection error") == 1)
        clock.now += 2.0  # at least 2 s, however short the statistics interval
        emit(producer, DOWN)
        await wait_until(lambda: len(said(caplog)) == 1)
        assert said(caplog)[0].startswith("Kafka unreachable since start-up for 2.0s:")

        clock.now += 10.0
        producer.release()
        assert await publisher.flush(5) == 0
        await wait_until(lambda: len(said(caplog)) == 2)
    assert said(caplog)[1] == (
        "Kafka reachable again after 12.0s down (an event was delivered); "
        "0 failed connection attempts during the outage"
    )


async def test_a_reconnection_blip_logs_nothing(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    factory, clock = Factory(), FakeMonotonic()
    async with publisher_for(factory, monotonic=clock, statistics_interval_ms=5000) as publisher:
        producer = factory.producers[0]
        emit(producer, UP)
        producer.emit_client_error(REFUSED)
        producer.emit_client_error(ALL_DOWN)
        await wait_until(lambda: debug_count(caplog, "Kafka connection error") == 2)
        clock.now += 9.0  # below two statistics intervals
        emit(producer, UP)
        await wait_until(lambda: publisher.broker_status().connected)
        clock.now += 100.0
        emit(producer, UP)
        await publisher.publish(EVENTS[0])
        assert await publisher.flush(5) == 0
    assert said(caplog) == []  # not even a "back"
    assert publisher.stats.outages == 0


async def test_other_client_errors_are_warned_once_per_reminder_interval(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    factory, clock = Factory(), FakeMonotonic()
    denied = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied")
    async with publisher_for(factory, monotonic=clock, outage_reminder_seconds=30.0):
        producer = factory.producers[0]
        for _ in range(3):
            producer.emit_client_error(denied)
        await wait_until(lambda: debug_count(caplog, "Kafka client error (repeated)") == 2)
        clock.now += 30.0
        producer.emit_client_error(denied)
        await wait_until(lambda: len(said(caplog, logging.WARNING)) == 2)
    first, second = said(caplog, logging.WARNING)
    assert first == f"Kafka client error: {denied}"
    assert second == f"Kafka client error: {denied} (2 more left out)"


async def test_errors_and_statistics_of_a_retired_producer_say_nothing_about_kafka(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    factory, clock = Factory({"outcome": lambda sent: FATAL}), FakeMonotonic()
    async with publisher_for(factory, monotonic=clock) as publisher:
        old = factory.producers[0]
        emit(old, UP)
        await publisher.publish(EVENTS[0])  # its fatal report replaces the producer
        assert await publisher.flush(5) == 0
        new = factory.producers[1]
        emit(new, UP)
        await wait_until(lambda: publisher.broker_status().connected)

        old.conf["error_cb"](ALL_DOWN)  # late callbacks of the retired producer
        emit(old, DOWN)
        await wait_until(lambda: debug_count(caplog, "Kafka client error of a retired") == 1)
        clock.now += 100.0
        new.emit_client_error(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied"))
        await wait_until(lambda: "denied" in caplog.text)  # a tick after the clock moved
    assert not [m for m in said(caplog, logging.WARNING) if "Kafka unreachable" in m]
    assert publisher.stats.outages == 0


async def test_librdkafka_lines_are_routed_and_nothing_is_logged_after_close(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory()
    async with publisher_for(factory):
        librdkafka = factory.producers[0].conf["logger"]
        librdkafka.log(logging.ERROR, "%s [%s] %s", "FAIL", "producer-1", "b:9092: refused")
        librdkafka.log(logging.WARNING, "%s [%s] %s", "TOPIC", "producer-1", "something odd")
    librdkafka.log(logging.ERROR, "%s [%s] %s", "ERROR", "producer-1", "destroyed late")
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LIBRDKAFKA]
    assert records == [
        (logging.DEBUG, "FAIL [producer-1] b:9092: refused"),
        (logging.WARNING, "TOPIC [producer-1] something odd"),
    ]


async def test_the_reminder_interval_must_be_positive(anyio_backend: str) -> None:
    with pytest.raises(ValueError, match="reminder_seconds must be > 0"):
        async with publisher_for(Factory(), outage_reminder_seconds=0):
            pass  # pragma: no cover


async def test_the_publisher_waits_for_the_poll_thread_before_going_quiet(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The last poll (while the producer is retired) may still log: it comes before the exit.
    factory = Factory()
    async with publisher_for(factory):
        producer = factory.producers[0]

        def close() -> bool:
            producer.conf["logger"].log(logging.WARNING, "%s [%s] %s", "X", "p", "closing")
            producer.closed = True
            return True

        producer.close = close  # type: ignore[method-assign]
    messages = [r.getMessage() for r in caplog.records if r.name == LIBRDKAFKA]
    assert messages == ["X [p] closing"]
