"""Membership of the instances' consumer group: which state-topic partitions are this one's.

Every instance joins `KAFKA_GROUP_ID` on the state topic with librdkafka's cooperative-sticky
assignor, so a rebalance moves only the partitions that change owner (the others keep
running). The consumer reads nothing: each partition is paused as soon as it is assigned.
It is only how Kafka's group coordinator tells an instance what it owns and when it lost it.

The consumer runs in a worker thread (`GroupMember.run`, blocking). Its rebalance callbacks
hand a `Rebalance` to the event loop and **wait until the loop has handled it**: a revoked
partition's transaction is committed (or aborted) and its markets are no longer observed
before the callback returns, so before the group can give the partition to another
instance. For an instance that cannot take part (killed, frozen), the new owner's producer
fences the old one's by the partition's transactional id (`KafkaConfig.
partition_transactional_id`). A callback waits at most `handling_timeout` seconds (then the
rebalance goes on and fencing is what keeps the partition safe).

Tansu (TEST-SERVERS.md) holds the first assignment for session.timeout.ms / 2, and supports
the cooperative protocol through the classic group API (`group.protocol=consumer` is not).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from confluent_kafka import Consumer, KafkaException, TopicPartition

from polymarket_kafka.backoff import doubling
from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.kafka.state_topic import StateTopicError, client_config, ensure_state_topic

__all__ = [
    "GroupMember",
    "Rebalance",
    "RebalanceKind",
    "group_consumer_config",
    "open_group_member",
]

logger = logging.getLogger(__name__)

#: assigned: the partitions are now this instance's; revoked: handed back in an orderly
#: rebalance (commit what is open); lost: the group already gave them away (this instance
#: was too slow or cut off: its producer is fenced, nothing of it can be committed). The
#: same as `service.sharding.RebalanceKind`, which handles them.
RebalanceKind = Literal["assigned", "revoked", "lost"]


@dataclass
class Rebalance:
    """A change of the partitions this instance owns, handed from the consumer thread to
    the event loop; the loop sets `handled` once it has acted on it."""

    kind: RebalanceKind
    partitions: frozenset[int]
    handled: threading.Event = field(default_factory=threading.Event)


def group_consumer_config(config: KafkaConfig, instance: str) -> dict[str, Any]:
    """The group consumer's settings (holds the SASL password when there is one: never log
    them; `instance` names the member in the coordinator's logs)."""
    session = config.group_session_timeout_ms
    return {
        **client_config(config),
        "client.id": f"{config.client_id}.{instance}",
        "group.id": config.group_id,
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": session,
        "heartbeat.interval.ms": max(100, session // 5),
        # Nothing is consumed (every partition is paused): the thread polls every 0.2 s
        # anyway; a frozen process misses its heartbeats first.
        "max.poll.interval.ms": max(session, 60_000),
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "allow.auto.create.topics": False,
        "isolation.level": "read_committed",
    }


class GroupMember:
    """The consumer of the group, run in a worker thread by `run` until `stop` is set; then
    it leaves the group (its partitions are handed over at once, not after the session
    timeout)."""

    def __init__(
        self,
        config: KafkaConfig,
        hand_over: Callable[[Rebalance], bool],
        *,
        instance: str,
        handling_timeout: float = 60.0,
        consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer,
    ) -> None:
        """`hand_over` passes a `Rebalance` to the event loop (False: nobody handles it any
        more, the service is stopping)."""
        self.topic = config.full_state_topic
        self.instance = instance
        self._config = config
        self._conf = {**group_consumer_config(config, instance), "logger": logger}
        self._hand_over = hand_over
        self._handling_timeout = handling_timeout
        self._factory = consumer_factory
        self._stop = threading.Event()
        #: The partitions the group gave this instance (as the consumer thread knows them).
        self.assigned: frozenset[int] = frozenset()

    def stop(self) -> None:
        """Ask `run` to leave the group and return (from any thread)."""
        self._stop.set()

    def run(self) -> None:
        """Join the group and serve its rebalances until `stop`; then leave it. First the
        state topic is created if missing (retried until Kafka answers); a topic whose
        partition count is not `KAFKA_STATE_PARTITIONS` raises `StateTopicError` (markets
        would hash to other partitions than the ones owned)."""
        consumer = self._factory(self._conf)
        try:
            if not self._topic_ready(consumer):
                return
            consumer.subscribe(
                [self.topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            while not self._stop.is_set():
                message = consumer.poll(0.2)
                if message is not None and message.error() is not None:
                    logger.warning(
                        "Kafka consumer group %s: %s", self._conf["group.id"], message.error()
                    )
        finally:
            # Leaves the group: the revocation is served while the loop still listens.
            try:
                consumer.close()
            except (KafkaException, RuntimeError) as exc:
                logger.warning("leaving the consumer group failed: %s", exc)

    def _topic_ready(self, consumer: Consumer) -> bool:
        """Create the state topic unless it exists, check its partitions; False: stopped
        before Kafka answered."""
        delays = doubling(0.5, 10.0)
        while not self._stop.is_set():
            try:
                ensure_state_topic(self._config, timeout=5.0)
                metadata = consumer.list_topics(self.topic, timeout=5.0).topics.get(self.topic)
            except (StateTopicError, KafkaException) as exc:
                logger.warning(
                    "cannot check the state topic %s yet (%s); retrying", self.topic, exc
                )
            else:
                if metadata is not None and metadata.error is None and metadata.partitions:
                    found = len(metadata.partitions)
                    if found != self._config.state_partitions:
                        raise StateTopicError(
                            f"the state topic {self.topic} has {found} partitions but "
                            f"KAFKA_STATE_PARTITIONS is {self._config.state_partitions}: every "
                            f"instance must use the topic's count (set it to {found})"
                        )
                    return True
            self._stop.wait(next(delays))
        return False

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.incremental_assign(partitions)
        if partitions:
            consumer.pause(partitions)  # nothing is read through the group
        self._handle(consumer, "assigned", partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._handle(consumer, "revoked", partitions)
        consumer.incremental_unassign(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._handle(consumer, "lost", partitions)
        consumer.incremental_unassign(partitions)

    def _handle(
        self, consumer: Consumer, kind: RebalanceKind, partitions: list[TopicPartition]
    ) -> None:
        numbers = frozenset(p.partition for p in partitions if p.topic == self.topic)
        if kind == "assigned":
            self.assigned |= numbers
        else:
            self.assigned -= numbers
        if not numbers and kind != "assigned":
            return
        # An empty assignment is handed over too: it is how an instance with nothing to own
        # (more instances than partitions) learns it has joined.
        logger.log(
            logging.INFO if numbers else logging.DEBUG,
            "consumer group %s: partitions %s %s",
            self._conf["group.id"],
            ",".join(str(p) for p in sorted(numbers)),
            kind,
        )
        rebalance = Rebalance(kind, numbers)
        if not self._hand_over(rebalance):
            return
        deadline = time.monotonic() + self._handling_timeout
        while not rebalance.handled.wait(0.1):
            if self._stop.is_set():
                # Stopping: the publishers have closed (committed) already, and nothing
                # handles rebalances any more.
                return
            if time.monotonic() > deadline:
                logger.error(
                    "partitions %s %s but not handled within %gs: the rebalance goes on "
                    "(fencing keeps them safe)",
                    sorted(numbers),
                    kind,
                    self._handling_timeout,
                )
                return


@asynccontextmanager
async def open_group_member(
    config: KafkaConfig,
    instance: str,
    *,
    consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer,
    handling_timeout: float = 60.0,
) -> AsyncIterator[tuple[GroupMember, MemoryObjectReceiveStream[Rebalance]]]:
    """Join the group in a worker thread; yields the member and the stream of its
    rebalances (each to be handled, then `handled.set()`). On exit the member leaves the
    group -- after whatever the caller closed inside this block (the publishers' last
    commits), so the partitions' next owners start after them."""
    # Unbounded, so that no rebalance is ever dropped: there are few (each one waits for the
    # previous to be handled, or for `handling_timeout`), and a dropped one would leave
    # partitions served by no one, or by two.
    send, receive = anyio.create_memory_object_stream[Rebalance](math.inf)

    def hand_over(rebalance: Rebalance) -> bool:
        try:
            anyio.from_thread.run_sync(send.send_nowait, rebalance)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False  # stopping: the publishers have closed, nothing to hand over
        except RuntimeError:  # the event loop is gone
            return False
        return True

    member = GroupMember(
        config,
        hand_over,
        instance=instance,
        handling_timeout=handling_timeout,
        consumer_factory=consumer_factory,
    )
    logger.info(
        "joining consumer group %s on %s as %s (session timeout %d ms)",
        config.group_id,
        config.full_state_topic,
        instance,
        config.group_session_timeout_ms,
    )
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(partial(anyio.to_thread.run_sync, member.run))
        try:
            yield member, receive
        finally:
            send.close()
            receive.close()  # the caller's reader has ended by now, or never started
            member.stop()
