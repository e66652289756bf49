"""Durable detector state in the pipeline: restore at start, checkpoints while running.

`detect` owns the detector; through a `StateKeeper` it restores the states read at start
and, when a checkpoint is due, exports and encodes the states of the markets that changed
and are safe to write (`checkpoints.StateBook`). The `checkpoint` stage (`write_checkpoints`)
writes them through the `StateSink` port, one checkpoint at a time through a channel of one:
while it still writes, the next checkpoint waits in the book, so detection never waits for
Kafka. What was not written is due again. With durable state off, the keeper does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from polymarket_kafka.detection import ConvictionChange, Detector, RuleSource
from polymarket_kafka.detector_state import ClosedMarket, MarketState, encode
from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.service.checkpoints import Checkpoint, StateBook
from polymarket_kafka.service.ports import StateSink
from polymarket_kafka.service.reloader import adopt_rules
from polymarket_kafka.service.stats import ServiceStats

__all__ = ["DurableState", "Records", "StateKeeper", "write_checkpoints"]

logger = logging.getLogger("polymarket_kafka.service.pipeline")

#: A checkpoint and its records: (market id, encoded state, or None for a tombstone).
Records = tuple[Checkpoint, list[tuple[str, bytes | None]]]


@dataclass(frozen=True)
class DurableState:
    """Detector state kept in Kafka (`KAFKA_STATE_TOPIC`): what was restored at start, where
    checkpoints go and how often."""

    restored: Sequence[MarketState | ClosedMarket]
    sink: StateSink
    checkpoint_seconds: float


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
        #: Where checkpoints go; None: durable state is off, and every call does nothing.
        self._sink = None if durable is None else durable.sink
        interval = float("inf") if durable is None else durable.checkpoint_seconds
        self.book = StateBook.starting(interval, now)
        self.checkpoints = checkpoints

    @classmethod
    def off(cls) -> StateKeeper:
        """A keeper that keeps nothing (its channel has no reader and is closed already)."""
        send, unread = anyio.create_memory_object_stream[Records](1)
        unread.close()
        return cls(None, send, 0.0)

    def restore(self, detector: Detector, rules: RuleSource, stats: ServiceStats) -> None:
        """Give the detector the restored states; rules that changed while the service was
        down apply as a reload's would (`adopt`)."""
        durable = self._durable
        if durable is None or not durable.restored:
            return
        for state in durable.restored:
            detector.restore_state(state)
        stats.state_markets_restored = len(durable.restored)
        logger.info(
            "detector state restored for %d markets (%d closed)",
            len(durable.restored),
            sum(isinstance(state, ClosedMarket) for state in durable.restored),
        )
        self.adopt(detector, rules, stats)

    def adopt(self, detector: Detector, rules: RuleSource, stats: ServiceStats) -> bool:
        """`reloader.adopt_rules`, deleting the records of the markets it dropped (so a
        restart cannot bring back a state those rules no longer shape)."""
        before = detector.known() if self._sink is not None else frozenset()
        adopted = adopt_rules(detector, rules, stats)
        if adopted and self._sink is not None:
            for market_id in before - detector.known():
                self.book.forgotten(market_id)
        return adopted

    def forget(self, detector: Detector, market_id: str) -> None:
        """The market is no longer subscribed: dropped by the detector, its record deleted."""
        detector.forget(market_id)
        if self._sink is not None:
            self.book.forgotten(market_id)

    def observe(
        self, detector: Detector, snapshot: MarketSnapshot, rules: RuleSource, now: datetime
    ) -> list[ConvictionChange]:
        """`detector.observe`, noting whether the market's state changed or was dropped."""
        market_id = snapshot.market_id
        known_before = self._sink is not None and detector.knows(market_id)
        changes = detector.observe(snapshot, rules, now)
        if self._sink is not None:
            if detector.knows(market_id):
                self.book.touched(market_id)
            elif known_before:
                self.book.forgotten(market_id)
        return changes

    def hold(self, market_id: str) -> None:
        """An event of the market entered the pipeline (its state waits until it is out)."""
        if self._sink is not None:
            self.book.hold(market_id)

    def release(self, market_id: str) -> None:
        """The publisher took the event (`unacknowledged` covers it from now on)."""
        if self._sink is not None:
            self.book.release(market_id)

    def tick(self, detector: Detector) -> None:
        """Hand a due checkpoint to the `checkpoint` stage without waiting; while it still
        writes the previous one, everything stays due for the next."""
        if self._sink is None or not self.book.due(anyio.current_time()):
            return
        checkpoint, records = self._take(detector, self._sink)
        if not checkpoint:
            return
        try:
            self.checkpoints.send_nowait((checkpoint, records))
        except anyio.WouldBlock:
            self.book.failed(checkpoint, [market_id for market_id, _ in records])

    async def final(self, detector: Detector) -> None:
        """`detect` has drained: the last checkpoint, waited for."""
        if self._sink is None:
            return
        checkpoint, records = self._take(detector, self._sink)
        if checkpoint:
            await self.checkpoints.send((checkpoint, records))

    def _take(self, detector: Detector, sink: StateSink) -> Records:
        """What is due now, encoded (the detector's current states)."""
        checkpoint = self.book.take(anyio.current_time(), sink.unacknowledged())
        records: list[tuple[str, bytes | None]] = []
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
