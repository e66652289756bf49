"""`PartitionedPublisher`: one transactional publisher per held state-topic partition, against
the fake transactional producers of test_kafka_transactional_fake (extended here to tell the
producers apart by transactional id and to fence one of them). Nothing waits for a
duration: tests wait (bounded) for a state."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

import anyio
import pytest
from confluent_kafka import KafkaError

from polymarket_kafka.config import KafkaConfig
from polymarket_kafka.kafka.delivery import DeliveryStats
from polymarket_kafka.kafka.partition import partition_for
from polymarket_kafka.kafka.partitioned import PartitionedPublisher, open_partitioned_publisher
from polymarket_kafka.kafka.statistics import BrokerStatus, DeliveryBacklog
from polymarket_kafka.kafka.transactional import (
    TransactionalPublisher,
    open_transactional_publisher,
)
from polymarket_kafka.models import PolymarketEvent
from tests import factories
from tests.unit.test_kafka_transactional_fake import (
    CONNECTING,
    STATE_TOPIC,
    TOPIC,
    UP,
    FakeKafka,
    FakeMonotonic,
    FakeProducer,
    Record,
    kafka_error,
    wait_until,
)

pytestmark = pytest.mark.anyio

PARTITIONS = 3
CONFIG = KafkaConfig(
    bootstrap_servers="fake:9092",
    topic_prefix="t.",
    state_topic="state",
    state_partitions=PARTITIONS,
    group_id="markets",
)
T0 = datetime(2024, 11, 6, 1, 0, tzinfo=UTC)
MARKETS = [f"0x{n:064x}" for n in range(1, 31)]
SPLIT: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
for _market in MARKETS:
    SPLIT[partition_for(_market.encode(), PARTITIONS)].append(_market)
#: Long enough that nothing is committed unless the publisher is closed with a commit.
NEVER_MS = 600_000


def tid(partition: int) -> str:
    return CONFIG.partition_transactional_id(partition)


_counter = iter(range(1_000_000))


def event(partition: int, index: int = 0) -> PolymarketEvent:
    n = next(_counter)
    return factories.make_event(
        event_id=str(uuid.uuid4()),
        timestamp=T0 + timedelta(seconds=n),
        market_id=SPLIT[partition][index],
    )


class TrackedProducer(FakeProducer):
    """A fake producer whose commits are recorded under its transactional id, and which
    fails with `_FENCED` once its id is in `PartitionKafka.fenced`."""

    kafka: PartitionKafka

    @property
    def transactional_id(self) -> str:
        return str(self.conf["transactional.id"])

    def commit_transaction(self, timeout: float) -> None:
        if self.transactional_id in self.kafka.fenced:
            self.calls.append("commit_transaction")
            raise kafka_error(KafkaError._FENCED, fatal=True)
        super().commit_transaction(timeout)
        self.kafka.commits[self.transactional_id].append(self.kafka.transactions[-1])


class PartitionKafka(FakeKafka):
    def __init__(self) -> None:
        super().__init__()
        self.commits: defaultdict[str, list[list[Record]]] = defaultdict(list)
        self.fenced: set[str] = set()

    def __call__(self, conf: dict[str, object]) -> TrackedProducer:
        producer = TrackedProducer(conf, self)
        self.producers.append(producer)
        return producer

    def producer(self, partition: int) -> TrackedProducer:
        (found,) = [
            p
            for p in self.producers
            if isinstance(p, TrackedProducer) and p.transactional_id == tid(partition)
        ]
        return found

    def committed_markets(self, partition: int) -> list[str]:
        """The market ids of the events committed by `partition`'s producer."""
        return [r.key.decode() for t in self.commits[tid(partition)] for r in t if r.topic == TOPIC]

    def committed_event_ids(self) -> set[str]:
        return {r.event_id for t in self.transactions for r in t if r.topic == TOPIC}

    def committed_states_of(self, partition: int) -> dict[str, bytes | None]:
        return {
            r.key.decode(): r.value
            for t in self.commits[tid(partition)]
            for r in t
            if r.topic == STATE_TOPIC
        }


@dataclass
class Opener:
    """The `OpenPartition` of the tests: fake producers, per-partition linger overrides."""

    kafka: PartitionKafka
    linger_ms: dict[int, int] = field(default_factory=dict)
    monotonic: Callable[[], float] | None = None
    grace_seconds: float = 5.0
    max_in_flight: int = 10_000
    opened: list[str] = field(default_factory=list)
    configs: list[KafkaConfig] = field(default_factory=list)

    def __call__(
        self, config: KafkaConfig, stats: DeliveryStats
    ) -> AbstractAsyncContextManager[TransactionalPublisher]:
        self.configs.append(config)
        self.opened.append(config.transactional_id)
        partition = int(config.transactional_id.rsplit(".", 1)[1])
        config = dataclasses.replace(
            config,
            transaction_linger_ms=self.linger_ms.get(partition, 1),
            max_in_flight=self.max_in_flight,
        )
        options: dict[str, object] = {}
        if self.monotonic is not None:
            options["monotonic"] = self.monotonic
        return open_transactional_publisher(
            config,
            producer_factory=self.kafka,
            clock=lambda: T0,
            backoff_seconds=(0.01, 0.02),
            timeout_seconds=1.0,
            grace_seconds=self.grace_seconds,
            statistics_interval_ms=20,
            stats=stats,
            **options,  # type: ignore[arg-type]
        )


@asynccontextmanager
async def partitioned(
    opener: Opener, *partitions: int
) -> AsyncIterator[tuple[PartitionedPublisher, list[int]]]:
    """An open `PartitionedPublisher` holding `partitions`; yields it and the partitions
    reported fenced (`on_fenced`)."""
    fenced: list[int] = []
    async with open_partitioned_publisher(CONFIG, opener) as publisher:
        publisher.on_fenced = fenced.append
        for partition in partitions:
            await publisher.acquire(partition)
        yield publisher, fenced


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="polymarket_kafka")


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


# --- acquiring ---------------------------------------------------------------------------------


async def test_each_partition_gets_its_own_transactional_id() -> None:
    kafka = PartitionKafka()
    opener = Opener(kafka)
    async with partitioned(opener, 2, 0) as (publisher, _):
        assert publisher.held() == {0, 2}
        assert publisher.partitions == PARTITIONS
        assert publisher.topic == "t.polymarket-events"
        # Initialised (the previous owner fenced) before acquire returned.
        assert [p.calls[:1] for p in kafka.producers] == [["init_transactions"]] * 2
    assert opener.opened == [tid(2), tid(0)] == ["markets.t.state.2", "markets.t.state.0"]
    assert sorted(str(p.conf["transactional.id"]) for p in kafka.producers) == [tid(0), tid(2)]
    # Everything else is the service's config.
    assert all(c.group_id == "markets" and c.state_partitions == 3 for c in opener.configs)
    assert publisher.held() == frozenset()


async def test_acquiring_a_held_partition_again_opens_nothing() -> None:
    kafka = PartitionKafka()
    async with partitioned(Opener(kafka), 1) as (publisher, _):
        await publisher.acquire(1)
        assert len(kafka.producers) == 1


async def test_acquiring_a_partition_still_closing_waits_then_opens_a_new_publisher() -> None:
    kafka = PartitionKafka()
    async with partitioned(Opener(kafka), 1) as (publisher, _):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(partial(publisher.release, 1, commit=True))
            with anyio.fail_after(5):
                while not publisher._held[1].release.is_set():
                    await anyio.lowlevel.checkpoint()  # until the release has begun
            assert await publisher.acquire(1)  # while the old one still closes
        assert publisher.held() == {1}
        assert len(kafka.producers) == 2  # a new producer, after the old one closed
        await publisher.publish(event(1))
        assert await publisher.flush(5) == 0
    assert publisher.stats.delivered == 1


async def test_partition_of_is_the_murmur2_partition() -> None:
    async with partitioned(Opener(PartitionKafka())) as (publisher, _):
        for partition, markets in SPLIT.items():
            assert {publisher.partition_of(m) for m in markets} == {partition}


# --- routing ---------------------------------------------------------------------------------


async def test_events_and_states_go_through_their_partitions_producer() -> None:
    kafka = PartitionKafka()
    events = {p: [event(p, 0), event(p, 1)] for p in range(PARTITIONS)}
    async with partitioned(Opener(kafka), 0, 1, 2) as (publisher, _):
        for p in (2, 0, 1):
            for e in events[p]:
                await publisher.publish(e, (e.market_id, b"state-" + e.market_id.encode()))
        publisher.stage([(SPLIT[0][2], b"checkpoint-0"), (SPLIT[1][2], None)])
        assert await publisher.flush(5) == 0
        assert publisher.pending_events() == []
    for p in range(PARTITIONS):
        assert kafka.committed_markets(p) == [e.market_id for e in events[p]]
    assert kafka.committed_states_of(0) == {
        SPLIT[0][0]: b"state-" + SPLIT[0][0].encode(),
        SPLIT[0][1]: b"state-" + SPLIT[0][1].encode(),
        SPLIT[0][2]: b"checkpoint-0",
    }
    assert kafka.committed_states_of(1)[SPLIT[1][2]] is None
    assert set(kafka.committed_states_of(2)) == {SPLIT[2][0], SPLIT[2][1]}
    stats = publisher.stats
    assert (stats.published, stats.delivered, stats.pending, stats.handed_over) == (6, 6, 0, 0)
    assert stats.state_records_committed == 8
    assert stats.transactions_committed >= 3


async def test_an_event_of_a_partition_not_held_is_handed_over_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kafka = PartitionKafka()
    moved = event(1)
    async with partitioned(Opener(kafka), 0) as (publisher, _):
        await publisher.publish(moved, (moved.market_id, b"state"))
        kept = event(0)
        await publisher.publish(kept)
        assert await publisher.flush(5) == 0
    assert publisher.stats.handed_over == 1
    assert publisher.stats.published == 1  # only what a partition's publisher took
    assert kafka.committed_event_ids() == {kept.event_id}
    assert all(t for t in kafka.transactions)
    assert kafka.committed_states_of(1) == {}
    (warning,) = [m for m in messages(caplog, logging.WARNING) if "not published here" in m]
    assert warning == (
        f"event of market {moved.market_id} not published here: partition 1 moved to another "
        f"instance, which detects it again from the committed state (event_id={moved.event_id})"
    )
    record = next(r for r in caplog.records if r.getMessage() == warning)
    assert getattr(record, "market_id", None) == moved.market_id


async def test_states_of_a_partition_not_held_are_dropped() -> None:
    kafka = PartitionKafka()
    async with partitioned(Opener(kafka), 2) as (publisher, _):
        publisher.stage([(SPLIT[0][0], b"a"), (SPLIT[2][0], b"c"), (SPLIT[1][0], None)])
        assert await publisher.flush(5) == 0
    assert kafka.committed_states_of(2) == {SPLIT[2][0]: b"c"}
    assert kafka.committed_states() == {SPLIT[2][0]: b"c"}
    assert publisher.stats.state_records_committed == 1


# --- releasing -------------------------------------------------------------------------------


async def test_release_with_commit_commits_what_the_partition_holds() -> None:
    kafka = PartitionKafka()
    async with partitioned(Opener(kafka), 0, 1) as (publisher, _):
        held = [event(1, 0), event(1, 1)]
        for e in held:
            await publisher.publish(e)
        assert publisher.pending_events() == held  # not committed yet
        await publisher.release(1, commit=True)
        assert publisher.held() == {0}
        assert kafka.committed_markets(1) == [e.market_id for e in held]
        # From now on the partition's events are handed over.
        late = event(1, 2)
        await publisher.publish(late)
        assert publisher.stats.handed_over == 1
        await publisher.release(1, commit=True)  # not held: nothing to do
    assert late.event_id not in kafka.committed_event_ids()
    stats = publisher.stats
    assert (stats.delivered, stats.pending, stats.unacknowledged_at_close) == (2, 0, 0)


async def test_release_without_commit_commits_nothing_and_hands_the_events_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kafka = PartitionKafka()
    opener = Opener(kafka, linger_ms={2: NEVER_MS})
    async with partitioned(opener, 0, 2) as (publisher, _):
        left = [event(2, 0), event(2, 1), event(2, 2)]
        for e in left:
            await publisher.publish(e, (e.market_id, b"state"))
        assert publisher.stats.pending == 3
        with anyio.fail_after(5):
            await publisher.release(2, commit=False)
        assert publisher.held() == {0}
        assert publisher.stats.pending == 0
        # Partition 0 goes on.
        kept = event(0)
        await publisher.publish(kept)
        assert await publisher.flush(5) == 0
    assert "commit_transaction" not in kafka.producer(2).calls
    assert "begin_transaction" not in kafka.producer(2).calls
    assert kafka.commits[tid(2)] == []
    assert kafka.committed_event_ids() == {kept.event_id}
    stats = publisher.stats
    assert stats.handed_over == 3
    assert stats.unacknowledged_at_close == 0
    assert stats.unacknowledged == 0
    assert (stats.published, stats.delivered, stats.pending) == (4, 1, 0)
    warnings = messages(caplog, logging.WARNING)
    assert any(
        m.startswith(f"3 event(s) of {tid(2)} not committed before the hand-over") for m in warnings
    )
    assert not [m for m in messages(caplog, logging.ERROR) if "NOT committed" in m]


async def test_releasing_every_partition_returns_pending_to_zero() -> None:
    kafka = PartitionKafka()
    opener = Opener(kafka, linger_ms={0: NEVER_MS, 1: NEVER_MS})
    async with partitioned(opener, 0, 1, 2) as (publisher, _):
        for p in range(PARTITIONS):
            await publisher.publish(event(p, 0))
            await publisher.publish(event(p, 1))
        assert publisher.stats.pending == 6
        assert len(publisher.pending_events()) >= 4
        await publisher.release(0, commit=False)
        assert publisher.stats.pending <= 4
        await publisher.release(2, commit=True)
        assert publisher.stats.pending == 2
        await publisher.release(1, commit=False)
        assert publisher.stats.pending == 0
        assert publisher.held() == frozenset()
    stats = publisher.stats
    assert stats.published == 6
    assert stats.delivered + stats.handed_over == 6
    assert (stats.delivered, stats.handed_over) == (2, 4)


async def test_leaving_commits_what_every_held_partition_holds() -> None:
    kafka = PartitionKafka()
    events = [event(p) for p in range(PARTITIONS)]
    async with partitioned(Opener(kafka), 0, 1, 2) as (publisher, _):
        for e in events:
            await publisher.publish(e)
    assert kafka.committed_event_ids() == {e.event_id for e in events}
    assert publisher.held() == frozenset()
    assert publisher.stats.pending == 0
    assert publisher.stats.unacknowledged_at_close == 0


# --- fencing ---------------------------------------------------------------------------------


async def test_a_fenced_partition_steps_down_and_the_others_keep_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kafka = PartitionKafka()
    async with partitioned(Opener(kafka), 0, 1) as (publisher, fenced):
        kafka.fenced.add(tid(1))
        zombie = event(1)
        await publisher.publish(zombie)
        with anyio.fail_after(5):
            while 1 in publisher.held():  # noqa: ASYNC110 (closed by its own task)
                await anyio.sleep(0.001)
        assert fenced == [1]
        assert publisher.stats.fenced_partitions == 1
        # Partition 0 is untouched; partition 1's events are handed over from now on.
        survivor = event(0)
        await publisher.publish(survivor)
        assert await publisher.flush(5) == 0
        late = event(1, 1)
        await publisher.publish(late)
        assert publisher.stats.handed_over == 2  # the zombie's, at the close; the late one
    assert kafka.committed_event_ids() == {survivor.event_id}
    assert kafka.commits[tid(1)] == []
    calls = [c for c in kafka.producer(1).calls if c != "produce"]
    assert calls == ["init_transactions", "begin_transaction", "commit_transaction"]
    stats = publisher.stats
    assert stats.delivered == 1
    assert stats.pending == 0
    # The fenced partition's uncommitted event is accounted for, once.
    assert stats.unacknowledged_at_close + stats.handed_over == 2
    errors = messages(caplog, logging.ERROR)
    assert (
        f"fenced: partition 1 of t.state belongs to another instance now (transactional id "
        f"{tid(1)}); stepping down from it, nothing more is written for it"
    ) in errors


async def test_a_fenced_partitions_uncommitted_events_are_handed_over_not_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kafka = PartitionKafka()
    async with partitioned(Opener(kafka), 0, 1) as (publisher, fenced):
        kafka.fenced.add(tid(1))
        await publisher.publish(event(1))
        with anyio.fail_after(5):
            while 1 in publisher.held():  # noqa: ASYNC110 (closed by its own task)
                await anyio.sleep(0.001)
        assert fenced == [1]
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith("polymarket_kafka")
    ]
    assert (publisher.stats.handed_over, publisher.stats.unacknowledged_at_close) == (1, 0), errors
    assert len(errors) == 1, errors


# --- figures ---------------------------------------------------------------------------------


async def test_broker_status_is_down_when_any_held_partition_is_down() -> None:
    kafka = PartitionKafka()
    async with partitioned(Opener(kafka)) as (publisher, _):
        assert publisher.broker_status() == BrokerStatus(
            True, "no partition owned: nothing to publish"
        )
        await publisher.acquire(0)
        await publisher.acquire(2)
        # Taken over just now: initialised (the broker answered), no statistics yet -- up,
        # so readiness does not drop for a statistics interval at every takeover.
        assert publisher.broker_status() == BrokerStatus(True, "2 partition producer(s) up")
        kafka.producer(0).emit(CONNECTING)
        await wait_until(lambda: publisher.broker_status().detail.startswith("partition 0"))
        assert not publisher.broker_status().connected
        kafka.producer(0).emit(UP)
        kafka.producer(2).emit(UP)
        await wait_until(lambda: publisher.broker_status().connected)
        assert publisher.broker_status() == BrokerStatus(True, "2 partition producer(s) up")
        kafka.producer(2).emit(CONNECTING)
        await wait_until(lambda: not publisher.broker_status().connected)
        assert publisher.broker_status().detail.startswith("partition 2: ")
        await publisher.release(2, commit=True)
        assert publisher.broker_status() == BrokerStatus(True, "1 partition producer(s) up")
    assert publisher.delivery_timeout_seconds == 60.0


async def test_delivery_backlog_adds_up_over_partitions() -> None:
    kafka = PartitionKafka()
    clock = FakeMonotonic()
    opener = Opener(kafka, linger_ms=dict.fromkeys(range(PARTITIONS), NEVER_MS), monotonic=clock)
    async with partitioned(opener, 0, 1, 2) as (publisher, _):
        assert publisher.delivery_backlog() == DeliveryBacklog(0)
        first = event(1)
        await publisher.publish(first)
        clock.now += 2.0
        second, third = event(2, 0), event(2, 1)
        await publisher.publish(second)
        await publisher.publish(third)
        clock.now += 3.0
        assert publisher.delivery_backlog() == DeliveryBacklog(3, 5.0)
        assert sorted(e.event_id for e in publisher.pending_events()) == sorted(
            e.event_id for e in (first, second, third)
        )
        assert await publisher.flush(0.05) == 3  # the budget runs out: nothing committed
        await publisher.release(1, commit=False)
        assert publisher.delivery_backlog() == DeliveryBacklog(2, 3.0)
        for partition in (0, 2):
            await publisher.release(partition, commit=False)
        assert publisher.delivery_backlog() == DeliveryBacklog(0)
    assert publisher.stats.handed_over == 3


async def test_shared_stats_add_up_over_partitions() -> None:
    kafka = PartitionKafka()
    async with partitioned(Opener(kafka), 0, 1, 2) as (publisher, _):
        for n in range(9):
            await publisher.publish(event(n % PARTITIONS, n // PARTITIONS))
        assert await publisher.flush(5) == 0
        stats = publisher.stats
        assert (stats.published, stats.delivered, stats.pending) == (9, 9, 0)
        assert stats.delivery_latency.count == 9
        assert stats.transactions_committed >= 3


# --- a publish waiting for room when its partition goes ----------------------------------------


async def test_a_publish_waiting_for_room_is_handed_over_when_its_partition_is_released() -> None:
    kafka = PartitionKafka()
    kafka.hold = anyio.Event()
    opener = Opener(kafka, max_in_flight=1)
    async with partitioned(opener, 0) as (publisher, _):
        await publisher.publish(event(0, 0))  # the book is full
        await kafka.committing.wait()
        waiting = event(0, 1)
        done = anyio.Event()

        async def publish_waiting() -> None:
            await publisher.publish(waiting)
            done.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(publish_waiting)
            await wait_until(lambda: publisher.stats.in_flight_waits == 1)
            releasing = anyio.Event()

            async def release() -> None:
                await publisher.release(0, commit=True)
                releasing.set()

            tasks.start_soon(release)
            kafka.hold.set()  # the commit under way completes; then the close
            with anyio.fail_after(5):
                await done.wait()
                await releasing.wait()
    # It waited for room, the partition went meanwhile: handed over (or committed with the
    # close), never lost and never raised.
    stats = publisher.stats
    assert stats.delivered + stats.handed_over == 2
    assert stats.pending == 0


async def test_a_publish_waiting_for_room_returns_when_its_partition_is_lost() -> None:
    kafka = PartitionKafka()
    opener = Opener(kafka, linger_ms={0: NEVER_MS}, max_in_flight=1)
    async with partitioned(opener, 0, 1) as (publisher, _):
        await publisher.publish(event(0, 0))  # the book is full, nothing is committed
        done = anyio.Event()

        async def publish_waiting() -> None:
            await publisher.publish(event(0, 1))
            done.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(publish_waiting)
            await wait_until(lambda: publisher.stats.in_flight_waits == 1)
            await publisher.release(0, commit=False)
            assert publisher.held() == {1}
            with anyio.move_on_after(1):
                await done.wait()
            returned = done.is_set()
            tasks.cancel_scope.cancel()
    assert returned, "a publish waiting for room on a lost partition never returned"


async def test_a_partition_fenced_while_being_acquired_is_stepped_down_from() -> None:
    kafka = PartitionKafka()
    kafka.fail("init_transactions", kafka_error(KafkaError._FENCED, fatal=True))
    error: BaseException | None = None
    async with partitioned(Opener(kafka)) as (publisher, fenced):
        with anyio.fail_after(5):
            try:
                await publisher.acquire(1)
            except RuntimeError as exc:
                error = exc
        # on_fenced was told, and nothing is held: only the way acquire ends is wrong.
        assert fenced == [1]
        assert publisher.held() == frozenset()
        assert publisher.stats.fenced_partitions == 1
        await publisher.acquire(2)  # another partition is acquired normally afterwards
        assert publisher.held() == {2}
    assert error is None, f"acquire raised {error!r}"
