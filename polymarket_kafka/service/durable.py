"""Durable detector state in the pipeline: restore at start, checkpoints while running.

`detect` owns the detector, so it restores the states read at start (`restore_into`) and,
when a checkpoint is due, exports the states of the markets that changed and are safe to
write (`checkpoints.StateBook`) and encodes them (`take_checkpoint`). The `checkpoint` stage
(`write_checkpoints`) writes them through the `StateSink` port, one checkpoint at a time
through a channel of one: while it still writes, the next checkpoint waits in the book
(`send_checkpoint`), so detection never waits for Kafka. What was not written is due again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from polymarket_kafka.detection import Detector
from polymarket_kafka.detector_state import ClosedMarket, MarketState, encode
from polymarket_kafka.service.checkpoints import Checkpoint, StateBook
from polymarket_kafka.service.ports import StateSink
from polymarket_kafka.service.stats import ServiceStats

__all__ = [
    "DurableState",
    "Records",
    "forget_dropped",
    "restore_into",
    "send_checkpoint",
    "take_checkpoint",
    "write_checkpoints",
]

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


def restore_into(
    detector: Detector, restored: Sequence[MarketState | ClosedMarket], stats: ServiceStats
) -> None:
    """Give the detector the restored states (the caller then applies the rules in force)."""
    for state in restored:
        detector.restore_state(state)
    stats.state_markets_restored = len(restored)
    logger.info(
        "detector state restored for %d markets (%d closed)",
        len(restored),
        sum(isinstance(state, ClosedMarket) for state in restored),
    )


def forget_dropped(book: StateBook | None, before: frozenset[str], detector: Detector) -> None:
    """Markets the detector dropped (reset by new rules): their records are deleted, so a
    restart cannot bring back a state those rules no longer shape."""
    if book is not None:
        for market_id in before - detector.known():
            book.forgotten(market_id)


def take_checkpoint(detector: Detector, book: StateBook, durable: DurableState) -> Records:
    """What is due now, encoded (the detector's current states)."""
    checkpoint = book.take(anyio.current_time(), durable.sink.unacknowledged())
    records: list[tuple[str, bytes | None]] = []
    for market_id in checkpoint.writes:
        state = detector.export_state(market_id)
        records.append((market_id, None if state is None else encode(state)))
    records += [(market_id, None) for market_id in checkpoint.tombstones]
    return checkpoint, records


def send_checkpoint(
    detector: Detector,
    book: StateBook,
    durable: DurableState,
    checkpoints: MemoryObjectSendStream[Records],
) -> None:
    """Hand a checkpoint to the `checkpoint` stage without waiting; while it still writes
    the previous one, everything stays due for the next."""
    checkpoint, records = take_checkpoint(detector, book, durable)
    if not checkpoint:
        return
    try:
        checkpoints.send_nowait((checkpoint, records))
    except anyio.WouldBlock:
        book.failed(checkpoint, [market_id for market_id, _ in records])


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
