"""`Sharding`: each rebalance applied, in order, to the publisher, the ownership and the
subscriptions, against a fake `Partitions` publisher and a fake restore that record what
they saw when they were called (so the order of the steps is asserted, not assumed)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import pytest

from polymarket_kafka.detector_state import ClosedMarket, MarketState
from polymarket_kafka.kafka.group import Rebalance
from polymarket_kafka.kafka.partition import partition_for
from polymarket_kafka.models import PolymarketSubscription
from polymarket_kafka.service.ownership import Ownership, PartitionChange
from polymarket_kafka.service.sharding import GroupStats, Sharding
from polymarket_kafka.service.stages import LatestSubscriptions

pytestmark = pytest.mark.anyio

PARTITIONS = 3
MARKETS = [f"0x{n:064x}" for n in range(1, 31)]
SPLIT: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
for _market in MARKETS:
    SPLIT[partition_for(_market.encode(), PARTITIONS)].append(_market)


class FakeClock:
    """The monotonic clock `Sharding` times takeovers with, moved by the fakes."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Seen:
    """What the ownership and the subscriptions were when a fake was called."""

    owned: frozenset[int]
    subscribed: frozenset[str]


@dataclass
class FakePartitions:
    """`Partitions` double: records acquire / release and what was owned at the time."""

    clock: FakeClock
    ownership: Ownership
    subscriptions: LatestSubscriptions
    calls: list[tuple[str, int, bool | None]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    held: set[int] = field(default_factory=set)
    #: Partitions whose producer another writer fences while they are acquired.
    fenced: set[int] = field(default_factory=set)
    acquire_seconds: float = 0.25

    def _see(self) -> None:
        self.seen.append(Seen(self.ownership.owned, self.subscriptions.market_ids()))

    async def acquire(self, partition: int) -> bool:
        self._see()
        await anyio.lowlevel.checkpoint()
        self.clock.now += self.acquire_seconds
        self.calls.append(("acquire", partition, None))
        if partition in self.fenced:
            return False
        self.held.add(partition)
        return True

    async def release(self, partition: int, *, commit: bool) -> None:
        self._see()
        await anyio.lowlevel.checkpoint()
        self.held.discard(partition)
        self.calls.append(("release", partition, commit))


@dataclass
class FakeRestore:
    """`PartitionRestore` double: returns `states`, records what was asked and held."""

    clock: FakeClock
    publisher: FakePartitions
    states: list[MarketState | ClosedMarket] = field(default_factory=list)
    seconds: float = 1.0
    error: BaseException | None = None
    asked: list[frozenset[int]] = field(default_factory=list)
    held_then: list[frozenset[int]] = field(default_factory=list)
    owned_then: list[frozenset[int]] = field(default_factory=list)
    readiness_then: list[tuple[bool, str]] = field(default_factory=list)
    sharding: Sharding | None = None

    async def __call__(self, partitions: Collection[int]) -> Sequence[MarketState | ClosedMarket]:
        self.asked.append(frozenset(partitions))
        self.held_then.append(frozenset(self.publisher.held))
        self.owned_then.append(self.publisher.ownership.owned)
        if self.sharding is not None:
            status = self.sharding.check()
            self.readiness_then.append((status.ok, status.detail))
        await anyio.lowlevel.checkpoint()
        self.clock.now += self.seconds
        if self.error is not None:
            raise self.error
        return list(self.states)


@dataclass
class World:
    clock: FakeClock
    ownership: Ownership
    subscriptions: LatestSubscriptions
    publisher: FakePartitions
    restore: FakeRestore
    stats: GroupStats
    sharding: Sharding


def world(states: list[MarketState | ClosedMarket] | None = None) -> World:
    clock = FakeClock()
    ownership = Ownership(PARTITIONS)
    subscriptions = LatestSubscriptions(ownership.owns)
    subscriptions.set(tuple(PolymarketSubscription(market_id=m, ref_count=1) for m in MARKETS))
    publisher = FakePartitions(clock, ownership, subscriptions)
    restore = FakeRestore(clock, publisher, states or [])
    stats = GroupStats("markets", "host-1", PARTITIONS)
    sharding = Sharding(ownership, publisher, subscriptions, restore, stats, monotonic=clock)
    restore.sharding = sharding
    return World(clock, ownership, subscriptions, publisher, restore, stats, sharding)


# --- assigned ---------------------------------------------------------------------------------


async def test_assigned_partitions_are_acquired_then_restored_then_owned() -> None:
    states: list[MarketState | ClosedMarket] = [
        ClosedMarket(SPLIT[0][0]),
        ClosedMarket(SPLIT[0][1]),
        ClosedMarket(SPLIT[2][0]),
    ]
    w = world(states)
    await w.sharding.handle("assigned", frozenset({0, 2}))

    # Acquired concurrently (each fences the partition's previous owner).
    assert sorted(w.publisher.calls) == [("acquire", 0, None), ("acquire", 2, None)]
    # The restore ran once every partition was acquired (the previous owner fenced), and
    # before anything was owned.
    assert w.restore.asked == [frozenset({0, 2})]
    assert w.restore.held_then == [frozenset({0, 2})]
    assert w.restore.owned_then == [frozenset()]
    assert all(seen.owned == frozenset() for seen in w.publisher.seen)

    assert w.ownership.owned == {0, 2}
    changes = sorted(w.ownership.take_changes(), key=lambda c: c.partition)
    assert changes == [
        PartitionChange(0, True, (ClosedMarket(SPLIT[0][0]), ClosedMarket(SPLIT[0][1]))),
        PartitionChange(2, True, (ClosedMarket(SPLIT[2][0]),)),
    ]
    # The subscriptions follow at once.
    assert w.subscriptions.market_ids() == frozenset(SPLIT[0] + SPLIT[2])


async def test_a_partition_fenced_while_acquired_is_neither_restored_nor_owned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = world([ClosedMarket(SPLIT[0][0]), ClosedMarket(SPLIT[2][0])])
    w.publisher.fenced.add(2)
    with caplog.at_level(logging.ERROR, logger="polymarket_kafka.service.sharding"):
        await w.sharding.handle("assigned", frozenset({0, 2}))

    assert w.restore.asked == [frozenset({0})]
    assert w.ownership.owned == {0}
    assert w.stats.owned == {0}
    assert w.stats.restoring == frozenset()
    assert w.stats.takeover_seconds.count == 1
    assert [r.getMessage() for r in caplog.records] == [
        "partitions 2 assigned but fenced by another writer while taken over: not served here"
    ]


async def test_an_assignment_fenced_entirely_restores_nothing() -> None:
    w = world([ClosedMarket(SPLIT[1][0])])
    w.publisher.fenced.add(1)
    await w.sharding.handle("assigned", frozenset({1}))

    assert w.restore.asked == []
    assert w.ownership.owned == frozenset()
    assert w.stats.joined
    assert (w.stats.restoring, w.stats.takeover_seconds.count) == (frozenset(), 0)


async def test_an_empty_assignment_joins_with_nothing_owned_and_is_not_counted() -> None:
    w = world()
    await w.sharding.handle("assigned", frozenset())
    await w.sharding.handle("revoked", frozenset())

    assert w.sharding.check().ok
    assert w.sharding.check().detail == "owns partitions none of 3 (group markets as host-1)"
    assert w.publisher.calls == [] and w.restore.asked == []
    assert w.stats.rebalances == {"assigned": 0, "revoked": 0, "lost": 0, "fenced": 0}


async def test_every_lost_partition_is_told_to_on_lost() -> None:
    w = world()
    told: list[int] = []
    w.sharding.on_lost = told.append
    await w.sharding.handle("assigned", frozenset({0, 1, 2}))
    await w.sharding.handle("revoked", frozenset({0}))
    await w.sharding.handle("lost", frozenset({2}))
    w.sharding.fenced(1)
    assert told == [0, 2, 1]


async def test_a_partition_with_no_state_is_gained_with_none() -> None:
    w = world([ClosedMarket(SPLIT[0][0])])
    await w.sharding.handle("assigned", frozenset({0, 1}))
    changes = {c.partition: c.states for c in w.ownership.take_changes()}
    assert changes == {0: (ClosedMarket(SPLIT[0][0]),), 1: ()}


async def test_a_stray_record_on_a_partition_it_does_not_hash_to_is_ignored() -> None:
    """The restore of partitions {0} returned a state of a market of partition 1 (written
    there by a producer with another partitioner): not taken over, not counted."""
    w = world([ClosedMarket(SPLIT[0][0]), ClosedMarket(SPLIT[1][0])])
    await w.sharding.handle("assigned", frozenset({0}))
    (change,) = w.ownership.take_changes()
    assert change == PartitionChange(0, True, (ClosedMarket(SPLIT[0][0]),))
    assert w.ownership.owned == {0}
    assert w.stats.markets_restored == 1


async def test_assignments_add_up() -> None:
    w = world([ClosedMarket(SPLIT[1][0])])
    await w.sharding.handle("assigned", frozenset({0}))
    await w.sharding.handle("assigned", frozenset({1}))
    assert w.ownership.owned == {0, 1}
    assert w.stats.owned == {0, 1}
    assert w.stats.rebalances == {"assigned": 2, "revoked": 0, "lost": 0, "fenced": 0}
    assert w.stats.markets_restored == 1
    assert w.restore.asked == [frozenset({0}), frozenset({1})]
    assert w.subscriptions.market_ids() == frozenset(SPLIT[0] + SPLIT[1])


async def test_takeover_and_restore_times_are_observed_per_partition() -> None:
    w = world()
    w.publisher.acquire_seconds = 0.25
    w.restore.seconds = 1.0
    await w.sharding.handle("assigned", frozenset({0, 1, 2}))
    # One observation per partition: restore 1 s; takeover = 3 acquires + the restore.
    assert w.stats.restore_seconds.count == 3
    assert w.stats.restore_seconds.sum == pytest.approx(3.0)
    assert w.stats.takeover_seconds.count == 3
    assert w.stats.takeover_seconds.sum == pytest.approx(3 * 1.75)
    assert dict(w.stats.restore_seconds.cumulative())[1.0] == 3
    assert dict(w.stats.takeover_seconds.cumulative())[1.0] == 0
    assert dict(w.stats.takeover_seconds.cumulative())[2.5] == 3


async def test_the_takeover_is_logged_with_its_times(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "polymarket_kafka.service.sharding")
    w = world([ClosedMarket(SPLIT[2][0])])
    await w.sharding.handle("assigned", frozenset({2}))
    (record,) = [r for r in caplog.records if "taken over" in r.getMessage()]
    assert record.getMessage() == (
        "partitions 2 taken over in 1.25s (fenced in 0.25s, 1 markets restored); this "
        "instance owns 2"
    )


# --- readiness ----------------------------------------------------------------------------------


async def test_readiness_is_joining_until_the_first_assignment_is_handled() -> None:
    w = world()
    status = w.sharding.check()
    assert not status.ok
    assert status.detail == "joining consumer group markets as host-1"


async def test_readiness_is_restoring_while_partitions_are_read() -> None:
    w = world()
    await w.sharding.handle("assigned", frozenset({1}))
    await w.sharding.handle("assigned", frozenset({0, 2}))
    first, second = w.restore.readiness_then
    assert first == (False, "joining consumer group markets as host-1")
    assert second == (
        False,
        "restoring partitions 0,2 (group markets as host-1; owns 1)",
    )
    status = w.sharding.check()
    assert status.ok
    assert status.detail == "owns partitions 0,1,2 of 3 (group markets as host-1)"
    assert status.extra == {"owned": [0, 1, 2], "restoring": []}
    assert w.stats.restoring == frozenset()


async def test_readiness_of_a_member_left_with_nothing() -> None:
    w = world()
    await w.sharding.handle("assigned", frozenset({1}))
    await w.sharding.handle("revoked", frozenset({1}))
    status = w.sharding.check()
    assert status.ok  # joined: owning nothing is a legitimate share
    assert status.detail == "owns partitions none of 3 (group markets as host-1)"
    assert status.to_json()["owned"] == []


async def test_a_failed_restore_leaves_nothing_owned_or_restoring() -> None:
    w = world()
    w.restore.error = RuntimeError("state topic unreadable")
    with pytest.raises(RuntimeError, match="state topic unreadable"):
        await w.sharding.handle("assigned", frozenset({0}))
    assert w.stats.restoring == frozenset()
    assert w.ownership.owned == frozenset()
    assert w.ownership.take_changes() == []
    assert not w.stats.joined
    assert w.sharding.check().detail.startswith("joining")


# --- revoked, lost, fenced ---------------------------------------------------------------------


async def test_revoked_partitions_are_lost_before_their_publishers_commit_and_close() -> None:
    w = world()
    await w.sharding.handle("assigned", frozenset({0, 1, 2}))
    w.ownership.take_changes()
    w.publisher.seen.clear()
    await w.sharding.handle("revoked", frozenset({2, 0}))

    # Released concurrently (each may take the grace period to commit).
    assert sorted(w.publisher.calls[3:]) == [("release", 0, True), ("release", 2, True)]
    # Both releases saw both partitions lost already and the subscriptions refiltered: no
    # new observation of their markets reaches the publisher being closed.
    assert [seen.owned for seen in w.publisher.seen] == [frozenset({1})] * 2
    assert [seen.subscribed for seen in w.publisher.seen] == [frozenset(SPLIT[1])] * 2
    assert w.ownership.owned == {1}
    assert w.stats.owned == {1}
    assert sorted((c.partition, c.gained) for c in w.ownership.take_changes()) == [
        (0, False),
        (2, False),
    ]
    assert w.stats.rebalances["revoked"] == 1


async def test_lost_partitions_are_released_without_a_commit() -> None:
    w = world()
    await w.sharding.handle("assigned", frozenset({0, 1}))
    await w.sharding.handle("lost", frozenset({1}))
    assert w.publisher.calls[-1] == ("release", 1, False)
    assert w.publisher.seen[-1].owned == frozenset({0})
    assert w.ownership.owned == {0}
    assert w.subscriptions.market_ids() == frozenset(SPLIT[0])
    assert w.stats.rebalances == {"assigned": 1, "revoked": 0, "lost": 1, "fenced": 0}


async def test_losing_partitions_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "polymarket_kafka.service.sharding")
    w = world()
    await w.sharding.handle("assigned", frozenset({0, 1}))
    await w.sharding.handle("lost", frozenset({0, 1}))
    assert (
        "partitions 0,1 lost: their markets are left to their new owner; this instance owns "
        "none" in caplog.messages
    )


async def test_a_fenced_partition_is_lost_without_a_release() -> None:
    w = world()
    await w.sharding.handle("assigned", frozenset({0, 2}))
    w.ownership.take_changes()
    calls = list(w.publisher.calls)
    w.sharding.fenced(2)
    assert w.publisher.calls == calls  # the publisher closed it already
    assert w.ownership.owned == {0}
    assert w.stats.owned == {0}
    assert w.subscriptions.market_ids() == frozenset(SPLIT[0])
    assert w.ownership.take_changes() == [PartitionChange(2, False)]
    assert w.stats.rebalances["fenced"] == 1
    # The group then revokes (or loses) it as well: handled, nothing left to change.
    await w.sharding.handle("lost", frozenset({2}))
    assert w.ownership.take_changes() == []
    assert w.ownership.owned == {0}


async def test_group_stats_to_json() -> None:
    w = world()
    await w.sharding.handle("assigned", frozenset({2, 0}))
    assert w.stats.to_json() == {
        "group_id": "markets",
        "instance": "host-1",
        "partitions": 3,
        "owned": [0, 2],
        "restoring": [],
        "rebalances": {"assigned": 1, "revoked": 0, "lost": 0, "fenced": 0},
    }


# --- run: the rebalances the group member's thread hands over -------------------------------


async def test_run_handles_each_rebalance_in_order_and_releases_its_waiter() -> None:
    w = world()
    send, receive = anyio.create_memory_object_stream[Rebalance](4)
    rebalances = [
        Rebalance("assigned", frozenset({0, 1})),
        Rebalance("revoked", frozenset({1})),
        Rebalance("lost", frozenset({0})),
        Rebalance("assigned", frozenset({2})),
    ]
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(w.sharding.run, receive)
        async with send:
            for rebalance in rebalances:
                await send.send(rebalance)
        with anyio.fail_after(5):
            while not all(r.handled.is_set() for r in rebalances):  # noqa: ASYNC110
                await anyio.sleep(0.001)
    assert sorted(w.publisher.calls[:2]) == [("acquire", 0, None), ("acquire", 1, None)]
    assert w.publisher.calls[2:] == [
        ("release", 1, True),
        ("release", 0, False),
        ("acquire", 2, None),
    ]
    assert w.ownership.owned == {2}
    assert w.stats.rebalances == {"assigned": 2, "revoked": 1, "lost": 1, "fenced": 0}


async def test_run_sets_handled_even_when_handling_raises() -> None:
    """The group member's thread must never wait for a rebalance the loop gave up on."""
    w = world()
    w.restore.error = RuntimeError("restore exploded")
    send, receive = anyio.create_memory_object_stream[Rebalance](4)
    failing = Rebalance("assigned", frozenset({0}))
    send.send_nowait(failing)
    with send:
        with pytest.raises(RuntimeError, match="restore exploded"):
            await w.sharding.run(receive)
        assert failing.handled.is_set()
        # The receive side was closed on the way out: the thread's next hand-over is refused.
        with pytest.raises(anyio.BrokenResourceError):
            send.send_nowait(Rebalance("revoked", frozenset({0})))


async def test_run_ends_when_the_member_closes_the_stream() -> None:
    w = world()
    send, receive = anyio.create_memory_object_stream[Rebalance](4)
    send.close()
    with anyio.fail_after(5):
        await w.sharding.run(receive)
    assert w.publisher.calls == []


async def test_revoked_partitions_are_released_at_once_not_one_after_another() -> None:
    """Each release may take the grace period to commit: released one after another,
    revoking many partitions from a slow Kafka would outlast the group's rebalance."""

    class Barrier:
        def __init__(self, parties: int) -> None:
            self.parties = parties
            self.started: set[int] = set()
            self.all_started = anyio.Event()

        async def acquire(self, partition: int) -> bool:
            return True

        async def release(self, partition: int, *, commit: bool) -> None:
            self.started.add(partition)
            if len(self.started) == self.parties:
                self.all_started.set()
            await self.all_started.wait()  # one after another, the first waits forever

    ownership = Ownership(PARTITIONS)
    subscriptions = LatestSubscriptions(ownership.owns)
    barrier = Barrier(PARTITIONS)
    sharding = Sharding(
        ownership, barrier, subscriptions, FakeRestoreNothing(), GroupStats("g", "i", PARTITIONS)
    )
    await sharding.handle("assigned", frozenset(range(PARTITIONS)))
    with anyio.fail_after(5):
        await sharding.handle("revoked", frozenset(range(PARTITIONS)))
    assert barrier.started == set(range(PARTITIONS))


class FakeRestoreNothing:
    async def __call__(self, partitions: Collection[int]) -> list[MarketState | ClosedMarket]:
        return []
