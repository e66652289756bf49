"""Several instances on a real broker (Tansu, in memory, on loopback): the consumer group
that shares the state topic's partitions (`GroupMember`, `open_group_member`), reading some
partitions' states (`read_state(only=...)`), the standby's tail (`StateTail`) and the
per-partition transactional publishers fencing each other (`PartitionedPublisher`).

Tansu holds a group's first assignment for session.timeout.ms / 2 (TEST-SERVERS.md): every
member here uses a 1 s session. Waits are bounded waits for a state, never sleeps.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from polymarket_kafka.app_group import instance_name, open_membership
from polymarket_kafka.config import AppConfig, KafkaConfig
from polymarket_kafka.kafka import group as group_module
from polymarket_kafka.kafka.delivery import DeliveryStats
from polymarket_kafka.kafka.group import (
    GroupMember,
    Rebalance,
    RebalanceKind,
    group_consumer_config,
    open_group_member,
)
from polymarket_kafka.kafka.partition import partition_for
from polymarket_kafka.kafka.partitioned import PartitionedPublisher, open_partitioned_publisher
from polymarket_kafka.kafka.state_tail import StateTail
from polymarket_kafka.kafka.state_topic import (
    StateTopicError,
    StateWriter,
    ensure_state_topic,
    read_state,
)
from polymarket_kafka.kafka.transactional import (
    TransactionalPublisher,
    open_transactional_publisher,
)
from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.testing.local_broker import LocalBroker, create_topic, read_events
from tests import factories

pytestmark = pytest.mark.broker

PARTITIONS = 3
ALL = frozenset(range(PARTITIONS))
T0 = datetime(2024, 11, 6, 1, 0, tzinfo=UTC)
MARKETS = [f"0x{n:064x}" for n in range(1, 31)]
SPLIT: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
for _market in MARKETS:
    SPLIT[partition_for(_market.encode(), PARTITIONS)].append(_market)


def group_config(broker: LocalBroker, **overrides: object) -> KafkaConfig:
    fields: dict[str, object] = {
        "bootstrap_servers": broker.bootstrap_servers,
        "topic_prefix": f"t{uuid.uuid4().hex[:8]}.",
        "state_topic": "state",
        "state_partitions": PARTITIONS,
        "group_id": f"g{uuid.uuid4().hex[:8]}",
        "group_session_timeout_ms": 1000,
    }
    fields.update(overrides)
    return KafkaConfig(**fields)  # type: ignore[arg-type]


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


# --- the consumer group -----------------------------------------------------------------------


@dataclass
class Member:
    """A `GroupMember` run in a thread, whose rebalances are "handled" at once (the loop's
    part, done by the hand-over itself)."""

    member: GroupMember
    thread: threading.Thread
    seen: list[tuple[RebalanceKind, frozenset[int]]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def kinds(self) -> list[RebalanceKind]:
        return [kind for kind, _ in self.seen]

    def owned(self) -> frozenset[int]:
        """What the rebalances handed over add up to (as the loop would know it)."""
        owned: frozenset[int] = frozenset()
        for kind, partitions in self.seen:
            owned = owned | partitions if kind == "assigned" else owned - partitions
        return owned


@contextmanager
def running_member(config: KafkaConfig, instance: str) -> Iterator[Member]:
    lock = threading.Lock()
    seen: list[tuple[RebalanceKind, frozenset[int]]] = []

    def hand_over(rebalance: Rebalance) -> bool:
        with lock:
            seen.append((rebalance.kind, rebalance.partitions))
        rebalance.handled.set()
        return True

    member = GroupMember(config, hand_over, instance=instance, handling_timeout=10.0)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            member.run()
        except BaseException as exc:  # reported to the test
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"member-{instance}")
    running = Member(member, thread, seen, errors)
    thread.start()
    try:
        yield running
    finally:
        member.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), f"member {instance} did not leave the group"


def test_the_consumer_config_joins_the_group_cooperatively() -> None:
    config = KafkaConfig(
        bootstrap_servers="k:9092", state_topic="s", group_id="g", group_session_timeout_ms=6000
    )
    conf = group_consumer_config(config, "host-7")
    assert conf["group.id"] == "g"
    assert conf["client.id"] == "polymarket-kafka-producer.host-7"
    assert conf["partition.assignment.strategy"] == "cooperative-sticky"
    assert conf["session.timeout.ms"] == 6000
    assert conf["heartbeat.interval.ms"] == 1200
    assert conf["max.poll.interval.ms"] == 60_000
    assert conf["enable.auto.commit"] is False
    assert conf["allow.auto.create.topics"] is False
    assert conf["isolation.level"] == "read_committed"


def test_two_members_split_the_partitions_and_the_survivor_gets_them_all(
    tansu_broker: LocalBroker,
) -> None:
    config = group_config(tansu_broker)
    with running_member(config, "a") as a:
        # Alone, it creates the state topic and is given every partition.
        wait_for(lambda: a.owned() == ALL)
        assert a.seen[0] == ("assigned", ALL)
        assert a.member.assigned == ALL
        with running_member(config, "b") as b:
            wait_for(lambda: a.owned() | b.owned() == ALL and bool(b.owned()))
            wait_for(lambda: not a.owned() & b.owned() and bool(a.owned()))
            # Cooperative: a handed back only what moved (revoked), it was never emptied.
            assert "revoked" in a.kinds()
            moved = ALL - a.owned()
            assert b.owned() == moved
            assert b.kinds()[0] == "assigned"
            assert a.member.assigned == a.owned()
            assert b.member.assigned == b.owned()
        # b left the group (an orderly close): its partitions were revoked from it, and a
        # is given them back.
        assert b.kinds()[-1] == "revoked" and b.owned() == frozenset()
        assert not b.errors
        wait_for(lambda: a.owned() == ALL)
        assert a.kinds()[-1] == "assigned"
        assert a.seen[-1][1] == moved
    assert not a.errors
    # Leaving, a handed everything back too.
    assert a.kinds()[-1] == "revoked" and a.owned() == frozenset()


def test_a_state_topic_with_another_partition_count_is_refused(
    tansu_broker: LocalBroker,
) -> None:
    config = group_config(tansu_broker, state_partitions=4)
    create_topic(tansu_broker.bootstrap_servers, config.full_state_topic, partitions=2)
    handed: list[Rebalance] = []

    def hand_over(rebalance: Rebalance) -> bool:
        handed.append(rebalance)
        return True

    member = GroupMember(config, hand_over, instance="x")
    started = time.monotonic()
    with pytest.raises(StateTopicError) as caught:
        member.run()
    assert time.monotonic() - started < 15
    message = str(caught.value)
    assert config.full_state_topic in message
    assert "has 2 partitions but KAFKA_STATE_PARTITIONS is 4" in message
    assert "\n" not in message
    assert handed == []


class UnusedConsumer:
    """A consumer that is only closed: the member never gets as far as subscribing."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_member_retries_the_state_topic_until_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[float] = []

    def unreachable(config: KafkaConfig, *, timeout: float) -> bool:
        attempts.append(time.monotonic())
        raise StateTopicError("cannot create the state topic: no answer")

    monkeypatch.setattr(group_module, "ensure_state_topic", unreachable)
    consumers: list[UnusedConsumer] = []

    def factory(conf: dict[str, Any]) -> Any:
        consumers.append(UnusedConsumer(conf))
        return consumers[-1]

    config = KafkaConfig(
        bootstrap_servers="127.0.0.1:1", state_topic="state", group_id="g",
        group_session_timeout_ms=1000,
    )  # fmt: skip
    member = GroupMember(config, lambda r: True, instance="x", consumer_factory=factory)
    thread = threading.Thread(target=member.run)
    thread.start()
    wait_for(lambda: len(attempts) >= 2, timeout=10)  # retried (after 0.5 s)
    member.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert attempts[1] - attempts[0] >= 0.4
    (consumer,) = consumers
    assert consumer.closed  # left (it had not joined)
    assert consumer.conf["group.id"] == "g"
    assert member.assigned == frozenset()


@pytest.mark.anyio
async def test_open_group_member_hands_the_rebalances_to_the_loop(
    anyio_backend: str, tansu_broker: LocalBroker
) -> None:
    config = group_config(tansu_broker)
    with anyio.fail_after(25):
        async with open_group_member(config, "loop", handling_timeout=10.0) as (
            member,
            rebalances,
        ):
            with rebalances:
                assert member.instance == "loop"
                assert member.topic == config.full_state_topic
                first = await rebalances.receive()
                assert (first.kind, first.partitions) == ("assigned", ALL)
                assert member.assigned == ALL
                # The member's thread waits for the loop to handle it.
                assert not first.handled.is_set()
                first.handled.set()
                left_at = anyio.current_time()
        # Leaving: the revocation of the close is handed to no one (the loop is done with
        # the member), so the exit does not wait for the handling timeout.
        assert anyio.current_time() - left_at < 8
    assert member.assigned == frozenset()


@pytest.mark.anyio
async def test_open_membership_with_a_standby_tails_the_state_topic(
    anyio_backend: str, tansu_broker: LocalBroker
) -> None:
    config = AppConfig(kafka=group_config(tansu_broker, standby=True))
    with anyio.fail_after(25):
        async with open_membership(config) as membership:
            tail = membership.tail
            assert isinstance(tail, StateTail)
            with membership.rebalances:
                first = await membership.rebalances.receive()
                assert (first.kind, first.partitions) == ("assigned", ALL)
                assert membership.member.instance == instance_name()
                # The member created the state topic: the standby tails it.
                records: list[tuple[str, bytes | None]] = [(m, b"s") for m in SPLIT[2]]
                await anyio.to_thread.run_sync(functools.partial(write, config.kafka, records))
                caught = await anyio.to_thread.run_sync(functools.partial(tail.catch_up, [2], 15))
                assert caught == dict.fromkeys(SPLIT[2], b"s")
                first.handled.set()
        # Left: the tail was stopped with the member.
        with pytest.raises(StateTopicError, match="did not read partitions"):
            await anyio.to_thread.run_sync(functools.partial(tail.catch_up, [1], 15))


def write(config: KafkaConfig, records: list[tuple[str, bytes | None]]) -> None:
    with written(config, records):
        pass


# --- reading some partitions' states ------------------------------------------------------------


@contextmanager
def written(config: KafkaConfig, records: list[tuple[str, bytes | None]]) -> Iterator[None]:
    writer = StateWriter(config)
    try:
        assert writer.write(records, timeout=15) == []
        yield
    finally:
        writer.close()


def test_read_state_only_reads_the_partitions_asked_for(tansu_broker: LocalBroker) -> None:
    config = group_config(tansu_broker)
    ensure_state_topic(config)
    records: list[tuple[str, bytes | None]] = [(m, b"v-" + m.encode()) for m in MARKETS]
    records.append((SPLIT[1][0], None))  # deleted
    with written(config, records):
        pass
    only_one = read_state(config, only=[1], timeout=20)
    assert only_one == {m: b"v-" + m.encode() for m in SPLIT[1][1:]}
    two = read_state(config, only={0, 2}, timeout=20)
    assert two == {m: b"v-" + m.encode() for m in SPLIT[0] + SPLIT[2]}
    assert read_state(config, only=[], timeout=20) == {}
    everything = read_state(config, timeout=20)
    assert everything == only_one | two


def test_read_state_of_a_partition_the_topic_lacks_is_a_clear_error(
    tansu_broker: LocalBroker,
) -> None:
    config = group_config(tansu_broker)
    ensure_state_topic(config)
    with pytest.raises(StateTopicError) as caught:
        read_state(config, only=[1, PARTITIONS + 2], timeout=10)
    assert str(caught.value) == (
        f"the state topic {config.full_state_topic} has no partition {PARTITIONS + 2}"
    )


# --- the standby's tail -----------------------------------------------------------------------


@contextmanager
def tailing(config: KafkaConfig) -> Iterator[StateTail]:
    tail = StateTail(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            tail.run()
        except BaseException as exc:  # reported to the test
            errors.append(exc)

    thread = threading.Thread(target=run, name="state-tail")
    thread.start()
    try:
        yield tail
    finally:
        tail.stop()
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert not errors


def test_the_tail_follows_writes_and_catches_up_to_a_fence(tansu_broker: LocalBroker) -> None:
    config = group_config(tansu_broker)
    ensure_state_topic(config)
    first: list[tuple[str, bytes | None]] = [(m, b"v1") for m in MARKETS]
    with written(config, first), tailing(config) as tail:
        wait_for(lambda: tail.markets() == len(MARKETS))
        assert tail.catch_up([0, 2], timeout=20) == dict.fromkeys(SPLIT[0] + SPLIT[2], b"v1")
        # Written after: a catch-up includes everything committed before it was called.
        later: list[tuple[str, bytes | None]] = [(SPLIT[0][0], b"v2"), (SPLIT[2][0], None)]
        with written(config, later):
            pass
        caught = tail.catch_up([0, 2], timeout=20)
        assert caught[SPLIT[0][0]] == b"v2"
        assert SPLIT[2][0] not in caught  # the tombstone deleted it
        assert len(caught) == len(SPLIT[0]) + len(SPLIT[2]) - 1
        assert tail.catch_up([1], timeout=20) == dict.fromkeys(SPLIT[1], b"v1")
        assert tail.catch_up([], timeout=20) == {}
        assert tail.markets() == len(MARKETS) - 1
        # The fences it wrote (and their tombstones) are read, never kept as markets.
        assert tail.records_read > len(MARKETS) + 2


def test_a_tail_that_does_not_read_times_out_with_a_clear_error(
    tansu_broker: LocalBroker,
) -> None:
    config = group_config(tansu_broker)
    ensure_state_topic(config)
    tail = StateTail(config)  # never run: it never reads its fence
    started = time.monotonic()
    with pytest.raises(StateTopicError) as caught:
        tail.catch_up([0, 1], timeout=1.0)
    assert time.monotonic() - started < 10
    assert str(caught.value) == (
        f"the standby did not read partitions [0, 1] of {config.full_state_topic} to their "
        "end within 1s"
    )


def test_a_stopped_tail_gives_up_at_once(tansu_broker: LocalBroker) -> None:
    config = group_config(tansu_broker)
    ensure_state_topic(config)
    tail = StateTail(config)
    tail.stop()
    started = time.monotonic()
    with pytest.raises(StateTopicError, match="did not read partitions"):
        tail.catch_up([2], timeout=20)
    assert time.monotonic() - started < 10


@pytest.mark.anyio
async def test_the_tail_reads_committed_transactions(
    anyio_backend: str, tansu_broker: LocalBroker
) -> None:
    """What a partition's owner commits (events with their states, exactly once) is what
    the standby has to catch up with."""
    config = group_config(tansu_broker)
    create_topic(tansu_broker.bootstrap_servers, config.full_topic)
    ensure_state_topic(config)
    tail = StateTail(config)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(functools.partial(anyio.to_thread.run_sync, tail.run))
        try:
            partition_config = config_of_partition(config, 1)
            async with open_transactional_publisher(partition_config) as publisher:
                for n, market_id in enumerate(SPLIT[1][:3]):
                    await publisher.publish(make_event(market_id, n), (market_id, b"s%d" % n))
                assert await publisher.flush(15) == 0
            caught = await anyio.to_thread.run_sync(functools.partial(tail.catch_up, [1], 20))
        finally:
            tail.stop()
    assert caught == {SPLIT[1][n]: b"s%d" % n for n in range(3)}


# --- partition publishers fencing each other ----------------------------------------------------


def make_event(market_id: str, n: int) -> PolymarketEvent:
    return factories.make_event(
        event_id=str(uuid.uuid4()), timestamp=T0 + timedelta(seconds=n), market_id=market_id
    )


def config_of_partition(config: KafkaConfig, partition: int) -> KafkaConfig:
    return dataclasses.replace(
        config, transactional_id=config.partition_transactional_id(partition)
    )


def open_partition(
    config: KafkaConfig, stats: DeliveryStats
) -> AbstractAsyncContextManager[TransactionalPublisher]:
    return open_transactional_publisher(
        config, grace_seconds=3.0, timeout_seconds=5.0, backoff_seconds=(0.1, 0.5), stats=stats
    )


@asynccontextmanager
async def instance(config: KafkaConfig) -> AsyncIterator[tuple[PartitionedPublisher, list[int]]]:
    fenced: list[int] = []
    async with open_partitioned_publisher(config, open_partition) as publisher:
        publisher.on_fenced = fenced.append
        yield publisher, fenced


async def committed_event_ids(config: KafkaConfig, expected: int) -> list[str]:
    read = functools.partial(read_events, expected=expected, timeout=10, linger=0.5)
    messages = await anyio.to_thread.run_sync(read, config.bootstrap_servers, config.full_topic)
    return [PolymarketEvent.model_validate_json(m.value or b"").event_id for m in messages]


@pytest.mark.anyio
async def test_a_new_owner_of_a_partition_fences_the_old_one(
    anyio_backend: str, tansu_broker: LocalBroker
) -> None:
    config = group_config(tansu_broker)
    create_topic(tansu_broker.bootstrap_servers, config.full_topic)
    ensure_state_topic(config)
    before, zombie, after, other = (
        make_event(SPLIT[1][0], 0),
        make_event(SPLIT[1][1], 1),
        make_event(SPLIT[1][2], 2),
        make_event(SPLIT[0][0], 3),
    )
    with anyio.fail_after(60):
        async with instance(config) as (old, old_fenced):
            await old.acquire(0)
            await old.acquire(1)
            await old.publish(before, (before.market_id, b"old"))
            assert await old.flush(15) == 0
            async with instance(config) as (new, new_fenced):
                await new.acquire(1)  # the old owner's producer of partition 1 is fenced
                assert new.held() == {1}
                await old.publish(zombie, (zombie.market_id, b"zombie"))
                while 1 in old.held():  # noqa: ASYNC110 (its commit fails: fenced)
                    await anyio.sleep(0.02)
                assert old_fenced == [1]
                assert old.stats.fenced_partitions == 1
                # The old owner's other partition is untouched.
                await old.publish(other, (other.market_id, b"other"))
                assert await old.flush(15) == 0
                await new.publish(after, (after.market_id, b"new"))
                assert await new.flush(15) == 0
                assert new_fenced == []
    assert old.stats.delivered == 2
    committed = await committed_event_ids(config, 3)
    assert sorted(committed) == sorted([before.event_id, after.event_id, other.event_id])
    states = await anyio.to_thread.run_sync(functools.partial(read_state, config, timeout=20))
    assert states == {before.market_id: b"old", after.market_id: b"new", other.market_id: b"other"}
