"""The group side of several instances: act on each rebalance, in order, on the event loop.

`Sharding.run` takes the `kafka.group.Rebalance`s the group member's thread hands over and,
before telling the thread it is done (so before the group moves on):

* **assigned**: each partition's publisher is opened (`PartitionedPublisher.acquire`:
  the previous owner is fenced and its open transaction aborted), then the partitions'
  state is read (to a fence: everything the previous owner committed) and given to
  `Ownership.gain`, which lets the poller, the stream and `detect` start on their markets;
* **revoked**: `Ownership.lose` (no new observation of their markets from now on), then
  their publishers commit what they hold and close (`release(commit=True)`);
* **lost** (the group gave them away already): the same, committing nothing.

A partition whose producer is fenced while held (`on_fenced`) is lost the same way.

The readiness component "group" is ready once the first assignment is handled and while no
partition is being restored; it names the partitions owned. `GroupStats` holds the figures
the metrics export (owned partitions, rebalances by kind, restore and takeover times).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from polymarket_kafka.detector_state import ClosedMarket, MarketState
from polymarket_kafka.histogram import Histogram
from polymarket_kafka.ops.health import ComponentStatus
from polymarket_kafka.service.ownership import Ownership
from polymarket_kafka.service.stages import LatestSubscriptions

__all__ = [
    "GroupStats",
    "PartitionRestore",
    "Partitions",
    "Reassignment",
    "RebalanceKind",
    "Sharding",
]

logger = logging.getLogger(__name__)

#: Reads the detector states of some state-topic partitions (retrying until Kafka answers).
PartitionRestore = Callable[[Collection[int]], Awaitable[Sequence[MarketState | ClosedMarket]]]

#: assigned: the partitions are this instance's now; revoked: handed back in an orderly
#: rebalance (commit what is open); lost: given away already (nothing can be committed).
RebalanceKind = Literal["assigned", "revoked", "lost"]


class Handled(Protocol):
    def set(self) -> None: ...


class Reassignment(Protocol):
    """A change of this instance's partitions (`kafka.group.Rebalance`), to be `handled`."""

    @property
    def kind(self) -> RebalanceKind: ...

    @property
    def partitions(self) -> frozenset[int]: ...

    @property
    def handled(self) -> Handled: ...


#: Restore and takeover times, in seconds (a takeover is at least one restore).
_TAKEOVER_BOUNDS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Partitions(Protocol):
    """What `Sharding` needs of the publisher (`kafka.partitioned.PartitionedPublisher`)."""

    async def acquire(self, partition: int) -> bool:
        """True once the partition's producer is initialised; False: fenced meanwhile."""
        ...

    async def release(self, partition: int, *, commit: bool) -> None: ...


@dataclass
class GroupStats:
    """Figures of the group side (`ops.metrics` exports them at scrape time)."""

    group_id: str
    instance: str
    partitions: int
    owned: frozenset[int] = frozenset()
    restoring: frozenset[int] = frozenset()
    joined: bool = False
    rebalances: dict[str, int] = field(
        default_factory=lambda: {"assigned": 0, "revoked": 0, "lost": 0, "fenced": 0}
    )
    markets_restored: int = 0
    #: Reading the partition's state once its previous owner is fenced (to a fence from the
    #: beginning, or the standby's catch-up).
    restore_seconds: Histogram = field(default_factory=lambda: Histogram(_TAKEOVER_BOUNDS))
    #: From the assignment to the partition being served (fencing + restore).
    takeover_seconds: Histogram = field(default_factory=lambda: Histogram(_TAKEOVER_BOUNDS))

    def to_json(self) -> dict[str, object]:
        """For the dashboard: who this instance is and what it owns."""
        return {
            "group_id": self.group_id,
            "instance": self.instance,
            "partitions": self.partitions,
            "owned": sorted(self.owned),
            "restoring": sorted(self.restoring),
            "rebalances": dict(self.rebalances),
        }


class Sharding:
    """Applies rebalances to the publisher, the ownership and the subscriptions."""

    def __init__(
        self,
        ownership: Ownership,
        publisher: Partitions,
        subscriptions: LatestSubscriptions,
        restore: PartitionRestore,
        stats: GroupStats,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ownership = ownership
        self._publisher = publisher
        self._subscriptions = subscriptions
        self._restore = restore
        self.stats = stats
        self._monotonic = monotonic
        #: Told each partition lost (the dashboard drops its rows at once: `detect` only
        #: drops the detector's states at its next snapshot, which may never come).
        self.on_lost: Callable[[int], object] = lambda partition: None

    async def run(self, rebalances: MemoryObjectReceiveStream[Reassignment]) -> None:
        """Handle each rebalance, then release the group member's thread waiting on it."""
        async with rebalances:
            async for rebalance in rebalances:
                try:
                    await self.handle(rebalance.kind, rebalance.partitions)
                finally:
                    rebalance.handled.set()

    async def handle(self, kind: RebalanceKind, partitions: frozenset[int]) -> None:
        if not partitions:
            # An empty assignment: the instance has joined, with nothing (more) to own.
            self.stats.joined = self.stats.joined or kind == "assigned"
            return
        self.stats.rebalances[kind] += 1
        if kind == "assigned":
            await self._take_over(partitions)
            self.stats.joined = True
            return
        for partition in sorted(partitions):
            self._lose(partition)
        # All at once: each may take the grace period to commit what it holds.
        async with anyio.create_task_group() as tasks:
            for partition in sorted(partitions):
                tasks.start_soon(
                    partial(self._publisher.release, partition, commit=kind == "revoked")
                )
        logger.info(
            "partitions %s %s: their markets are left to their new owner; this instance owns %s",
            _names(partitions),
            kind,
            _names(self.ownership.owned) or "none",
        )

    def fenced(self, partition: int) -> None:
        """`partition`'s producer was fenced: another instance owns it now."""
        self.stats.rebalances["fenced"] += 1
        self._lose(partition)

    def check(self) -> ComponentStatus:
        """The readiness component "group"."""
        stats = self.stats
        where = f"group {stats.group_id} as {stats.instance}"
        if not stats.joined:
            return ComponentStatus(False, f"joining consumer {where}")
        owned = _names(stats.owned) or "none"
        extra = {"owned": sorted(stats.owned), "restoring": sorted(stats.restoring)}
        if stats.restoring:
            return ComponentStatus(
                False,
                f"restoring partitions {_names(stats.restoring)} ({where}; owns {owned})",
                extra,
            )
        return ComponentStatus(
            True, f"owns partitions {owned} of {stats.partitions} ({where})", extra
        )

    async def _take_over(self, assigned: frozenset[int]) -> None:
        started = self._monotonic()
        self.stats.restoring = self.stats.restoring | assigned
        acquired: set[int] = set()

        async def acquire(partition: int) -> None:
            if await self._publisher.acquire(partition):
                acquired.add(partition)

        try:
            async with anyio.create_task_group() as tasks:
                for partition in sorted(assigned):
                    tasks.start_soon(acquire, partition)
            if acquired != assigned:
                logger.error(
                    "partitions %s assigned but fenced by another writer while taken over: "
                    "not served here",
                    _names(assigned - acquired),
                )
            fenced_at = self._monotonic()
            states = await self._restore(frozenset(acquired)) if acquired else ()
            restored_at = self._monotonic()
        finally:
            self.stats.restoring = self.stats.restoring - assigned
        if not acquired:
            return
        by_partition: dict[int, list[MarketState | ClosedMarket]] = {p: [] for p in acquired}
        for state in states:
            partition = self.ownership.partition_of(state.market_id)
            if partition in by_partition:  # a record on a partition it does not hash to: stray
                by_partition[partition].append(state)
        since = anyio.current_time()  # the clock snapshots are stamped with
        for partition, restored in sorted(by_partition.items()):
            self.ownership.gain(partition, restored, since)
        self._subscriptions.refilter()
        self.stats.owned = self.ownership.owned
        self.stats.markets_restored += sum(len(r) for r in by_partition.values())
        for _ in acquired:
            self.stats.restore_seconds.observe(restored_at - fenced_at)
            self.stats.takeover_seconds.observe(restored_at - started)
        logger.info(
            "partitions %s taken over in %.2fs (fenced in %.2fs, %d markets restored); this "
            "instance owns %s",
            _names(acquired),
            restored_at - started,
            fenced_at - started,
            len(states),
            _names(self.ownership.owned),
        )

    def _lose(self, partition: int) -> None:
        self.ownership.lose(partition)
        self._subscriptions.refilter()
        self.stats.owned = self.ownership.owned
        self.on_lost(partition)


def _names(partitions: Collection[int]) -> str:
    return ",".join(str(p) for p in sorted(partitions))
