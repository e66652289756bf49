"""Which markets' detector state to write to the state topic, and when (pure bookkeeping).

The rule that keeps a move from being lost: a market's state is written only while none of
its events is on the way to Kafka. After an event the detector's state holds the new
baseline; written before Kafka acknowledged the event, a crash would restore that baseline
and the move would never be reported. So a market with an event in the pipeline (`hold` ...
`release`) or unacknowledged by the publisher (`take(unsafe=...)`) stays *dirty* and is
written at a later checkpoint. If the process dies first, the restored state is older: the
move is detected again from the older baseline (at least once; the event's id differs, as
its observation time does).

Bounds: `dirty` and `tombstones` hold market ids of the subscriptions (a market is in one or
the other, never both); `held` counts the events between `detect` and the publisher, at most
the event channel's size per market.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

__all__ = ["Checkpoint", "StateBook"]


@dataclass(frozen=True)
class Checkpoint:
    """What to write now: the states of `writes`, tombstones for `tombstones`."""

    writes: tuple[str, ...]
    tombstones: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.writes or self.tombstones)


@dataclass
class StateBook:
    """Dirty markets, forgotten markets and events in flight, on one monotonic clock."""

    interval_seconds: float
    next_due: float
    dirty: set[str] = field(default_factory=set)
    tombstones: set[str] = field(default_factory=set)
    held: Counter[str] = field(default_factory=Counter)

    @classmethod
    def starting(cls, interval_seconds: float, now: float) -> StateBook:
        """A book whose first checkpoint is one interval from `now`."""
        return cls(interval_seconds, now + interval_seconds)

    def touched(self, market_id: str) -> None:
        """The market's state may have changed."""
        self.tombstones.discard(market_id)
        self.dirty.add(market_id)

    def forgotten(self, market_id: str) -> None:
        """The detector dropped the market: its record is to be deleted."""
        self.dirty.discard(market_id)
        self.tombstones.add(market_id)

    def dropped(self, market_id: str) -> None:
        """The market is another instance's now: nothing of it is written from here (its
        events still on their way are the publisher's to hand over)."""
        self.dirty.discard(market_id)
        self.tombstones.discard(market_id)

    def hold(self, market_id: str) -> None:
        """An event of the market entered the pipeline."""
        self.held[market_id] += 1

    def release(self, market_id: str) -> None:
        """An event of the market left the pipeline for the publisher (or was given up)."""
        self.held[market_id] -= 1
        if self.held[market_id] <= 0:
            del self.held[market_id]

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def take(self, now: float, unsafe: Collection[str] = ()) -> Checkpoint:
        """What is due now, leaving dirty every market with an event on its way (`held`, or
        `unsafe`: not acknowledged by Kafka yet), and keeping the tombstones of `held` ones
        for later. Schedules the next checkpoint."""
        self.next_due = now + self.interval_seconds
        waiting = {m for m in self.dirty if m in self.held or m in unsafe}
        writes = tuple(sorted(self.dirty - waiting))
        # A tombstone waits for the market's events between detect and the publisher too:
        # an event carries its market's state (exactly once), which would bring the record
        # back after a tombstone written ahead of it.
        buried = {m for m in self.tombstones if m in self.held}
        tombstones = tuple(sorted(self.tombstones - buried))
        self.dirty = waiting
        self.tombstones = buried
        return Checkpoint(writes, tombstones)

    def failed(self, checkpoint: Checkpoint, market_ids: Iterable[str]) -> None:
        """Records of `checkpoint` that were not written: due again at the next checkpoint,
        unless the market changed side since (touched again, or forgotten)."""
        for market_id in market_ids:
            if market_id in checkpoint.tombstones and market_id not in self.dirty:
                self.tombstones.add(market_id)
            elif market_id in checkpoint.writes and market_id not in self.tombstones:
                self.dirty.add(market_id)
