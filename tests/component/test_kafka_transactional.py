"""The transactional publisher against a real broker (Tansu, in memory, on loopback).

Events and state records committed together, read back by a `read_committed` consumer;
zombie fencing of a second instance; a broker that restarts empty. Tansu 0.6 quirk: records
of an aborted transaction that already reached the broker ARE delivered to read_committed
consumers (it sends no aborted-transaction list), so no test here aborts a transaction whose
records reached the broker; on Kafka they would be invisible.
"""

from __future__ import annotations

import functools
import logging
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta

import anyio
import confluent_kafka
import pytest

from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.kafka.state_topic import ensure_state_topic, read_state
from polymarket_kafka.kafka.transactional import (
    ProducerFencedError,
    TransactionalProducer,
    TransactionalPublisher,
    open_transactional_publisher,
)
from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.testing.local_broker import (
    LocalBroker,
    create_topic,
    open_tansu_broker,
    read_events,
)
from tests import factories
from tests.component.test_kafka_tansu import free_port

pytestmark = pytest.mark.broker

T0 = datetime(2024, 11, 6, 1, 0, tzinfo=UTC)
MARKETS = [f"0x{n:064x}" for n in range(1, 7)]


def make_event(market_id: str, n: int) -> PolymarketEvent:
    return factories.make_event(
        event_id=str(uuid.uuid4()), timestamp=T0 + timedelta(seconds=n), market_id=market_id
    )


def kafka_config(bootstrap: str, **fields: object) -> KafkaConfig:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config = KafkaConfig(
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        state_topic="state",
        state_partitions=3,
        **fields,  # type: ignore[arg-type]
    )
    create_topic(bootstrap, config.full_topic)
    ensure_state_topic(config)
    return config


async def committed_events(config: KafkaConfig, expected: int) -> list[str]:
    read = functools.partial(read_events, expected=expected, timeout=15, linger=0.3)
    messages = await anyio.to_thread.run_sync(read, config.bootstrap_servers, config.full_topic)
    return [PolymarketEvent.model_validate_json(m.value or b"").event_id for m in messages]


@pytest.mark.anyio
async def test_events_and_their_states_are_committed_together(
    anyio_backend: str, tansu_broker: LocalBroker
) -> None:
    config = kafka_config(tansu_broker.bootstrap_servers)
    events = [make_event(MARKETS[n % 3], n) for n in range(6)]
    async with open_transactional_publisher(config) as publisher:
        for n, event in enumerate(events):
            await publisher.publish(event, (event.market_id, b"state-after-%d" % n))
        publisher.stage([(MARKETS[4], b"checkpoint"), (MARKETS[5], None)])
        assert await publisher.flush(10) == 0
        assert publisher.pending_events() == []
    stats = publisher.stats
    assert (stats.published, stats.delivered, stats.failed) == (6, 6, 0)
    assert stats.transactions_committed >= 1
    assert stats.transactions_aborted == 0
    assert stats.state_records_committed >= 4
    assert stats.delivery_latency.count == 6

    assert sorted(await committed_events(config, 6)) == sorted(e.event_id for e in events)
    states = await anyio.to_thread.run_sync(read_state, config)
    # The latest state of each market wins; the tombstone leaves the market out.
    assert states == {
        MARKETS[0]: b"state-after-3",
        MARKETS[1]: b"state-after-4",
        MARKETS[2]: b"state-after-5",
        MARKETS[4]: b"checkpoint",
    }


@pytest.mark.anyio
async def test_a_second_instance_fences_the_first(
    anyio_backend: str, tansu_broker: LocalBroker, caplog: pytest.LogCaptureFixture
) -> None:
    config = kafka_config(tansu_broker.bootstrap_servers, transactional_id="fence-me")
    before, after, zombie = (make_event(MARKETS[n], n) for n in range(3))
    opened: list[TransactionalPublisher] = []

    async def two_instances() -> None:
        async with open_transactional_publisher(config, grace_seconds=2) as first:
            opened.append(first)
            await first.publish(before)
            assert await first.flush(10) == 0
            async with open_transactional_publisher(config) as second:
                await first.publish(zombie)  # its transaction is refused: fenced
                await second.publish(after)
                assert await second.flush(10) == 0
                await anyio.sleep(30)  # the fencing error ends the first's block first

    with pytest.raises(ProducerFencedError, match="'fence-me'.*never two writers"):
        await two_instances()
    first = opened[0]
    assert first.stats.delivered == 1
    assert not first.broker_status().connected
    assert "fenced" in first.broker_status().detail
    committed = await committed_events(config, 2)
    assert sorted(committed) == sorted([before.event_id, after.event_id])


@pytest.mark.anyio
async def test_a_broker_that_restarted_empty_gets_what_was_not_committed(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The broker forgets the transactional producer with everything else: its next
    # transaction fails, the producer is replaced (transactions initialised again) and the
    # uncommitted events are committed by the new one.
    caplog.set_level(logging.WARNING, "polymarket_kafka")
    port = free_port()

    def impatient(conf: dict[str, object]) -> TransactionalProducer:
        overrides = {
            "reconnect.backoff.max.ms": 200,
            "transaction.timeout.ms": 5000,
            "delivery.timeout.ms": 5000,
        }
        return confluent_kafka.Producer(conf | overrides)

    with ExitStack() as stack:
        first = await anyio.to_thread.run_sync(stack.enter_context, open_tansu_broker(port=port))
        config = kafka_config(first.bootstrap_servers)
        async with open_transactional_publisher(
            config, producer_factory=impatient, timeout_seconds=3, backoff_seconds=(0.2, 1.0)
        ) as publisher:
            await publisher.publish(make_event(MARKETS[0], 0))
            assert await publisher.flush(10) == 0
            await anyio.to_thread.run_sync(stack.close)  # broker gone, with all its state

            later = [make_event(MARKETS[n % 3], n) for n in range(1, 6)]
            for event in later:
                await publisher.publish(event, (event.market_id, b"after"))
            await anyio.sleep(0.5)
            second = await anyio.to_thread.run_sync(
                stack.enter_context, open_tansu_broker(port=port)
            )
            await anyio.to_thread.run_sync(
                create_topic, second.bootstrap_servers, config.full_topic
            )
            await anyio.to_thread.run_sync(ensure_state_topic, config)
            assert await publisher.flush(60) == 0
        assert not publisher.failed
        assert publisher.stats.transactions_aborted >= 1
        got = await committed_events(config, len(later))
        assert sorted(got) == sorted(e.event_id for e in later)
        states = await anyio.to_thread.run_sync(read_state, config)
        assert states == {MARKETS[n]: b"after" for n in range(3)}
