"""Which markets this instance owns, when several share the work (`KAFKA_GROUP_ID`). Pure.

A market belongs to the state-topic partition its id hashes to with Kafka's murmur2
partitioner (`kafka.partition.partition_for`, the producer's own: a market's state record
lands on that partition). An instance owns the markets of the partitions the consumer group
gave it **once their state is restored**; until then their markets are neither polled,
streamed nor judged.

`Ownership` is shared by the loop's tasks (no locks: one event loop thread):

* the group side (`service.sharding`) calls `gain` (a partition restored, with its states)
  and `lose` (revoked, lost, or fenced);
* the subscriptions cell filters by `owns`, so the poller and the stream see only owned
  markets;
* `detect` takes the changes (`take_changes`) before its next snapshot: markets of a lost
  partition are dropped quietly (no tombstone: the new owner keeps their records), restored
  states are given to the detector.

Bounds: the partition of at most `MAX_CACHED` market ids is remembered (then the memo
starts over); pending changes are at most one per partition (the latest wins: a gain
replaces a loss, and implies dropping what the detector held about the partition first).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from polymarket_kafka.detector_state import ClosedMarket, MarketState
from polymarket_kafka.kafka.partition import MarketPartitions

__all__ = ["MAX_CACHED", "Ownership", "PartitionChange"]

#: Market ids whose partition is memoised (a refresh filters every subscription).
MAX_CACHED = 200_000


@dataclass(frozen=True)
class PartitionChange:
    """What `detect` has to do about one partition: drop what it holds about the
    partition's markets, then (a gain) take over `states`."""

    partition: int
    gained: bool
    states: Sequence[MarketState | ClosedMarket] = ()


class Ownership:
    """The partitions this instance owns, out of `partitions`."""

    def __init__(self, partitions: int) -> None:
        if partitions < 1:
            raise ValueError("a state topic has at least one partition")
        self.partitions = partitions
        self.owned: frozenset[int] = frozenset()
        #: Bumped on every change: readers compare it to the version they saw.
        self.version = 0
        self._pending: dict[int, PartitionChange] = {}
        self._partition_of = MarketPartitions(partitions, MAX_CACHED)
        #: Per partition: bumped on every gain and loss. An event detected under one
        #: generation is published only under the same one (`service.handover`): one that
        #: waited while its partition went away and came back belongs to no one.
        self._generation: dict[int, int] = {}
        #: Per partition: when (the loop's clock) it was last gained; a snapshot polled
        #: before that was polled for an earlier ownership.
        self._since: dict[int, float] = {}

    def partition_of(self, market_id: str) -> int:
        """The state-topic partition of `market_id` (murmur2 of its UTF-8 bytes)."""
        return self._partition_of(market_id)

    def owns(self, market_id: str) -> bool:
        return self.partition_of(market_id) in self.owned

    def generation_of(self, market_id: str) -> int:
        """The ownership generation of the market's partition (see `_generation`)."""
        return self._generation.get(self.partition_of(market_id), 0)

    def admits(self, market_id: str, polled_at: float) -> bool:
        """The market is owned, and was when the snapshot was polled (`polled_at`, on the
        clock `gain` was given)."""
        partition = self.partition_of(market_id)
        return partition in self.owned and polled_at >= self._since.get(partition, 0.0)

    def gain(
        self,
        partition: int,
        states: Iterable[MarketState | ClosedMarket],
        since: float = 0.0,
    ) -> None:
        """`partition` is this instance's from now on (`since`, the loop's clock), starting
        from `states` (its markets' restored detector states)."""
        self._check(partition)
        self.owned |= {partition}
        self._generation[partition] = self._generation.get(partition, 0) + 1
        self._since[partition] = since
        self._pending[partition] = PartitionChange(partition, True, tuple(states))
        self.version += 1

    def lose(self, partition: int) -> None:
        """`partition` is no longer this instance's (its markets are dropped, quietly)."""
        self._check(partition)
        if partition not in self.owned and partition not in self._pending:
            return
        self.owned -= {partition}
        self._generation[partition] = self._generation.get(partition, 0) + 1
        self._pending[partition] = PartitionChange(partition, False)
        self.version += 1

    def take_changes(self) -> list[PartitionChange]:
        """The changes since the last call: the latest of each partition (partitions share
        no market, so their order does not matter)."""
        changes = list(self._pending.values())
        self._pending.clear()
        return changes

    def _check(self, partition: int) -> None:
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition} out of 0..{self.partitions - 1}")
