"""Standby state (`KAFKA_STANDBY=true`): tail the whole state topic, so a takeover is quick.

Without a standby, a partition taken over is restored by reading it from the beginning to a
fence (`state_topic.read_state`), which grows with the topic. With one, every instance keeps
reading every partition of the state topic (committed records only) into memory as they are
written, owned or not; taking a partition over then only has to read what was committed
since: `catch_up` writes a fence marker at the end of each partition taken over and waits
until the tail has read past it -- once the previous owner is fenced (its open transaction
aborted), so nothing it committed is missed.

Blocking (librdkafka): `run` is the tail's worker thread, `catch_up` is called from another
worker thread; they share the records under a lock.

Bound: one record per market in the state topic (the latest; tombstones delete), the memory
`bench/state_size.py` measures per market, in every instance.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from polymarket_kafka.backoff import doubling
from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.kafka.state_topic import (
    FENCE_PREFIX,
    StateTopicError,
    client_config,
    delete_fences,
    fence_producer,
    write_fences,
)

__all__ = ["StateTail"]

logger = logging.getLogger(__name__)


class StateTail:
    """The latest record of every market in the state topic, kept up to date by `run`."""

    def __init__(
        self,
        config: KafkaConfig,
        consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer,
    ) -> None:
        self._config = config
        self.topic = config.full_state_topic
        self._factory = consumer_factory
        self._records: dict[int, dict[str, bytes]] = {}
        #: The next offset to read, per partition (what was read so far).
        self._position: dict[int, int] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._failure: str | None = None
        #: Records read (fences included), for the metrics.
        self.records_read = 0

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    def markets(self) -> int:
        """How many markets' states the tail holds."""
        with self._changed:
            return sum(len(records) for records in self._records.values())

    def run(self) -> None:
        """Read every partition from the beginning, then keep up, until `stop`."""
        consumer = self._factory(
            {
                **client_config(self._config),
                "group.id": f"polymarket-kafka-standby-{uuid.uuid4().hex}",  # never joined
                "enable.auto.commit": False,
                "allow.auto.create.topics": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 100,
                "logger": logger,
            }
        )
        try:
            partitions = self._partitions(consumer)
            if partitions is None:
                return
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            while not self._stop.is_set():
                messages = consumer.consume(num_messages=10_000, timeout=0.2)
                if messages:
                    self._apply(messages)
        finally:
            consumer.close()

    def _partitions(self, consumer: Consumer) -> list[int] | None:
        delays = doubling(0.5, 10.0)
        while not self._stop.is_set():
            try:
                metadata = consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            except KafkaException as exc:
                logger.warning("standby: cannot read the state topic yet (%s)", exc)
            else:
                if metadata is not None and metadata.error is None and metadata.partitions:
                    partitions = sorted(metadata.partitions)
                    with self._changed:
                        for partition in partitions:
                            self._records.setdefault(partition, {})
                            self._position.setdefault(partition, 0)
                    return partitions
            self._stop.wait(next(delays))
        return None

    def _apply(self, messages: list[Any]) -> None:
        with self._changed:
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        self._failure = str(error)
                        logger.warning("standby: reading the state topic: %s", error)
                    continue
                partition = message.partition() or 0
                self._position[partition] = (message.offset() or 0) + 1
                self.records_read += 1
                key = message.key()
                if not isinstance(key, bytes) or key.startswith(FENCE_PREFIX):
                    continue
                market_id = key.decode("utf-8", errors="replace")
                value = message.value()
                records = self._records.setdefault(partition, {})
                if value is None:
                    records.pop(market_id, None)
                else:
                    records[market_id] = value
            self._changed.notify_all()

    def catch_up(self, partitions: Collection[int], timeout: float = 30.0) -> dict[str, bytes]:
        """The latest record of every market of `partitions`, everything committed before
        this call included (read to a fence). Raises `StateTopicError` when the tail does
        not get there within `timeout` seconds."""
        wanted = sorted(partitions)
        if not wanted:
            return {}
        deadline = time.monotonic() + timeout
        producer = fence_producer(self._config)
        run = uuid.uuid4().hex
        fences = write_fences(producer, self.topic, wanted, run, deadline)
        with self._changed:
            while any(self._position.get(p, 0) <= offset for p, offset in fences.items()):
                left = deadline - time.monotonic()
                if self._stop.is_set() or left <= 0:
                    behind = sorted(p for p, o in fences.items() if self._position.get(p, 0) <= o)
                    raise StateTopicError(
                        f"the standby did not read partitions {behind} of {self.topic} to "
                        f"their end within {timeout:g}s"
                        + (f" ({self._failure})" if self._failure else "")
                    )
                self._changed.wait(min(left, 0.5))
            states = {m: v for p in wanted for m, v in self._records.get(p, {}).items()}
        delete_fences(producer, self.topic, fences, run)
        return states
