"""The compacted state topic: create it, read it back to its end, write records to it.

One record per market, keyed by market id, value `detector_state.encode(...)`; a tombstone
(null value) when the service forgot a market. Compaction keeps the latest record per key,
so reading the topic from the beginning gives every market's latest state.

Blocking calls (librdkafka), for `anyio.to_thread.run_sync`:

* `ensure_state_topic` creates the topic with `cleanup.policy=compact` when it is missing;
  an existing topic is left as it is.
* `read_state` reads every partition from the beginning up to a *fence*: first it writes a
  marker record to each partition and notes its offset, then it reads until every partition
  reached its marker. Not the high watermark: some brokers (Tansu, see TEST-SERVERS.md)
  report it wrong after multi-record batches, and a fence also covers records written by a
  previous instance that were still in flight. The markers are then deleted (tombstones);
  any marker or marker tombstone met while reading is skipped. It reads committed records
  only (`isolation.level=read_committed`).
* `StateWriter.write` produces records with the service's producer settings and waits for
  Kafka's acknowledgements; it returns the keys that were not written, so the caller can try
  them again at its next checkpoint.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Collection, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.kafka.delivery import kafka_error
from polymarket_kafka.kafka.settings import producer_config

__all__ = [
    "FENCE_PREFIX",
    "StateTopicError",
    "StateWriter",
    "client_config",
    "delete_fences",
    "ensure_state_topic",
    "fence_producer",
    "read_state",
    "write_fences",
]

logger = logging.getLogger(__name__)

#: Keys of the fence markers `read_state` writes (never a market id: those start with 0x).
FENCE_PREFIX = b"\x00polymarket-kafka-fence:"

_CLIENT_KEYS = ("bootstrap.servers", "client.id", "security.protocol")


class StateTopicError(Exception):
    """The state topic could not be created, read or written. `str()` is one line."""


def client_config(config: KafkaConfig) -> dict[str, Any]:
    """The connection settings of the producer (servers, security, credentials), for the
    admin client and the consumer. Holds the SASL password: never log it."""
    conf = producer_config(config)
    return {k: v for k, v in conf.items() if k in _CLIENT_KEYS or k.startswith("sasl.")}


def ensure_state_topic(config: KafkaConfig, *, timeout: float = 10.0) -> bool:
    """Create the state topic (compacted, `config.state_partitions` partitions) unless it
    exists. True when it was created."""
    topic = config.full_state_topic
    admin = AdminClient(client_config(config), logger=logger)
    new_topic = NewTopic(
        topic,
        num_partitions=config.state_partitions,
        replication_factor=-1,  # the broker's default
        config={"cleanup.policy": "compact"},
    )
    future = admin.create_topics([new_topic], operation_timeout=timeout)[topic]
    try:
        future.result(timeout=timeout)
    except TimeoutError:
        raise StateTopicError(
            f"cannot create the state topic {topic}: no answer within {timeout:g}s"
        ) from None
    except KafkaException as exc:
        error = kafka_error(exc)
        if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise StateTopicError(f"cannot create the state topic {topic}: {error or exc}") from None
    return True


def read_state(
    config: KafkaConfig, *, timeout: float = 30.0, only: Collection[int] | None = None
) -> dict[str, bytes]:
    """Every market's latest record in the state topic (tombstoned keys left out); with
    `only`, in those partitions alone (a partition taken over by a group member)."""
    topic = config.full_state_topic
    deadline = time.monotonic() + timeout
    consumer = Consumer(
        {
            **client_config(config),
            "group.id": f"polymarket-kafka-restore-{uuid.uuid4().hex}",  # never joined
            "enable.auto.commit": False,
            "allow.auto.create.topics": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 50,  # a restore waits for each fetch: do not idle at the end
            "logger": logger,
        }
    )
    try:
        partitions = _partitions(consumer, topic, timeout)
        if only is not None:
            missing = sorted(set(only) - set(partitions))
            if missing:
                raise StateTopicError(f"the state topic {topic} has no partition {missing[0]}")
            partitions = sorted(only)
        marker_producer = fence_producer(config)
        run = uuid.uuid4().hex  # this read's marker keys
        fences = write_fences(marker_producer, topic, partitions, run, deadline)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        states: dict[str, bytes] = {}
        remaining = dict(fences)  # partition -> offset of its fence
        while remaining:
            if time.monotonic() > deadline:
                raise StateTopicError(
                    f"the state topic {topic} was not read to its end within {timeout:g}s "
                    f"({len(remaining)} of {len(partitions)} partitions left)"
                )
            for message in consumer.consume(num_messages=10_000, timeout=0.2):
                _take(message, states, remaining)
        delete_fences(marker_producer, topic, fences, run)
        return states
    finally:
        consumer.close()


def _partitions(consumer: Consumer, topic: str, timeout: float) -> list[int]:
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    except KafkaException as exc:
        raise StateTopicError(f"cannot read the state topic {topic}: {exc}") from None
    if metadata is None or metadata.error is not None or not metadata.partitions:
        problem = "no such topic" if metadata is None else str(metadata.error or "no partitions")
        raise StateTopicError(f"cannot read the state topic {topic}: {problem}")
    return sorted(metadata.partitions)


def fence_producer(config: KafkaConfig) -> Producer:
    # Not idempotent: a marker needs its offset, not exactly-once, and an idempotent
    # producer's start (its producer id) costs 0.5 s on Tansu, twice per restore.
    return Producer({**producer_config(config), "enable.idempotence": False, "logger": logger})


def _fence_key(partition: int, run: str) -> bytes:
    return FENCE_PREFIX + f"{run}:{partition}".encode()


def write_fences(
    producer: Producer, topic: str, partitions: Sequence[int], run: str, deadline: float
) -> dict[int, int]:
    """A marker (keyed by `run`) at the end of each partition: partition -> its offset."""
    offsets: dict[int, int] = {}
    errors: list[str] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(str(error))
        else:
            offsets[message.partition() or 0] = message.offset() or 0

    for partition in partitions:
        producer.produce(
            topic,
            key=_fence_key(partition, run),
            value=b"",
            partition=partition,
            on_delivery=delivered,
        )
    left = producer.flush(max(0.0, deadline - time.monotonic()))
    if errors or left or len(offsets) != len(partitions):
        problem = errors[0] if errors else "no acknowledgement in time"
        raise StateTopicError(f"cannot write the read fence of the state topic {topic}: {problem}")
    return {partition: offsets[partition] for partition in partitions}


def _take(message: Message, states: dict[str, bytes], remaining: dict[int, int]) -> None:
    error = message.error()
    if error is not None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        raise StateTopicError(f"reading the state topic failed: {error}")
    partition = message.partition() or 0
    offset = message.offset() or 0
    key = message.key()
    if isinstance(key, bytes) and not key.startswith(FENCE_PREFIX):
        value = message.value()
        if value is None:
            states.pop(key.decode("utf-8", errors="replace"), None)
        else:
            states[key.decode("utf-8", errors="replace")] = value
    fence = remaining.get(partition)
    if fence is not None and offset >= fence:
        del remaining[partition]


def delete_fences(producer: Producer, topic: str, fences: dict[int, int], run: str) -> None:
    # The markers' keys are unique to one read: tombstones let compaction remove them. Best
    # effort: a marker left behind is skipped by every later read.
    for partition in fences:
        producer.produce(topic, key=_fence_key(partition, run), value=None, partition=partition)
    producer.flush(5.0)


class StateWriter:
    """Writes state records to the state topic (blocking; call it from a worker thread)."""

    def __init__(self, config: KafkaConfig) -> None:
        self.topic = config.full_state_topic
        self._producer = Producer({**producer_config(config), "logger": logger})

    def write(self, records: Sequence[tuple[str, bytes | None]], timeout: float) -> list[str]:
        """Produce `records` (market id, value or None for a tombstone) and wait at most
        `timeout` seconds for Kafka to acknowledge them. Returns the market ids that were
        not written (refused, or not acknowledged in time)."""
        acknowledged: set[str] = set()

        def delivered(error: KafkaError | None, message: Message) -> None:
            key = message.key()
            if error is None and isinstance(key, bytes):
                acknowledged.add(key.decode())

        deadline = time.monotonic() + timeout
        for market_id, value in records:
            while True:
                try:
                    self._producer.produce(
                        self.topic, key=market_id.encode(), value=value, on_delivery=delivered
                    )
                    break
                except BufferError:
                    if time.monotonic() > deadline:
                        break
                    self._producer.poll(0.05)
                except KafkaException as exc:
                    logger.warning("state record of %s refused: %s", market_id, exc)
                    break
        self._producer.flush(max(0.0, deadline - time.monotonic()))
        return [market_id for market_id, _ in records if market_id not in acknowledged]

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is left (at most `timeout` seconds)."""
        self._producer.flush(timeout)
