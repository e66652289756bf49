"""Composition of several instances sharing the markets (`KAFKA_GROUP_ID`), for `app`.

Opened around the service, outermost first:

1. `open_membership`: the group member's thread joins the consumer group (it leaves last,
   after the publishers' final commits, so the next owners start after them);
2. `open_group_publisher`: a `PartitionedPublisher`, one transactional producer per owned
   partition;
3. `Group` (`join_group`): the ownership, the subscriptions filtered by it, and `Sharding`,
   which handles the rebalances as the service's background stage "group".

With `KAFKA_STANDBY=true` a `StateTail` tails the whole state topic meanwhile, and a
partition taken over is restored from it (`StateTail.catch_up`) instead of from the
beginning of the topic.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from polymarket_kafka.clock import now_utc
from polymarket_kafka.config import AppConfig, KafkaConfig
from polymarket_kafka.detector_state import ClosedMarket, MarketState
from polymarket_kafka.kafka.delivery import DeliveryStats
from polymarket_kafka.kafka.group import GroupMember, Rebalance, open_group_member
from polymarket_kafka.kafka.partitioned import PartitionedPublisher, open_partitioned_publisher
from polymarket_kafka.kafka.state_tail import StateTail
from polymarket_kafka.kafka.transactional import (
    TransactionalPublisher,
    open_transactional_publisher,
)
from polymarket_kafka.ops.board import MarketBoard
from polymarket_kafka.ops.health import ServiceHealth
from polymarket_kafka.service.ownership import Ownership
from polymarket_kafka.service.sharding import GroupStats, Sharding
from polymarket_kafka.service.stages import LatestSubscriptions

__all__ = [
    "Group",
    "Membership",
    "instance_name",
    "join_group",
    "open_group_publisher",
    "open_membership",
]


class RestoreStates(Protocol):
    """`app.restore_states`: the states of some partitions, read by `read` when given."""

    def __call__(
        self,
        config: AppConfig,
        *,
        only: Collection[int] | None = None,
        read: Callable[[], dict[str, bytes]] | None = None,
    ) -> Awaitable[list[MarketState | ClosedMarket]]: ...


@dataclass(frozen=True)
class Membership:
    """The group member, the rebalances its thread hands over, and the standby's tail."""

    member: GroupMember
    rebalances: MemoryObjectReceiveStream[Rebalance]
    tail: StateTail | None


def instance_name() -> str:
    """How this instance is named in the group's logs and on the dashboard."""
    return f"{socket.gethostname()}-{os.getpid()}"


@asynccontextmanager
async def open_membership(config: AppConfig) -> AsyncIterator[Membership]:
    """Join the group (and, with `KAFKA_STANDBY`, start tailing the state topic); leave it
    and stop tailing on exit."""
    async with (
        open_group_member(config.kafka, instance_name()) as (member, rebalances),
        anyio.create_task_group() as tasks,
    ):
        tail = None
        if config.kafka.standby:
            tail = StateTail(config.kafka)
            tasks.start_soon(partial(anyio.to_thread.run_sync, tail.run))
        try:
            yield Membership(member, rebalances, tail)
        finally:
            if tail is not None:
                tail.stop()


def open_group_publisher(
    config: AppConfig, statistics_interval_ms: int
) -> AbstractAsyncContextManager[PartitionedPublisher]:
    """One transactional publisher per owned partition, opened as partitions are taken over."""

    def open_partition(
        kafka: KafkaConfig, stats: DeliveryStats
    ) -> AbstractAsyncContextManager[TransactionalPublisher]:
        return open_transactional_publisher(
            kafka,
            clock=now_utc,
            grace_seconds=config.shutdown_grace_seconds,
            statistics_interval_ms=statistics_interval_ms,
            stats=stats,
        )

    return open_partitioned_publisher(config.kafka, open_partition)


@dataclass(frozen=True)
class Group:
    """This instance's side of the group, for `run_service`."""

    ownership: Ownership
    subscriptions: LatestSubscriptions
    sharding: Sharding
    rebalances: MemoryObjectReceiveStream[Rebalance]

    @property
    def stats(self) -> GroupStats:
        return self.sharding.stats

    def forget_rows_of_lost_partitions(self, board: MarketBoard) -> None:
        """A lost partition's markets leave the dashboard at once."""

        def forget(partition: int) -> None:
            for market_id in board.market_ids():
                if self.ownership.partition_of(market_id) == partition:
                    board.forget(market_id)

        self.sharding.on_lost = forget

    async def group(self) -> None:
        """The background stage "group": every rebalance, handled in order."""
        await self.sharding.run(self.rebalances)


def join_group(
    config: AppConfig,
    membership: Membership,
    publisher: PartitionedPublisher,
    health: ServiceHealth,
    restore: RestoreStates,
) -> Group:
    """Wire the ownership, the filtered subscriptions and `Sharding` (readiness component
    "group"); a fenced partition is lost as a revoked one is."""
    ownership = Ownership(config.kafka.state_partitions)
    subscriptions = LatestSubscriptions(ownership.owns)
    tail = membership.tail

    async def restore_partitions(
        partitions: Collection[int],
    ) -> Sequence[MarketState | ClosedMarket]:
        read = None if tail is None else partial(tail.catch_up, partitions)
        return await restore(config, only=partitions, read=read)

    stats = GroupStats(
        config.kafka.group_id, membership.member.instance, config.kafka.state_partitions
    )
    sharding = Sharding(ownership, publisher, subscriptions, restore_partitions, stats)
    publisher.on_fenced = sharding.fenced
    health.add_check("group", sharding.check)
    return Group(ownership, subscriptions, sharding, membership.rebalances)
