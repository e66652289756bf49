"""`run_service` with an `Ownership` (several instances): only owned markets are polled and
judged; a partition lost mid-run has its markets dropped quietly (no tombstone staged); a
snapshot of a market not owned is dropped and counted; a partition gained has its states
restored before its first snapshot.

Everything at the boundaries is a double: a scripted poller (it records what it was asked
to poll, and runs the group side's changes -- through a real `Sharding` -- at the start of
a chosen cycle, so they land between two cycles), a recording publisher, and an
exactly-once stager recording every state record staged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from polymarket_kafka.detection import Detector
from polymarket_kafka.detector_state import ClosedMarket, MarketState, StateRecord
from polymarket_kafka.kafka.partition import partition_for
from polymarket_kafka.models import MarketSnapshot, PolymarketEvent, PolymarketSubscription
from polymarket_kafka.polymarket.poller import PollResult
from polymarket_kafka.ruleset import load_rules_text
from polymarket_kafka.service.durable import DurableState
from polymarket_kafka.service.ownership import Ownership
from polymarket_kafka.service.pipeline import run_service
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.service.sharding import GroupStats, Sharding
from polymarket_kafka.service.stages import LatestSubscriptions
from polymarket_kafka.service.stats import ServiceSettings, ServiceStats
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore
from tests.factories import ONE_POLL_YAML

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 11, 5, 23, 0, tzinfo=UTC)
ONE_POLL = load_rules_text(ONE_POLL_YAML, "one-poll.yaml")
PARTITIONS = 3
MARKETS = [f"0x{n:064x}" for n in range(1, 19)]
SPLIT: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
for _market in MARKETS:
    SPLIT[partition_for(_market.encode(), PARTITIONS)].append(_market)


def snapshot(market_id: str, price: float, at: datetime) -> MarketSnapshot:
    return MarketSnapshot(
        market_id=market_id, question=f"{market_id}?", yes_price=price, taken_at=at
    )


@dataclass
class ScriptedPoller:
    """Cycle n is stamped T0 + (n+1) hours. Prices: 0.50 unless `prices[n][market]` says
    otherwise; `extra[n]`: markets returned although not asked for (polled before their
    partition moved away).

    `after[n]` (the group side's changes) runs once cycle n has polled, before its
    snapshots are returned: first it waits until `detect` has judged every snapshot of the
    earlier cycles (nothing of them is in flight), so the change lands exactly between
    two cycles. Its effect shows in cycle n's snapshots (`detect` applies it before them)
    and in what cycle n+1 is asked to poll."""

    prices: dict[int, dict[str, float]] = field(default_factory=dict)
    extra: dict[int, list[str]] = field(default_factory=dict)
    after: dict[int, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    stats: ServiceStats = field(default_factory=ServiceStats)
    asked: list[frozenset[str]] = field(default_factory=list)
    cycle: int = -1
    #: How many `after` changes have run (the stager notes it with every batch).
    changes: int = 0
    returned: int = 0

    async def poll_once(
        self, subscriptions: Collection[PolymarketSubscription], now: datetime
    ) -> PollResult:
        self.cycle += 1
        asked = [s.market_id for s in subscriptions]
        self.asked.append(frozenset(asked))
        prices = self.prices.get(self.cycle, {})
        markets = asked + self.extra.get(self.cycle, [])
        taken_at = T0 + timedelta(hours=self.cycle + 1)
        snapshots = [snapshot(m, prices.get(m, 0.5), taken_at) for m in markets]
        change = self.after.get(self.cycle)
        if change is not None:
            with anyio.fail_after(10):
                while self.stats.snapshots + self.stats.snapshots_not_owned < self.returned:  # noqa: ASYNC110
                    await anyio.sleep(0.001)
            await change()
            self.changes += 1
        self.returned += len(snapshots)
        return PollResult(snapshots, {})


@dataclass
class RecordingPublisher:
    events: list[PolymarketEvent] = field(default_factory=list)
    states: list[StateRecord | None] = field(default_factory=list)

    async def publish(self, event: PolymarketEvent, state: StateRecord | None = None) -> None:
        self.events.append(event)
        self.states.append(state)


@dataclass
class RecordingStager:
    """Exactly-once stager: every batch staged, with the poll cycle it was staged in."""

    poller: ScriptedPoller
    #: (how many changes had run, records), per batch staged.
    staged: list[tuple[int, list[StateRecord]]] = field(default_factory=list)

    def stage(self, records: Sequence[StateRecord]) -> None:
        self.staged.append((self.poller.changes, list(records)))

    def markets(self, *, after_changes: int = 0) -> set[str]:
        """Markets staged once `after_changes` changes had run."""
        return {m for done, batch in self.staged if done >= after_changes for m, _ in batch}

    def tombstones(self) -> set[str]:
        return {m for _, batch in self.staged for m, value in batch if value is None}


class NoPartitions:
    """The `Partitions` side of `Sharding`: nothing to open or close here."""

    async def acquire(self, partition: int) -> bool:
        return True

    async def release(self, partition: int, *, commit: bool) -> None:
        return None


@dataclass
class Group:
    ownership: Ownership
    subscriptions: LatestSubscriptions
    sharding: Sharding
    restored: list[MarketState | ClosedMarket] = field(default_factory=list)


def group(restored: Sequence[MarketState | ClosedMarket] = ()) -> Group:
    ownership = Ownership(PARTITIONS)
    subscriptions = LatestSubscriptions(ownership.owns)

    async def restore(partitions: Collection[int]) -> Sequence[MarketState | ClosedMarket]:
        return [s for s in restored if ownership.partition_of(s.market_id) in partitions]

    stats = GroupStats("markets", "test", PARTITIONS)
    sharding = Sharding(ownership, NoPartitions(), subscriptions, restore, stats)
    return Group(ownership, subscriptions, sharding, list(restored))


async def run(
    g: Group,
    poller: ScriptedPoller,
    *,
    cycles: int,
    checkpoint_seconds: float = 0.0,
    refresh_seconds: float = 30.0,
) -> tuple[ServiceStats, RecordingPublisher, RecordingStager]:
    publisher = RecordingPublisher()
    stager = RecordingStager(poller)
    with anyio.fail_after(20):
        stats = await run_service(
            store=InMemorySubscriptionStore(seed=MARKETS),
            poller=poller,
            publisher=publisher,
            settings=ServiceSettings(
                poll_interval_seconds=0.01,
                subscription_refresh_seconds=refresh_seconds,
                max_cycles=cycles,
                handle_signals=False,
            ),
            clock=lambda: T0,  # the poller stamps its own cycle times
            stats=poller.stats,
            rules=RulesHolder(ONE_POLL),
            durable=DurableState(None, checkpoint_seconds, stager=stager),
            ownership=g.ownership,
            subscriptions=g.subscriptions,
        )
    return stats, publisher, stager


async def test_only_owned_markets_are_polled_and_judged() -> None:
    g = group()
    await g.sharding.handle("assigned", frozenset({0, 2}))
    owned = SPLIT[0] + SPLIT[2]
    poller = ScriptedPoller(prices={2: {SPLIT[0][0]: 0.9}})
    stats, publisher, stager = await run(g, poller, cycles=3)
    assert poller.asked == [frozenset(owned)] * 3
    assert stats.snapshots == 3 * len(owned)
    assert stats.snapshots_not_owned == 0
    assert [e.market_id for e in publisher.events] == [SPLIT[0][0]]
    assert stager.markets() <= set(owned)
    assert stager.tombstones() == set()


async def test_an_instance_owning_nothing_polls_nothing() -> None:
    g = group()
    await g.sharding.handle("assigned", frozenset({1}))
    await g.sharding.handle("revoked", frozenset({1}))
    poller = ScriptedPoller()
    stats, publisher, stager = await run(g, poller, cycles=2)
    assert poller.asked == [frozenset()] * 2
    assert stats.snapshots == 0
    assert publisher.events == [] and stager.staged == []


async def test_a_partition_lost_mid_run_has_its_markets_dropped_without_tombstones() -> None:
    g = group()
    await g.sharding.handle("assigned", frozenset({0, 1}))

    async def revoke() -> None:
        await g.sharding.handle("revoked", frozenset({1}))

    poller = ScriptedPoller(after={1: revoke})
    stats, publisher, stager = await run(g, poller, cycles=4)

    assert poller.asked == [frozenset(SPLIT[0] + SPLIT[1])] * 2 + [frozenset(SPLIT[0])] * 2
    # Cycle 1 polled partition 1 before it moved: those snapshots are dropped, not judged.
    assert stats.snapshots_not_owned == len(SPLIT[1])
    assert stats.snapshots == 4 * len(SPLIT[0]) + len(SPLIT[1])
    # Before the loss the partition's states were staged (this instance owned them) ...
    assert set(SPLIT[1]) <= stager.markets()
    # ... after it nothing of them: neither a state nor a tombstone (their records are the
    # new owner's), although they left this instance's subscriptions.
    assert not stager.markets(after_changes=1) & set(SPLIT[1])
    assert stager.tombstones() == set()
    assert set(SPLIT[0]) <= stager.markets(after_changes=1)
    assert publisher.events == []
    assert stats.state_markets_restored == 0


async def test_a_market_of_a_lost_partition_is_not_judged_though_it_moves() -> None:
    g = group()
    await g.sharding.handle("assigned", frozenset({0, 1}))
    moving = SPLIT[1][0]

    async def lose() -> None:
        await g.sharding.handle("lost", frozenset({1}))

    poller = ScriptedPoller(after={1: lose}, prices={1: {moving: 0.95}}, extra={2: [moving]})
    stats, publisher, stager = await run(g, poller, cycles=3)
    assert publisher.events == []  # the move is the new owner's to report
    assert stats.snapshots_not_owned == len(SPLIT[1]) + 1
    assert moving not in stager.markets(after_changes=1)
    assert stager.tombstones() == set()


async def test_snapshots_of_markets_not_owned_are_dropped_and_counted() -> None:
    g = group()
    await g.sharding.handle("assigned", frozenset({0}))
    stray = SPLIT[2][0]  # polled before its partition moved away
    poller = ScriptedPoller(
        prices={1: {stray: 0.95}, 2: {stray: 0.05}},
        extra={0: [stray], 1: [stray], 2: [stray]},
    )
    stats, publisher, stager = await run(g, poller, cycles=3)
    assert stats.snapshots_not_owned == 3
    assert stats.snapshots == 3 * len(SPLIT[0])  # the dropped ones are not judged
    assert publisher.events == []  # its moves are the owner's to report
    assert stray not in stager.markets()


async def test_a_gained_partition_is_restored_before_its_first_snapshot() -> None:
    """The restored baseline (0.30, an hour earlier) is what the first snapshot after the
    gain is measured from: a move fires at once, which a fresh start could not report."""
    previous_owner = Detector()
    earlier = T0 + timedelta(hours=1)
    for market_id in SPLIT[2]:
        previous_owner.observe(snapshot(market_id, 0.30, earlier), ONE_POLL, earlier)
    restored = [previous_owner.export_state(m) for m in SPLIT[2]]
    states = [s for s in restored if s is not None]
    assert len(states) == len(SPLIT[2])
    g = group(states)
    await g.sharding.handle("assigned", frozenset({0}))
    moved = SPLIT[2][0]

    async def assign() -> None:
        await g.sharding.handle("assigned", frozenset({2}))

    unchanged = dict.fromkeys(SPLIT[2], 0.30)
    poller = ScriptedPoller(after={1: assign}, prices={2: unchanged | {moved: 0.60}})
    stats, publisher, stager = await run(g, poller, cycles=3)

    assert poller.asked == [frozenset(SPLIT[0])] * 2 + [frozenset(SPLIT[0] + SPLIT[2])]
    assert stats.state_markets_restored == len(SPLIT[2])
    assert [(e.market_id, e.baseline_yes_price, e.yes_price) for e in publisher.events] == [
        (moved, 0.30, 0.60)
    ]
    # The event carries the market's new state (exactly once).
    (state,) = publisher.states
    assert state is not None and state[0] == moved
    assert stager.tombstones() == set()
    assert set(SPLIT[2]) <= stager.markets(after_changes=1)


@pytest.mark.parametrize(("refresh_seconds", "deleted"), [(30.0, False), (0.002, True)])
async def test_a_restored_market_no_longer_subscribed_is_deleted_after_a_refresh(
    refresh_seconds: float, deleted: bool
) -> None:
    """Restored states of markets nobody subscribes to any more are the new owner's to
    delete (a tombstone), as a single instance deletes them after its restore -- but only
    once it has read the subscriptions since the takeover: the previous owner may have
    seen a newer list (a market subscribed meanwhile)."""
    previous_owner = Detector()
    gone = "0x" + "f" * 64
    previous_owner.observe(snapshot(gone, 0.4, T0), ONE_POLL, T0)
    state = previous_owner.export_state(gone)
    assert isinstance(state, MarketState)
    partition = partition_for(gone.encode(), PARTITIONS)
    g = group([state])

    async def assign() -> None:
        await g.sharding.handle("assigned", frozenset({partition}))

    await g.sharding.handle("assigned", frozenset({(partition + 1) % PARTITIONS}))
    poller = ScriptedPoller(after={0: assign})
    stats, _, stager = await run(g, poller, cycles=6, refresh_seconds=refresh_seconds)
    assert stats.state_markets_restored == 1
    assert stager.tombstones() == ({gone} if deleted else set())


@dataclass
class GatedPublisher(RecordingPublisher):
    """Its first publish waits for `gate`: `deliver` is busy while the next events queue."""

    gate: anyio.Event = field(default_factory=anyio.Event)
    waiting: anyio.Event = field(default_factory=anyio.Event)

    async def publish(self, event: PolymarketEvent, state: StateRecord | None = None) -> None:
        if not self.waiting.is_set():
            self.waiting.set()
            await self.gate.wait()
        await super().publish(event, state)


@pytest.mark.parametrize("comes_back", [False, True])
async def test_an_event_queued_while_its_partition_moves_is_handed_over_even_if_it_returns(
    comes_back: bool,
) -> None:
    """An event detected under one ownership of its partition is never published under
    another: the restored state (the new owner's, or this instance's on its return) never
    included it, so the move is found again from it -- publishing it too would give the
    move two event ids."""
    first = SPLIT[1][0]  # its event holds `deliver` up
    queued = next(m for m in SPLIT[0] if MARKETS.index(m) > MARKETS.index(first))
    g = group()
    await g.sharding.handle("assigned", frozenset({0, 1}))
    publisher = GatedPublisher()

    async def move_partition() -> None:
        with anyio.fail_after(5):
            await publisher.waiting.wait()  # `queued`'s event waits behind it
        await g.sharding.handle("revoked", frozenset({0}))
        if comes_back:
            await g.sharding.handle("assigned", frozenset({0}))
        publisher.gate.set()

    moved = {first: 0.90, queued: 0.90}
    poller = ScriptedPoller(prices={1: moved, 2: moved}, after={2: move_partition})
    with anyio.fail_after(20):
        stats = await run_service(
            store=InMemorySubscriptionStore(seed=MARKETS),
            poller=poller,
            publisher=publisher,
            settings=ServiceSettings(
                poll_interval_seconds=0.01, max_cycles=3, handle_signals=False
            ),
            clock=lambda: T0,
            stats=poller.stats,
            rules=RulesHolder(ONE_POLL),
            durable=DurableState(None, 0.0, stager=RecordingStager(poller)),
            ownership=g.ownership,
            subscriptions=g.subscriptions,
        )
    assert [e.market_id for e in publisher.events] == [first]
    assert stats.events_detected == 2
    assert stats.events_handed_over == 1
    assert stats.events_not_delivered == 1  # nothing acknowledged: RecordingPublisher


async def test_a_snapshot_polled_before_its_partition_was_gained_is_not_judged() -> None:
    ownership = Ownership(PARTITIONS)
    market = SPLIT[2][0]
    ownership.gain(2, (), since=10.0)
    assert ownership.admits(market, 10.0)
    assert not ownership.admits(market, 9.5)
    generation = ownership.generation_of(market)
    ownership.lose(2)
    ownership.gain(2, (), since=20.0)
    assert ownership.generation_of(market) == generation + 2
    assert not ownership.admits(market, 15.0)
