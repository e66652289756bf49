"""The delivery ledger: what is in flight to Kafka and what to do with each delivery report.

Pure, in the style of h11/httpcore's state machines: plain data in, actions out. No I/O, no
clock (every time is passed in, on the publisher's monotonic clock), no confluent_kafka: the
shell (`publisher.KafkaPublisher`) classifies librdkafka's errors into a `Failure`, feeds
`Outcome`s in and carries out the returned actions (send, log, count, replace the producer).

An event is *in flight* from `add` until it leaves the ledger in exactly one of three ways:
`Acknowledged` (Kafka has it on the events topic), `DeadLettered` (Kafka has it on the
dead-letter topic) or `GaveUp` (Kafka does not have it: logged at ERROR by the shell). Until
then it is resent as often as needed (same event_id: consumers deduplicate):

* a retriable failure (a broker down, not enough replicas...) is retried with exponential
  backoff, forever unless `max_attempts` is set;
* a permanent failure (the record is rejected, the topic is denied or unknown) is retried
  `permanent_attempts` times in all, then the event is routed to the dead-letter topic with
  the reason; when the dead-letter write cannot be done either, the ledger gives up;
* a failure that makes the producer unusable asks for a new one; after the replacement the
  shell resends everything `after_replacement` returns, in publish order.

Bounds: at most `max_in_flight` events (`has_room`: the shell makes `publish` wait), and the
retry schedule holds at most one entry per attempt of an event in flight.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from polymarket_kafka.models import PolymarketEvent

__all__ = [
    "Acknowledged",
    "Action",
    "DeadLettered",
    "DeliveryLedger",
    "Entry",
    "Failure",
    "GaveUp",
    "Outcome",
    "ReplaceProducer",
    "Retry",
    "SendToDeadLetter",
]


class Failure(enum.Enum):
    """How the shell classified a failed delivery (or a rejected `produce`)."""

    #: Worth retrying on the same producer (a broker down, not enough replicas, a timeout of
    #: one request...).
    RETRIABLE = "retriable"
    #: The record or the topic is refused for good (too large, invalid, denied, unknown).
    PERMANENT = "permanent"
    #: The producer itself is unusable (fatal error, message timed out, lost producer id).
    PRODUCER = "producer"


@dataclass(eq=False)
class Entry:
    """An event in flight. `token` is the id of its latest `produce` (None until librdkafka
    accepted one); `dead_letter` is the reason once it is routed to the dead-letter topic."""

    seq: int
    event: PolymarketEvent
    value: bytes
    published_at: float
    attempts: int = 0
    token: int | None = None
    dead_letter: str | None = None
    #: Attempts on the events topic before it was routed to the dead-letter topic.
    topic_attempts: int = 0


@dataclass(frozen=True)
class Outcome:
    """A delivery report: `produce` number `token` of entry `seq`, by producer `generation`,
    at monotonic time `at`; `failure` None when Kafka acknowledged it."""

    seq: int
    token: int
    generation: int
    failure: Failure | None
    reason: str
    at: float


@dataclass(frozen=True)
class Acknowledged:
    entry: Entry
    latency: float


@dataclass(frozen=True)
class DeadLettered:
    entry: Entry


@dataclass(frozen=True)
class GaveUp:
    entry: Entry
    reason: str


@dataclass(frozen=True)
class Retry:
    entry: Entry
    reason: str
    delay: float


@dataclass(frozen=True)
class SendToDeadLetter:
    """Produce `entry` to the dead-letter topic now (its `dead_letter` reason is set)."""

    entry: Entry


@dataclass(frozen=True)
class ReplaceProducer:
    generation: int
    reason: str


Action = Acknowledged | DeadLettered | GaveUp | Retry | SendToDeadLetter | ReplaceProducer


class DeliveryLedger:
    """The events in flight, in publish order, and their retry schedule."""

    def __init__(
        self,
        *,
        max_in_flight: int,
        max_attempts: int | None = None,
        permanent_attempts: int = 3,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 30.0,
        dead_letter: bool = True,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 or None")
        if permanent_attempts < 1:
            raise ValueError("permanent_attempts must be >= 1")
        self.max_in_flight = max_in_flight
        self._max_attempts = max_attempts
        self._permanent_attempts = permanent_attempts
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._dead_letter = dead_letter
        self._entries: dict[int, Entry] = {}  # insertion order = publish order
        self._retries: list[tuple[float, int, int]] = []  # heap of (due, seq, token)
        self._seqs = itertools.count()

    # --- what is in flight ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def __contains__(self, entry: object) -> bool:
        return isinstance(entry, Entry) and self._entries.get(entry.seq) is entry

    def has_room(self) -> bool:
        """False while `max_in_flight` events are in flight: the caller must wait."""
        return len(self._entries) < self.max_in_flight

    def oldest(self) -> Entry | None:
        return next(iter(self._entries.values()), None)

    def add(self, event: PolymarketEvent, value: bytes, now: float) -> Entry:
        """Track a new event (the caller checked `has_room`)."""
        entry = Entry(next(self._seqs), event, value, now)
        self._entries[entry.seq] = entry
        return entry

    def sent(self, entry: Entry, token: int) -> bool:
        """librdkafka accepted `produce` number `token` of `entry`; True if it is a resend."""
        resend = entry.token is not None
        entry.token = token
        entry.attempts += 1
        return resend

    # --- what to do -----------------------------------------------------------------------

    def give_up(self, entry: Entry, reason: str) -> list[Action]:
        """Stop tracking `entry` (e.g. its publish was cancelled before it was accepted)."""
        if self._entries.pop(entry.seq, None) is None:
            return []
        return [GaveUp(entry, reason)]

    def rejected(self, entry: Entry, reason: str) -> list[Action]:
        """`produce` refused the record outright (a permanent failure of this attempt)."""
        entry.attempts += 1
        return self._route_to_dead_letter(entry, f"rejected by the producer: {reason}")

    def on_outcome(self, outcome: Outcome, generation: int, now: float) -> list[Action]:
        """The actions a delivery report calls for. `generation` is the current producer's,
        `now` the monotonic time retries are scheduled from."""
        entry = self._entries.get(outcome.seq)
        if entry is None:
            return []  # settled already (e.g. an older copy was acknowledged first)
        if outcome.failure is None:
            # Any copy counts, even one from a retired producer: Kafka has the event.
            del self._entries[entry.seq]
            if entry.dead_letter is not None:
                return [DeadLettered(entry)]
            return [Acknowledged(entry, max(0.0, outcome.at - entry.published_at))]
        if outcome.token != entry.token or outcome.generation != generation:
            return []  # a superseded copy failed (e.g. purged with its producer): not news
        if outcome.failure is Failure.PRODUCER:
            return [ReplaceProducer(outcome.generation, outcome.reason)]
        permanent = outcome.failure is Failure.PERMANENT
        if (permanent and entry.attempts >= self._permanent_attempts) or (
            self._max_attempts is not None and entry.attempts >= self._max_attempts
        ):
            return self._route_to_dead_letter(entry, outcome.reason)
        return [self._schedule(entry, outcome.reason, now)]

    def retry_later(self, entry: Entry, reason: str, now: float) -> Action:
        """Schedule another attempt of `entry` (e.g. its resend found the queue full)."""
        return self._schedule(entry, reason, now)

    def _route_to_dead_letter(self, entry: Entry, reason: str) -> list[Action]:
        """Out of budget: to the dead-letter topic, or given up when there is none or this
        was the dead-letter write itself."""
        if entry.dead_letter is not None or not self._dead_letter:
            del self._entries[entry.seq]
            if entry.dead_letter is not None:
                reason = f"{entry.dead_letter}; dead-letter write: {reason}"
            return [GaveUp(entry, reason)]
        entry.dead_letter = reason
        entry.topic_attempts, entry.attempts = entry.attempts, 0  # the write has its own budget
        return [SendToDeadLetter(entry)]

    def _schedule(self, entry: Entry, reason: str, now: float) -> Retry:
        delay = min(self._backoff * 2 ** max(entry.attempts - 1, 0), self._max_backoff)
        heapq.heappush(self._retries, (now + delay, entry.seq, entry.token or -1))
        return Retry(entry, reason, delay)

    # --- the retry schedule ---------------------------------------------------------------

    def next_due(self) -> float | None:
        """When the earliest retry is due (monotonic), None without any."""
        return self._retries[0][0] if self._retries else None

    def pop_due(self, now: float) -> list[Entry]:
        """The entries whose retry is due at `now`, in due order (each at most once)."""
        due: list[Entry] = []
        while self._retries and self._retries[0][0] <= now:
            _, seq, token = heapq.heappop(self._retries)
            entry = self._entries.get(seq)
            if entry is None or (entry.token or -1) != token or entry in due:
                continue  # settled, or resent by a producer replacement since
            due.append(entry)
        return due

    def after_replacement(self) -> list[Entry]:
        """A new producer replaced the old one: every entry it must send, in publish order.

        The retry schedule is dropped (all of it is resent now). Entries never accepted by
        librdkafka are left to the `publish` call that is still producing them."""
        self._retries.clear()
        return [e for e in self._entries.values() if e.token is not None or e.dead_letter]
