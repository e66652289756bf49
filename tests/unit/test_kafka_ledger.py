"""The delivery ledger: plain data in, actions out (no broker, no clock, no threads)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polymarket_kafka.kafka.ledger import (
    Acknowledged,
    DeadLettered,
    DeliveryLedger,
    Entry,
    Failure,
    GaveUp,
    Outcome,
    ReplaceProducer,
    Retry,
    SendToDeadLetter,
)
from tests import factories

EVENT = factories.make_event()


def ledger(**options: object) -> DeliveryLedger:
    settings: dict[str, object] = {"max_in_flight": 10, "backoff_seconds": 1.0}
    return DeliveryLedger(**(settings | options))  # type: ignore[arg-type]


def sent(book: DeliveryLedger, now: float = 0.0) -> tuple[Entry, int]:
    entry = book.add(EVENT, b"{}", now)
    token = entry.seq * 100 + entry.attempts
    book.sent(entry, token)
    return entry, token


def report(entry: Entry, failure: Failure | None, *, at: float = 1.0, gen: int = 0) -> Outcome:
    assert entry.token is not None
    return Outcome(entry.seq, entry.token, gen, failure, "why", at)


def test_an_acknowledgement_settles_the_entry_with_its_latency() -> None:
    book = ledger()
    entry, _ = sent(book, now=2.0)
    assert book.on_outcome(report(entry, None, at=2.5), 0, 3.0) == [Acknowledged(entry, 0.5)]
    assert len(book) == 0 and entry not in book
    # A second copy's acknowledgement is not news.
    assert book.on_outcome(report(entry, None), 0, 3.0) == []


def test_retriable_failures_are_retried_with_exponential_backoff() -> None:
    book = ledger(max_backoff_seconds=3.0)
    entry, _ = sent(book)
    delays = []
    for attempt in range(4):
        (action,) = book.on_outcome(report(entry, Failure.RETRIABLE), 0, 10.0 * attempt)
        assert isinstance(action, Retry)
        delays.append(action.delay)
        assert book.next_due() == 10.0 * attempt + action.delay
        assert book.pop_due(10.0 * attempt + action.delay) == [entry]
        book.sent(entry, 1000 + attempt)
    assert delays == [1.0, 2.0, 3.0, 3.0]
    assert book.next_due() is None


def test_a_stale_or_superseded_failure_is_ignored() -> None:
    book = ledger()
    entry, token = sent(book)
    assert book.on_outcome(Outcome(entry.seq, token + 1, 0, Failure.RETRIABLE, "x", 1), 0, 0) == []
    assert book.on_outcome(report(entry, Failure.RETRIABLE, gen=0), 1, 0) == []
    assert entry in book


def test_a_producer_failure_asks_for_a_new_producer_and_resends_after_it() -> None:
    book = ledger()
    entry, _ = sent(book)
    unsent = book.add(EVENT, b"{}", 0.0)  # still inside its publish call
    assert book.on_outcome(report(entry, Failure.PRODUCER), 0, 0) == [ReplaceProducer(0, "why")]
    assert book.after_replacement() == [entry]
    assert unsent in book


def test_permanent_failures_go_to_the_dead_letter_topic_after_three_attempts() -> None:
    book = ledger()
    entry, _ = sent(book)
    for attempt in (1, 2):
        (retry,) = book.on_outcome(report(entry, Failure.PERMANENT), 0, 0)
        assert isinstance(retry, Retry)
        book.sent(entry, 50 + attempt)
    assert book.on_outcome(report(entry, Failure.PERMANENT), 0, 0) == [SendToDeadLetter(entry)]
    assert entry.dead_letter == "why" and entry.topic_attempts == 3 and entry.attempts == 0
    book.sent(entry, 99)
    assert book.on_outcome(report(entry, None), 0, 0) == [DeadLettered(entry)]
    assert len(book) == 0


def test_a_failing_dead_letter_write_is_given_up_after_its_own_budget() -> None:
    book = ledger(permanent_attempts=1)
    entry, _ = sent(book)
    assert book.on_outcome(report(entry, Failure.PERMANENT), 0, 0) == [SendToDeadLetter(entry)]
    book.sent(entry, 7)
    (gave_up,) = book.on_outcome(report(entry, Failure.PERMANENT), 0, 0)
    assert isinstance(gave_up, GaveUp) and gave_up.reason == "why; dead-letter write: why"
    assert len(book) == 0


def test_a_record_rejected_by_the_producer_goes_straight_to_the_dead_letter_topic() -> None:
    book = ledger()
    entry = book.add(EVENT, b"{}", 0.0)
    assert book.rejected(entry, "too big") == [SendToDeadLetter(entry)]
    assert entry.dead_letter == "rejected by the producer: too big"
    # Refused again on the dead-letter topic: nowhere else to go.
    (gave_up,) = book.rejected(entry, "too big")
    assert isinstance(gave_up, GaveUp) and len(book) == 0


def test_without_a_dead_letter_topic_exhausted_entries_are_given_up() -> None:
    book = ledger(dead_letter=False, max_attempts=1)
    entry, _ = sent(book)
    (gave_up,) = book.on_outcome(report(entry, Failure.RETRIABLE), 0, 0)
    assert gave_up == GaveUp(entry, "why")


def test_room_is_bounded_by_max_in_flight() -> None:
    book = ledger(max_in_flight=2)
    first = book.add(EVENT, b"{}", 0.0)
    book.add(EVENT, b"{}", 1.0)
    assert not book.has_room()
    assert book.oldest() is first
    assert book.give_up(first, "cancelled") == [GaveUp(first, "cancelled")]
    assert book.give_up(first, "cancelled") == []
    assert book.has_room()


@pytest.mark.parametrize(
    "options",
    [{"max_in_flight": 0}, {"max_attempts": 0}, {"permanent_attempts": 0}],
)
def test_invalid_bounds_are_refused(options: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        ledger(**options)


@given(
    st.lists(
        st.sampled_from([None, Failure.RETRIABLE, Failure.PERMANENT, Failure.PRODUCER]),
        min_size=1,
        max_size=12,
    )
)
def test_every_entry_leaves_exactly_once_or_stays_pending(
    outcomes: list[Failure | None],
) -> None:
    """Whatever the broker says, an entry ends acknowledged, dead-lettered or given up --
    exactly one of them, once -- or is still pending (to be retried or resent)."""
    book = ledger(max_attempts=5)
    entry, _ = sent(book)
    endings = []
    token = 1000
    for failure in outcomes:
        if entry not in book:
            break
        for action in book.on_outcome(report(entry, failure), 0, 0.0):
            if isinstance(action, (Acknowledged, DeadLettered, GaveUp)):
                endings.append(action)
        token += 1
        if entry in book:
            book.sent(entry, token)  # the shell resends (retry, replacement or DLQ write)
    assert len(endings) <= 1
    assert (len(endings) == 1) == (entry not in book)
