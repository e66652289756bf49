"""`app_group`: the wiring of several instances (no broker): `join_group` connects the
ownership, the filtered subscriptions, `Sharding`, the readiness component "group", the
fencing callback and the restore (through the standby's tail when there is one);
`open_group_publisher` opens one transactional publisher per partition with the service's
settings. `open_membership` against a real broker is in tests/component/test_group_kafka.py.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from polymarket_kafka import app_group
from polymarket_kafka.app_group import (
    Membership,
    instance_name,
    join_group,
    open_group_publisher,
)
from polymarket_kafka.config import AppConfig, KafkaConfig
from polymarket_kafka.detector_state import ClosedMarket, MarketState
from polymarket_kafka.kafka.group import GroupMember, Rebalance
from polymarket_kafka.kafka.partition import partition_for
from polymarket_kafka.kafka.partitioned import PartitionedPublisher
from polymarket_kafka.kafka.state_tail import StateTail
from polymarket_kafka.kafka.transactional import (
    TransactionalPublisher,
    open_transactional_publisher,
)
from polymarket_kafka.models import PolymarketSubscription
from polymarket_kafka.ops.board import MarketBoard
from polymarket_kafka.ops.dashboard import Dashboard
from polymarket_kafka.ops.health import ServiceHealth
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.service.sharding import GroupStats
from polymarket_kafka.service.stats import ServiceStats
from tests.unit.test_board import snap
from tests.unit.test_kafka_transactional_fake import FakeKafka

pytestmark = pytest.mark.anyio

KAFKA = KafkaConfig(
    bootstrap_servers="fake:9092",
    topic_prefix="t.",
    state_topic="state",
    state_partitions=3,
    group_id="markets",
)
CONFIG = AppConfig(kafka=KAFKA, shutdown_grace_seconds=4.0)
MARKETS = [f"0x{n:064x}" for n in range(1, 13)]


@dataclass
class RecordingRestore:
    """`app.restore_states` double: records its arguments; a `read` given is called."""

    states: list[MarketState | ClosedMarket] = field(default_factory=list)
    calls: list[tuple[AppConfig, frozenset[int] | None, bool]] = field(default_factory=list)
    read_results: list[dict[str, bytes]] = field(default_factory=list)

    async def __call__(
        self,
        config: AppConfig,
        *,
        only: Collection[int] | None = None,
        read: Callable[[], dict[str, bytes]] | None = None,
    ) -> list[MarketState | ClosedMarket]:
        self.calls.append((config, None if only is None else frozenset(only), read is not None))
        if read is not None:
            self.read_results.append(read())
        return list(self.states)


class CatchingUpTail(StateTail):
    """A standby tail that is never run: `catch_up` answers from `records`."""

    def __init__(self, records: dict[str, bytes]) -> None:
        super().__init__(KAFKA)
        self.records = records
        self.asked: list[list[int]] = []

    def catch_up(self, partitions: Collection[int], timeout: float = 30.0) -> dict[str, bytes]:
        self.asked.append(sorted(partitions))
        return dict(self.records)


def membership(
    tail: StateTail | None = None,
) -> tuple[Membership, anyio.abc.ObjectSendStream[Rebalance]]:
    send, receive = anyio.create_memory_object_stream[Rebalance](4)
    member = GroupMember(KAFKA, lambda rebalance: True, instance="host-9")
    return Membership(member, receive, tail), send


class NoPartition:
    """An `OpenPartition` that is never called (`HeldPublisher` opens nothing)."""

    def __call__(self, config: KafkaConfig, stats: Any) -> Any:
        raise AssertionError("no partition is opened in these tests")


class HeldPublisher(PartitionedPublisher):
    """A `PartitionedPublisher` whose partitions are acquired and released on paper."""

    def __init__(self, tasks: anyio.abc.TaskGroup) -> None:
        super().__init__(KAFKA, NoPartition(), tasks)
        self.calls: list[tuple[str, int]] = []

    async def acquire(self, partition: int) -> bool:
        self.calls.append(("acquire", partition))
        return True

    async def release(self, partition: int, *, commit: bool) -> None:
        self.calls.append(("release" if commit else "release-lost", partition))


def test_the_instance_is_named_after_the_host_and_the_process() -> None:
    assert instance_name() == f"{socket.gethostname()}-{os.getpid()}"


async def test_join_group_wires_ownership_subscriptions_and_readiness() -> None:
    members, send = membership()
    health = ServiceHealth()
    restore = RecordingRestore([ClosedMarket(MARKETS[0])])
    async with anyio.create_task_group() as tasks, send:
        publisher = HeldPublisher(tasks)
        group = join_group(CONFIG, members, publisher, health, restore)
        assert group.rebalances is members.rebalances
        assert group.stats is group.sharding.stats
        assert (group.stats.group_id, group.stats.instance, group.stats.partitions) == (
            "markets",
            "host-9",
            3,
        )
        assert group.ownership.partitions == 3
        # A fenced partition is lost as a revoked one is.
        assert publisher.on_fenced == group.sharding.fenced
        # Readiness: "group", joining until the first assignment is handled.
        ready = health.ready(anyio.current_time()).components["group"]
        assert not ready.ok
        assert ready.detail == "joining consumer group markets as host-9"

        # The subscriptions are filtered by the ownership.
        group.subscriptions.set(
            tuple(PolymarketSubscription(market_id=m, ref_count=1) for m in MARKETS)
        )
        assert group.subscriptions.market_ids() == frozenset()
        partition = partition_for(MARKETS[0].encode(), 3)
        await group.sharding.handle("assigned", frozenset({partition}))
        assert group.subscriptions.market_ids() == frozenset(
            m for m in MARKETS if partition_for(m.encode(), 3) == partition
        )
        assert health.ready(anyio.current_time()).components["group"].ok
        # Without a standby, the partitions are read from the state topic.
        assert restore.calls == [(CONFIG, frozenset({partition}), False)]
        assert group.stats.markets_restored == 1

        publisher.on_fenced(partition)
        assert group.ownership.owned == frozenset()
        assert group.stats.rebalances["fenced"] == 1
        members.rebalances.close()


async def test_with_a_standby_the_partitions_are_caught_up_from_its_tail() -> None:
    tail = CatchingUpTail({MARKETS[1]: b"state"})
    members, send = membership(tail)
    restore = RecordingRestore()
    async with anyio.create_task_group() as tasks, send:
        publisher = HeldPublisher(tasks)
        group = join_group(CONFIG, members, publisher, ServiceHealth(), restore)
        await group.sharding.handle("assigned", frozenset({0, 2}))
        members.rebalances.close()
    assert restore.calls == [(CONFIG, frozenset({0, 2}), True)]
    assert tail.asked == [[0, 2]]
    assert restore.read_results == [{MARKETS[1]: b"state"}]


async def test_the_group_stage_handles_every_rebalance_the_member_hands_over() -> None:
    members, send = membership()
    restore = RecordingRestore()
    async with anyio.create_task_group() as tasks:
        publisher = HeldPublisher(tasks)
        group = join_group(CONFIG, members, publisher, ServiceHealth(), restore)
        rebalances = [
            Rebalance("assigned", frozenset({0, 1})),
            Rebalance("revoked", frozenset({1})),
        ]
        async with send:
            for rebalance in rebalances:
                await send.send(rebalance)
        with anyio.fail_after(5):
            await group.group()  # until the member's side is closed
    assert all(r.handled.is_set() for r in rebalances)
    assert group.ownership.owned == {0}
    assert sorted(publisher.calls[:2]) == [("acquire", 0), ("acquire", 1)]  # concurrently
    assert publisher.calls[2:] == [("release", 1)]


async def test_a_lost_partitions_rows_leave_the_dashboard_at_once() -> None:
    members, send = membership()
    async with anyio.create_task_group() as tasks:
        publisher = HeldPublisher(tasks)
        group = join_group(CONFIG, members, publisher, ServiceHealth(), RecordingRestore())
        board = MarketBoard(stale_after_seconds=60)
        group.forget_rows_of_lost_partitions(board)
        markets = [f"0x{n:064x}" for n in range(12)]
        for market_id in markets:
            board.observe(snap(market_id))
        await group.sharding.handle("assigned", frozenset({0, 1}))
        await group.sharding.handle("revoked", frozenset({1}))
        await send.aclose()
        group.rebalances.close()
    assert board.market_ids() == {m for m in markets if group.ownership.partition_of(m) != 1}
    assert len(board.market_ids()) < len(markets)


@dataclass
class OpenedWith:
    configs: list[KafkaConfig] = field(default_factory=list)
    options: list[dict[str, Any]] = field(default_factory=list)


async def test_open_group_publisher_opens_each_partition_with_the_services_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kafka = FakeKafka()
    opened = OpenedWith()

    def recording_open(
        config: KafkaConfig, **options: Any
    ) -> AbstractAsyncContextManager[TransactionalPublisher]:
        opened.configs.append(config)
        opened.options.append(options)
        return open_transactional_publisher(config, producer_factory=kafka, **options)

    monkeypatch.setattr(app_group, "open_transactional_publisher", recording_open)
    async with open_group_publisher(CONFIG, statistics_interval_ms=250) as publisher:
        assert isinstance(publisher, PartitionedPublisher)
        assert publisher.held() == frozenset()
        await publisher.acquire(2)
        assert publisher.held() == {2}
    (config,) = opened.configs
    assert config.transactional_id == "markets.t.state.2"
    (options,) = opened.options
    assert options["grace_seconds"] == 4.0
    assert options["statistics_interval_ms"] == 250
    assert options["stats"] is publisher.stats
    assert kafka.producers[0].conf["transactional.id"] == "markets.t.state.2"


def test_the_dashboard_names_the_instance_and_its_partitions() -> None:
    group = GroupStats("markets", "host-7", 12, owned=frozenset({4, 1}), joined=True)
    group.restoring = frozenset({9})
    dashboard = Dashboard(
        MarketBoard(stale_after_seconds=60),
        ServiceHealth(),
        RulesHolder(),
        ServiceStats(),
        lambda: datetime(2024, 11, 5, 23, 0, tzinfo=UTC),
        group=group,
    )
    feed = dashboard.health_payload(0.0)["feed"]
    assert feed["group"] == {
        "group_id": "markets",
        "instance": "host-7",
        "partitions": 12,
        "owned": [1, 4],
        "restoring": [9],
        "rebalances": {"assigned": 0, "revoked": 0, "lost": 0, "fenced": 0},
    }
    alone = Dashboard(
        MarketBoard(stale_after_seconds=60),
        ServiceHealth(),
        RulesHolder(),
        ServiceStats(),
        lambda: datetime(2024, 11, 5, 23, 0, tzinfo=UTC),
    )
    assert "group" not in alone.health_payload(0.0)["feed"]
