"""Which fencing the test broker supports, for several instances (README "Running several
instances"): the reason the service fences with one transactional id per partition.

KIP-447 fences a zombie by the consumer group's generation: the broker must refuse
`send_offsets_to_transaction` carrying a generation the group has moved past. Tansu 0.6
accepts it (the first test), so one producer per instance fenced that way would let a
frozen instance commit after losing its partitions. A second producer initialising the same
`transactional.id` does fence the first (the second test): that is what a new partition
owner does (`kafka.partitioned`).
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from polymarket_kafka.testing.local_broker import LocalBroker, create_topic

pytestmark = pytest.mark.broker


def _member(bootstrap: str, group: str, topic: str, assigned: list[str]) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "session.timeout.ms": 2000,
            "heartbeat.interval.ms": 200,
            "enable.auto.commit": False,
            "allow.auto.create.topics": False,
        }
    )
    consumer.subscribe(
        [topic], on_assign=lambda _consumer, partitions: assigned.append(str(len(partitions)))
    )
    return consumer


def _poll_until(consumers: list[Consumer], done: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not done():  # type: ignore[operator]
        for consumer in consumers:
            consumer.poll(0.05)


def test_tansu_accepts_a_commit_with_a_stale_group_generation(tansu_broker: LocalBroker) -> None:
    bootstrap = tansu_broker.bootstrap_servers
    source, sink = f"in-{uuid.uuid4().hex[:8]}", f"out-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, source, partitions=2)
    create_topic(bootstrap, sink, partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    first_assigned: list[str] = []
    first = _member(bootstrap, group, source, first_assigned)
    second_assigned: list[str] = []
    second = None
    try:
        _poll_until([first], lambda: first_assigned, 20)
        assert first_assigned == ["2"], "the first member owns both partitions"
        stale = first.consumer_group_metadata()  # generation 1
        second = _member(bootstrap, group, source, second_assigned)
        # Both keep polling: the group moves to the next generation, one partition each.
        _poll_until([first, second], lambda: second_assigned and len(first_assigned) >= 2, 20)
        assert second_assigned == ["1"] and first_assigned[-1] == "1"

        producer = Producer(
            {"bootstrap.servers": bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex}"}
        )
        producer.init_transactions(10)
        producer.begin_transaction()
        producer.produce(sink, key=b"k", value=b"v")
        producer.send_offsets_to_transaction([TopicPartition(source, 0, 1)], stale, 10)
        producer.commit_transaction(10)  # on Kafka >= 2.5: ILLEGAL_GENERATION / fenced
    finally:
        first.close()
        if second is not None:
            second.close()


def test_a_new_producer_with_the_same_transactional_id_fences_the_old(
    tansu_broker: LocalBroker,
) -> None:
    bootstrap = tansu_broker.bootstrap_servers
    topic = f"out-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, partitions=1)
    transactional_id = f"tx-{uuid.uuid4().hex}"
    old = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id})
    old.init_transactions(10)
    new = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id})
    new.init_transactions(10)  # the new owner of the partition

    old.begin_transaction()
    old.produce(topic, key=b"k", value=b"zombie")
    with pytest.raises(KafkaException) as raised:
        old.commit_transaction(10)
    error = raised.value.args[0]
    assert isinstance(error, KafkaError)
    assert error.code() in {KafkaError._FENCED, KafkaError.PRODUCER_FENCED}
    new.flush(5)
    old.flush(0)
