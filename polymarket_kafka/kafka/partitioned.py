"""Exactly-once delivery for a group member: one transactional producer per owned partition.

With several instances (`KAFKA_GROUP_ID`), the markets of state-topic partition `p` are
published by the instance owning `p`, through a `TransactionalPublisher` of its own whose
`transactional.id` is `KafkaConfig.partition_transactional_id(p)` -- the same in every
instance. Taking a partition over (`acquire`) initialises that id's transactions, which
fences the previous owner's producer (a frozen or partitioned instance cannot commit for
`p` any more) and aborts the transaction it left open, before the new owner reads the
partition's state. This is the fencing Tansu supports: it accepts
`send_offsets_to_transaction` with a stale group generation, so KIP-447 fencing would not
hold there (docs/ARCHITECTURE.md, "Several instances").

`PartitionedPublisher` routes: `publish` and `stage` go to the publisher of the market's
partition. An event or state record of a partition this instance does not hold (it moved
away while the event was between `detect` and `deliver`) is not written: it is counted in
`stats.handed_over` and logged -- the new owner starts from the committed state, which
never includes it, so it detects the move again (no loss, no duplicate).

`release` hands a partition back: with `commit`, what its publisher holds is committed
first (at most `grace_seconds`); without (the partition is lost: fenced already), nothing
more is tried. A publisher fenced while this instance thinks it owns the partition steps
down from it: one ERROR line, and `on_fenced` tells the group side.

All publishers share one `DeliveryStats`, so the metrics and the service's last line add
up over partitions. Bounds: each publisher holds at most `KAFKA_MAX_IN_FLIGHT` uncommitted
events, so an instance at most that times the partitions it owns.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
from anyio.abc import TaskGroup, TaskStatus

from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.detector_state import StateRecord
from polymarket_kafka.kafka.connectivity import RepeatLimiter
from polymarket_kafka.kafka.delivery import DeliveryStats
from polymarket_kafka.kafka.partition import MarketPartitions
from polymarket_kafka.kafka.settings import DELIVERY_TIMEOUT_MS
from polymarket_kafka.kafka.statistics import BrokerStatus, DeliveryBacklog
from polymarket_kafka.kafka.transactional import (
    ProducerFencedError,
    TransactionalPublisher,
)
from polymarket_kafka.models import PolymarketEvent

__all__ = ["OpenPartition", "PartitionedPublisher", "open_partitioned_publisher"]

logger = logging.getLogger(__name__)

#: Opens the transactional publisher of one partition (its config carries the partition's
#: transactional id); `open_transactional_publisher` with the service's settings.
OpenPartition = Callable[
    [KafkaConfig, DeliveryStats], AbstractAsyncContextManager[TransactionalPublisher]
]


class _Held:
    """One partition's publisher while this instance holds it."""

    def __init__(self, publisher: TransactionalPublisher) -> None:
        self.publisher = publisher
        self.release = anyio.Event()
        self.commit = True
        self.closed = anyio.Event()


class PartitionedPublisher:
    """Publishes each market through the publisher of its state-topic partition. Open with
    `open_partitioned_publisher`; call everything on the event loop thread."""

    def __init__(
        self,
        config: KafkaConfig,
        open_partition: OpenPartition,
        tasks: TaskGroup,
        on_fenced: Callable[[int], object] = lambda partition: None,
    ) -> None:
        self._config = config
        self.partitions = config.state_partitions
        self.topic = config.full_topic
        self.stats = DeliveryStats()
        self._open = open_partition
        self._tasks = tasks
        self.on_fenced = on_fenced
        self._held: dict[int, _Held] = {}
        self._partition_of = MarketPartitions(self.partitions)
        #: One WARNING per partition per 10 s about events handed over (the rest at DEBUG).
        self._warnings = RepeatLimiter(10.0)

    def partition_of(self, market_id: str) -> int:
        return self._partition_of(market_id)

    def held(self) -> frozenset[int]:
        """The partitions whose publisher is open."""
        return frozenset(self._held)

    # --- taking partitions over and handing them back -------------------------------------

    async def acquire(self, partition: int) -> bool:
        """Open `partition`'s publisher: returns once its transactions are initialised (the
        previous owner fenced, its open transaction aborted), retrying until Kafka answers.
        False: another instance fenced it meanwhile (stepped down from, `on_fenced`)."""
        held = self._held.get(partition)
        if held is not None and held.release.is_set():
            await held.closed.wait()  # still closing: the new publisher starts after it
        if partition not in self._held:
            await self._tasks.start(self._hold, partition)
        return partition in self._held

    async def release(self, partition: int, *, commit: bool) -> None:
        """Close `partition`'s publisher: what it holds is committed first (`commit`) or
        left to the new owner; returns once it is closed."""
        held = self._held.get(partition)
        if held is None:
            return
        held.commit = commit
        held.publisher.hand_over()
        held.release.set()
        await held.closed.wait()

    async def _hold(self, partition: int, *, task_status: TaskStatus[None]) -> None:
        config = dataclasses.replace(
            self._config, transactional_id=self._config.partition_transactional_id(partition)
        )
        held: _Held | None = None
        started = False
        try:
            async with self._open(config, self.stats) as publisher:
                publisher.hand_over_if_fenced()
                held = _Held(publisher)
                self._held[partition] = held
                task_status.started()
                started = True
                await held.release.wait()
                if not held.commit:
                    publisher.abandon()
        except ProducerFencedError:
            logger.error(  # noqa: TRY400 (one line: the fencing is the whole story)
                "fenced: partition %d of %s belongs to another instance now (transactional "
                "id %s); stepping down from it, nothing more is written for it",
                partition,
                self._config.full_state_topic,
                config.transactional_id,
            )
            self.stats.fenced_partitions += 1
            self.on_fenced(partition)
            if not started:  # fenced while initialising: `acquire` returns False
                task_status.started()
        finally:
            if held is not None:
                if self._held.get(partition) is held:  # never a newer holder's entry
                    del self._held[partition]
                held.closed.set()

    # --- the pipeline's side ----------------------------------------------------------------

    async def publish(self, event: PolymarketEvent, state: StateRecord | None = None) -> None:
        """`TransactionalPublisher.publish` on the event's partition; an event of a partition
        not held here is handed over (counted, logged, not written)."""
        partition = self.partition_of(event.market_id)
        held = self._held.get(partition)
        if held is None or held.release.is_set():
            self._hand_over(event, partition)
            return
        try:
            await held.publisher.publish(event, state)
        except RuntimeError:
            # Closed while it waited for room: the partition was released meanwhile.
            self._hand_over(event, partition)

    def stage(self, records: Iterable[StateRecord]) -> None:
        """State records for the next transaction of their partitions' publishers (those of
        partitions not held here are dropped: the new owner has its own)."""
        by_partition: dict[int, list[StateRecord]] = {}
        for record in records:
            by_partition.setdefault(self.partition_of(record[0]), []).append(record)
        for partition, staged in by_partition.items():
            held = self._held.get(partition)
            if held is not None and not held.release.is_set():
                held.publisher.stage(staged)

    def _hand_over(self, event: PolymarketEvent, partition: int) -> None:
        self.stats.handed_over += 1
        left_out = self._warnings.allow(partition, time.monotonic())
        logger.log(
            logging.DEBUG if left_out is None else logging.WARNING,
            "event of market %s not published here: partition %d moved to another instance, "
            "which detects it again from the committed state (event_id=%s%s)",
            event.market_id,
            partition,
            event.event_id,
            f"; {left_out} more since the last such line" if left_out else "",
            extra={"market_id": event.market_id, "event_id": event.event_id, "rule": event.rule},
        )

    async def flush(self, timeout: float) -> int:  # noqa: ASYNC109 (a budget, not an I/O timeout)
        """Wait until every held partition's events are committed (at most `timeout`
        seconds in all); how many are still uncommitted."""
        with anyio.move_on_after(timeout):
            for held in list(self._held.values()):
                await held.publisher.flush(timeout)
        return sum(len(held.publisher.pending_events()) for held in self._held.values())

    def pending_events(self) -> list[PolymarketEvent]:
        return [e for held in self._held.values() for e in held.publisher.pending_events()]

    def broker_status(self) -> BrokerStatus:
        """Down if any held partition's producer is down (the first one's reason); with no
        partition held, up: there is nothing to write (the group's readiness says why). A
        producer taken over just now, whose first statistics have not arrived, counts as up:
        its transactions were initialised, so the broker answered it."""
        for partition, held in sorted(self._held.items()):
            if held.publisher.initialised_unreported:
                continue
            status = held.publisher.broker_status()
            if not status.connected:
                return BrokerStatus(False, f"partition {partition}: {status.detail}")
        if not self._held:
            return BrokerStatus(True, "no partition owned: nothing to publish")
        return BrokerStatus(True, f"{len(self._held)} partition producer(s) up")

    def delivery_backlog(self) -> DeliveryBacklog:
        backlogs = [held.publisher.delivery_backlog() for held in self._held.values()]
        ages = [b.oldest_age_seconds for b in backlogs if b.oldest_age_seconds is not None]
        return DeliveryBacklog(sum(b.pending for b in backlogs), max(ages, default=None))

    @property
    def delivery_timeout_seconds(self) -> float:
        return DELIVERY_TIMEOUT_MS / 1000


@asynccontextmanager
async def open_partitioned_publisher(
    config: KafkaConfig, open_partition: OpenPartition
) -> AsyncIterator[PartitionedPublisher]:
    """A `PartitionedPublisher` holding no partition yet; on exit every held partition's
    publisher commits what is left (bounded by its own grace) and closes."""
    async with anyio.create_task_group() as tasks:
        publisher = PartitionedPublisher(config, open_partition, tasks)
        try:
            yield publisher
        finally:
            # Each held partition's task closes its publisher (shielded, bounded by its
            # grace), and the task group waits for them all.
            for held in list(publisher._held.values()):
                held.release.set()
