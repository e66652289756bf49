"""`kafka.transaction_book.TransactionBook`: what the transactional publisher has to commit,
and what a commit (or a failed transaction) settles. Pure bookkeeping, no Kafka."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polymarket_kafka.kafka.transaction_book import Batch, Outgoing, TransactionBook
from tests import factories

NAMESPACE = uuid.UUID("5d0c7f52-3a4e-4d0e-9a57-7e2f8c1b6a10")
MARKETS = [f"0x{n:064x}" for n in range(1, 4)]
EVENTS = [
    factories.make_event(event_id=str(uuid.uuid5(NAMESPACE, str(n))), market_id=MARKETS[n % 3])
    for n in range(6)
]


def outgoing(n: int) -> Outgoing:
    return Outgoing(EVENTS[n], b"value-%d" % n, float(n))


def numbers(items: Iterable[Outgoing]) -> list[int]:
    """The event numbers of `Outgoing`s (their value is b"value-<n>")."""
    return [int(item.value.removeprefix(b"value-")) for item in items]


def test_an_empty_book() -> None:
    book = TransactionBook(3)
    assert len(book) == 0
    assert list(book) == []
    assert book.oldest() is None
    assert not book.has_work()
    assert book.has_room()
    assert book.staged_states() == 0
    assert book.committed_through == -1


def test_take_hands_everything_waiting_in_publish_order_and_numbers_the_batches() -> None:
    book = TransactionBook(10)
    for n in range(3):
        book.add(outgoing(n))
    batch = book.take()
    assert batch.number == 0
    assert numbers(batch.events) == [0, 1, 2]
    assert batch.states == {}
    assert not book.has_work()  # everything taken ...
    assert len(book) == 3  # ... but not committed yet

    assert book.committed() is batch
    assert book.committed_through == 0
    assert len(book) == 0

    book.add(outgoing(3))
    second = book.take()
    assert (second.number, numbers(second.events)) == (1, [3])
    book.committed()
    assert book.committed_through == 1


def test_an_event_added_with_its_state_stages_the_state() -> None:
    book = TransactionBook(10)
    book.add(outgoing(0), (MARKETS[0], b"after-0"))
    book.add(outgoing(1), (MARKETS[1], None))  # a tombstone is a state too
    book.add(outgoing(2))
    assert book.staged_states() == 2
    batch = book.take()
    assert batch.states == {MARKETS[0]: b"after-0", MARKETS[1]: None}
    assert book.staged_states() == 0


def test_a_markets_latest_staged_state_replaces_an_older_one() -> None:
    book = TransactionBook(10)
    book.stage([(MARKETS[0], b"old"), (MARKETS[1], b"b")])
    book.stage([(MARKETS[0], b"new")])
    assert book.staged_states() == 2
    assert book.take().states == {MARKETS[0]: b"new", MARKETS[1]: b"b"}


def test_states_alone_are_work_and_make_a_true_batch() -> None:
    book = TransactionBook(10)
    book.stage([(MARKETS[0], b"s")])
    assert book.has_work()
    assert len(book) == 0  # only events count towards the backlog
    batch = book.take()
    assert batch
    assert not Batch(7, ())
    assert Batch(7, (), {MARKETS[0]: None})
    assert Batch(7, (outgoing(0),))


def test_a_failed_batch_goes_back_in_front_of_what_came_since_in_the_same_order() -> None:
    book = TransactionBook(10)
    for n in range(3):
        book.add(outgoing(n))
    batch = book.take()
    book.add(outgoing(3))
    book.add(outgoing(4))

    assert book.failed() is batch
    assert book.committed_through == -1
    again = book.take()
    assert again.number == 1
    assert numbers(again.events) == [0, 1, 2, 3, 4]
    # The very same objects: the same bytes are produced again.
    assert again.events[:3] == batch.events
    assert all(a is b for a, b in zip(again.events, batch.events, strict=False))


def test_a_failed_batch_keeps_its_states_unless_a_newer_one_was_staged_since() -> None:
    book = TransactionBook(10)
    book.stage([(MARKETS[0], b"a1"), (MARKETS[1], b"b1")])
    book.take()
    book.stage([(MARKETS[1], b"b2"), (MARKETS[2], b"c2")])
    book.failed()
    assert book.take().states == {MARKETS[0]: b"a1", MARKETS[1]: b"b2", MARKETS[2]: b"c2"}


def test_stage_names_the_batch_whose_commit_covers_the_records() -> None:
    book = TransactionBook(10)
    ticket = book.stage([(MARKETS[0], b"s")])
    assert ticket == 0
    batch = book.take()
    # Staged while batch 0 is being committed: only batch 1 carries it.
    later = book.stage([(MARKETS[1], b"t")])
    assert later == 1
    book.committed()
    assert book.committed_through >= ticket
    assert book.committed_through < later
    assert batch.states == {MARKETS[0]: b"s"}
    book.take()
    book.committed()
    assert book.committed_through >= later


def test_a_failed_batchs_tickets_are_satisfied_by_the_next_commit() -> None:
    book = TransactionBook(10)
    ticket = book.stage([(MARKETS[0], b"s")])
    book.take()
    book.failed()
    assert book.committed_through < ticket
    retry = book.take()  # carries the failed batch's state, under a higher number
    assert retry.number > ticket
    assert retry.states == {MARKETS[0]: b"s"}
    book.committed()
    assert book.committed_through >= ticket


def test_room_counts_the_events_being_committed_and_those_waiting() -> None:
    book = TransactionBook(3)
    book.add(outgoing(0))
    book.add(outgoing(1))
    assert book.has_room()
    book.take()
    book.add(outgoing(2))
    assert not book.has_room()  # 2 committing + 1 waiting
    book.stage([(MARKETS[0], b"s")])
    assert len(book) == 3  # state records do not take room
    book.committed()
    assert book.has_room()
    assert len(book) == 1


def test_len_iter_and_oldest_cover_the_committing_batch_then_the_waiting_events() -> None:
    book = TransactionBook(10)
    book.add(outgoing(0))
    book.add(outgoing(1))
    book.take()
    book.add(outgoing(2))
    assert len(book) == 3
    assert numbers(list(book)) == [0, 1, 2]
    oldest = book.oldest()
    assert oldest is not None
    assert oldest.event == EVENTS[0]
    book.failed()
    assert numbers(list(book)) == [0, 1, 2]
    book.take()
    book.committed()
    assert list(book) == []


def test_a_second_take_while_committing_is_refused() -> None:
    book = TransactionBook(10)
    book.add(outgoing(0))
    book.take()
    with pytest.raises(RuntimeError, match="being committed already"):
        book.take()


@pytest.mark.parametrize("settle", [TransactionBook.committed, TransactionBook.failed])
def test_settling_without_a_transaction_is_refused(
    settle: Callable[[TransactionBook], Batch],
) -> None:
    book = TransactionBook(10)
    book.add(outgoing(0))
    with pytest.raises(RuntimeError, match="no transaction is being committed"):
        settle(book)
    book.take()
    book.committed()
    with pytest.raises(RuntimeError, match="no transaction is being committed"):
        settle(book)


@pytest.mark.parametrize("max_in_flight", [0, -1])
def test_max_in_flight_below_one_is_refused(max_in_flight: int) -> None:
    with pytest.raises(ValueError, match="max_in_flight must be >= 1"):
        TransactionBook(max_in_flight)


# --- property ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Add:
    market: int
    with_state: bool


@dataclass(frozen=True)
class Stage:
    market: int


@dataclass(frozen=True)
class Take:
    pass


@dataclass(frozen=True)
class Settle:
    commit: bool


market_numbers = st.integers(0, len(MARKETS) - 1)
operations = st.lists(
    st.one_of(
        st.builds(Add, market_numbers, st.booleans()),
        st.builds(Stage, market_numbers),
        st.just(Take()),
        st.builds(Settle, st.booleans()),
    ),
    max_size=40,
)


@given(operations, st.integers(1, 5))
def test_every_event_is_committed_once_in_publish_order_and_every_state_by_its_ticket(
    ops: list[Add | Stage | Take | Settle], max_in_flight: int
) -> None:
    """Whatever mix of publishes, stages, commits and failed transactions: the committed
    events are the published ones, each once, in publish order; a state record is committed
    (or replaced by a newer one of its market) by the time `committed_through` reaches the
    number `stage` returned; the last committed state of a market is its latest staged."""
    book = TransactionBook(max_in_flight)
    added: list[int] = []
    committed_events: list[int] = []
    committed_states: dict[str, int] = {}  # market -> sequence number of its committed state
    latest_staged: dict[str, int] = {}
    tickets: list[tuple[str, int, int]] = []  # (market, sequence number, ticket)
    committing = False
    sequence = 0

    def stage(market: str) -> int:
        nonlocal sequence
        sequence += 1
        latest_staged[market] = sequence
        return sequence

    def commit() -> None:
        batch = book.committed()
        assert book.committed_through == batch.number
        committed_events.extend(numbers(batch.events))
        for market, value in batch.states.items():
            assert value is not None
            seq = int(value)
            assert seq > committed_states.get(market, 0), "an older state overwrote a newer"
            committed_states[market] = seq
        for market, seq, ticket in tickets:
            if ticket <= book.committed_through:
                assert committed_states.get(market, 0) >= seq

    for op in ops:
        if isinstance(op, Add):
            n = len(added)
            item = Outgoing(EVENTS[0], b"value-%d" % n, float(n))
            assert book.has_room() == (len(book) < max_in_flight)
            market = MARKETS[op.market]
            if op.with_state:
                seq = stage(market)
                book.add(item, (market, b"%d" % seq))
            else:
                book.add(item)
            added.append(n)
        elif isinstance(op, Stage):
            market = MARKETS[op.market]
            seq = stage(market)
            tickets.append((market, seq, book.stage([(market, b"%d" % seq)])))
        elif isinstance(op, Take):
            if not committing:
                book.take()
                committing = True
        elif committing:
            if op.commit:
                commit()
            else:
                book.failed()
            committing = False
        assert len(book) == len(added) - len(committed_events)
        assert numbers(list(book)) == added[len(committed_events) :]

    if committing:
        commit()
    while book.has_work():
        book.take()
        commit()
    assert committed_events == added
    assert committed_states == latest_staged
    assert len(book) == 0
