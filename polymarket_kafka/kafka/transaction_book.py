"""What the transactional publisher has to commit, and what a commit settles (pure).

Events wait in the book from `publish` until a transaction carrying them is committed. The
committer `take`s everything waiting into one `Batch`: the events in publish order and the
latest staged state record of every market. The state record of a market is the latest
*staged*: the pipeline stages a market's state only after every event of that market
detected before it (`service.durable`), so the latest staged is also the newest. A commit
settles the batch (`committed`); a failed transaction gives it back (`failed`): its events go
back to the front, in the same order and with the same bytes, and its states are kept
unless a newer one was staged meanwhile.

Bounds: events at most `max_in_flight` (the publisher waits at it: backpressure); state
records at most one per market (a newer replaces an older).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from polymarket_kafka.detector_state import StateRecord
from polymarket_kafka.models import PolymarketEvent

__all__ = ["Batch", "Outgoing", "TransactionBook"]


@dataclass(frozen=True)
class Outgoing:
    """An event handed to the publisher: its Kafka value and when (monotonic) it came."""

    event: PolymarketEvent
    value: bytes
    added_at: float


@dataclass(frozen=True)
class Batch:
    """The content of one transaction. `number` grows by one per `take`."""

    number: int
    events: tuple[Outgoing, ...]
    states: dict[str, bytes | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.events or self.states)


class TransactionBook:
    """Events and state records waiting for a transaction, and the one being committed."""

    def __init__(self, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.max_in_flight = max_in_flight
        self._waiting: deque[Outgoing] = deque()
        self._states: dict[str, bytes | None] = {}
        self._committing: Batch | None = None
        self._next_number = 0
        #: The highest batch number committed (-1 before any).
        self.committed_through = -1

    def __len__(self) -> int:
        """Events not committed yet (waiting and in the transaction being committed)."""
        committing = 0 if self._committing is None else len(self._committing.events)
        return committing + len(self._waiting)

    def __iter__(self) -> Iterator[Outgoing]:
        """The events not committed yet, in publish order."""
        if self._committing is not None:
            yield from self._committing.events
        yield from self._waiting

    def has_room(self) -> bool:
        return len(self) < self.max_in_flight

    def staged_states(self) -> int:
        """State records waiting for a transaction (not counting the one being committed)."""
        return len(self._states)

    def add(self, outgoing: Outgoing, state: StateRecord | None = None) -> None:
        """An event to commit, with the state of its market after it (if any)."""
        self._waiting.append(outgoing)
        if state is not None:
            self.stage([state])

    def stage(self, records: Iterable[StateRecord]) -> int:
        """State records for the next transaction (a market's latest replaces an older).
        Returns the number of the batch that will carry them: they are committed once
        `committed_through` reaches it."""
        for market_id, value in records:
            self._states[market_id] = value
        return self._next_number

    def oldest(self) -> Outgoing | None:
        return next(iter(self), None)

    def has_work(self) -> bool:
        return bool(self._waiting or self._states)

    def take(self) -> Batch:
        """Everything waiting, as the next transaction's content."""
        if self._committing is not None:
            raise RuntimeError("a transaction is being committed already")
        batch = Batch(self._next_number, tuple(self._waiting), self._states)
        self._next_number += 1
        self._waiting = deque()
        self._states = {}
        self._committing = batch
        return batch

    def committed(self) -> Batch:
        """The transaction being committed was committed: its content is settled."""
        batch = self._settle()
        self.committed_through = batch.number
        return batch

    def failed(self) -> Batch:
        """The transaction being committed failed (aborted): its content waits again, in
        front of what came since; a state staged since is newer and stays."""
        batch = self._settle()
        self._waiting.extendleft(reversed(batch.events))
        self._states = {**batch.states, **self._states}
        return batch

    def _settle(self) -> Batch:
        batch = self._committing
        if batch is None:
            raise RuntimeError("no transaction is being committed")
        self._committing = None
        return batch
