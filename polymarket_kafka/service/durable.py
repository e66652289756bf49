"""Durable detector state in the pipeline: restore at start, checkpoints while running.

`detect` owns the detector; through a `StateKeeper` it restores the states read at start
and, when a checkpoint is due, exports and encodes the states of the markets that changed
and are safe to write (`checkpoints.StateBook`). Where they go depends on the delivery mode:

* exactly once (`DurableState.stager`, the transactional publisher): the checkpoint is
  staged at once for the publisher's next transaction, and every event carries its market's
  state right after it (`attach` in `detect`, `attached` in `deliver`), so an event and its
  new baseline are committed together. A market's state is staged only after every event of
  it detected before (those still between `detect` and the publisher hold it back), so the
  latest staged state is always the newest.
* at least once (`DurableState.sink`): the `checkpoint` stage (`write_checkpoints`) writes
  through the `StateSink` port, one checkpoint at a time through a channel of one: while it
  still writes, the next checkpoint waits in the book, so detection never waits for Kafka.
  What was not written is due again. Markets with unacknowledged events wait too.

With durable state off, the keeper does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from polymarket_kafka.detection import ConvictionChange, Detector, RuleSource
from polymarket_kafka.detector_state import ClosedMarket, MarketState, StateRecord, encode
from polymarket_kafka.models import MarketSnapshot, PolymarketEvent
from polymarket_kafka.service.checkpoints import Checkpoint, StateBook
from polymarket_kafka.service.ownership import Ownership, PartitionChange
from polymarket_kafka.service.ports import StateSink, StateStager
from polymarket_kafka.service.reloader import adopt_rules
from polymarket_kafka.service.stats import ServiceStats

__all__ = ["DurableState", "Records", "Restore", "StateKeeper", "already_read", "write_checkpoints"]

logger = logging.getLogger("polymarket_kafka.service.pipeline")

#: A checkpoint and its records: (market id, encoded state, or None for a tombstone).
Records = tuple[Checkpoint, list[StateRecord]]


#: Reads the detector states to start from (`app.StateRestore.run`, `already_read`).
Restore = Callable[[], Awaitable[Sequence[MarketState | ClosedMarket]]]


def already_read(states: Sequence[MarketState | ClosedMarket]) -> Restore:
    """A `Restore` of states at hand (tests, a caller that read them itself)."""

    async def restore() -> Sequence[MarketState | ClosedMarket]:
        return states

    return restore


_NOTHING_TO_RESTORE = already_read(())


@dataclass(frozen=True)
class DurableState:
    """Detector state kept in Kafka (`KAFKA_STATE_TOPIC`): where checkpoints go (`stager`
    for exactly once, else `sink`), how often, and how the states are read at start."""

    sink: StateSink | None
    checkpoint_seconds: float
    stager: StateStager | None = None
    #: Awaited by `detect` before its first snapshot, so the rest of the service (health,
    #: polling) runs meanwhile; the snapshots polled wait in their bounded channel.
    restore: Restore = _NOTHING_TO_RESTORE

    def __post_init__(self) -> None:
        if (self.sink is None) == (self.stager is None):
            raise ValueError("DurableState needs exactly one of sink and stager")


class StateKeeper:
    """The pipeline's side of durable state: `detect` and `deliver` call it unconditionally,
    and with durable state off (`DurableState` None) every call does nothing.

    It owns the bookkeeping (`book`) and the send side of the channel to the `checkpoint`
    stage; `detect` closes that channel when it ends (`async with keeper.checkpoints`).
    """

    def __init__(
        self,
        durable: DurableState | None,
        checkpoints: MemoryObjectSendStream[Records],
        now: float,
    ) -> None:
        self._durable = durable
        #: False: durable state is off, and every call does nothing.
        self._on = durable is not None
        self._sink = None if durable is None else durable.sink
        self._stager = None if durable is None else durable.stager
        #: Exactly once: the state attached to an event, from `detect` to `deliver` (at most
        #: one per event between them).
        self._attached: dict[str, StateRecord] = {}
        interval = float("inf") if durable is None else durable.checkpoint_seconds
        self.book = StateBook.starting(interval, now)
        self.checkpoints = checkpoints

    @classmethod
    def off(cls) -> StateKeeper:
        """A keeper that keeps nothing (its channel has no reader and is closed already)."""
        send, unread = anyio.create_memory_object_stream[Records](1)
        unread.close()
        return cls(None, send, 0.0)

    async def restore(self, detector: Detector, rules: RuleSource, stats: ServiceStats) -> None:
        """Give the detector the states `DurableState.restore` reads; rules that changed
        while the service was down apply as a reload's would (`adopt`)."""
        durable = self._durable
        if durable is None:
            return
        restored = await durable.restore()
        if not restored:
            return
        for state in restored:
            detector.restore_state(state)
        stats.state_markets_restored = len(restored)
        logger.info(
            "detector state restored for %d markets (%d closed)",
            len(restored),
            sum(isinstance(state, ClosedMarket) for state in restored),
        )
        self.adopt(detector, rules, stats)

    def adopt(self, detector: Detector, rules: RuleSource, stats: ServiceStats) -> bool:
        """`reloader.adopt_rules`, deleting the records of the markets it dropped (so a
        restart cannot bring back a state those rules no longer shape)."""
        before = detector.known() if self._on else frozenset()
        adopted = adopt_rules(detector, rules, stats)
        if adopted and self._on:
            for market_id in before - detector.known():
                self.book.forgotten(market_id)
        return adopted

    def take_over(
        self, detector: Detector, changes: Sequence[PartitionChange], ownership: Ownership
    ) -> int:
        """Ownership changed (several instances): the markets of each changed partition are
        dropped quietly -- no tombstone, their records are the new owner's -- then a gained
        partition's restored states are taken over. Returns how many were restored."""
        if not changes:
            return 0
        changed = {change.partition for change in changes}
        for market_id in detector.known():
            if ownership.partition_of(market_id) in changed:
                detector.forget(market_id)
                self.book.dropped(market_id)
        restored = 0
        for change in changes:
            for state in change.states:
                detector.restore_state(state)
                restored += 1
        return restored

    def forget(self, detector: Detector, market_id: str) -> None:
        """The market is no longer subscribed: dropped by the detector, its record deleted."""
        detector.forget(market_id)
        if self._on:
            self.book.forgotten(market_id)

    def observe(
        self, detector: Detector, snapshot: MarketSnapshot, rules: RuleSource, now: datetime
    ) -> list[ConvictionChange]:
        """`detector.observe`, noting whether the market's state changed or was dropped."""
        market_id = snapshot.market_id
        known_before = self._on and detector.knows(market_id)
        changes = detector.observe(snapshot, rules, now)
        if self._on:
            if detector.knows(market_id):
                self.book.touched(market_id)
            elif known_before:
                self.book.forgotten(market_id)
        return changes

    def hold(self, market_id: str) -> None:
        """An event of the market entered the pipeline (its state waits until it is out)."""
        if self._on:
            self.book.hold(market_id)

    def attach(self, detector: Detector, event: PolymarketEvent) -> None:
        """Exactly once: `event` (the last of an observation) carries its market's state as
        the detector has it now, to be committed with it."""
        if self._stager is not None:
            state = detector.export_state(event.market_id)
            value = None if state is None else encode(state)
            self._attached[event.event_id] = (event.market_id, value)

    def attached(self, event: PolymarketEvent) -> StateRecord | None:
        """The state `attach`ed to `event` (taken: asked once, by `deliver`)."""
        return self._attached.pop(event.event_id, None)

    def release(self, market_id: str) -> None:
        """The publisher took the event (`unacknowledged` covers it from now on)."""
        if self._on:
            self.book.release(market_id)

    def tick(self, detector: Detector) -> None:
        """A due checkpoint: staged for the next transaction (exactly once), or handed to
        the `checkpoint` stage without waiting (at least once; while it still writes the
        previous one, everything stays due for the next)."""
        if not self._on or not self.book.due(anyio.current_time()):
            return
        to_write = self._checkpoint(detector)
        if to_write is None:
            return
        try:
            self.checkpoints.send_nowait(to_write)
        except anyio.WouldBlock:
            checkpoint, records = to_write
            self.book.failed(checkpoint, [market_id for market_id, _ in records])

    async def final(self, detector: Detector) -> None:
        """`detect` has drained: the last checkpoint (staged, or written and waited for)."""
        if not self._on:
            return
        to_write = self._checkpoint(detector)
        if to_write is not None:
            await self.checkpoints.send(to_write)

    def _checkpoint(self, detector: Detector) -> Records | None:
        """Take what is due: staged at once (exactly once), or returned for the `checkpoint`
        stage to write (at least once). None when nothing is left to write."""
        checkpoint, records = self._take(detector)
        if not checkpoint:
            return None
        if self._stager is not None:
            self._stager.stage(records)
            return None
        return checkpoint, records

    def _take(self, detector: Detector) -> Records:
        """What is due now, encoded (the detector's current states). At least once, the
        markets whose events Kafka has not acknowledged wait; exactly once, their states go
        in the same transaction as their events, or a later one."""
        unsafe = () if self._sink is None else self._sink.unacknowledged()
        checkpoint = self.book.take(anyio.current_time(), unsafe)
        records: list[StateRecord] = []
        for market_id in checkpoint.writes:
            state = detector.export_state(market_id)
            records.append((market_id, None if state is None else encode(state)))
        records += [(market_id, None) for market_id in checkpoint.tombstones]
        return checkpoint, records


async def write_checkpoints(
    checkpoints: MemoryObjectReceiveStream[Records],
    sink: StateSink,
    book: StateBook,
    stats: ServiceStats,
) -> None:
    """The `checkpoint` stage: write each checkpoint; what failed is due again."""
    async with checkpoints:
        async for checkpoint, records in checkpoints:
            failed = await sink.write(records)
            book.failed(checkpoint, failed)
            stats.state_records_written += len(records) - len(failed)
            stats.state_write_failures += len(failed)
            if failed:
                logger.warning(
                    "state checkpoint: %d of %d records NOT written; retried at the next one",
                    len(failed),
                    len(records),
                )
