"""`service.checkpoints.StateBook`: which markets' state is written, and when."""

from __future__ import annotations

from polymarket_kafka.service.checkpoints import Checkpoint, StateBook


def test_due_after_one_interval_and_rescheduled_by_take() -> None:
    book = StateBook.starting(60.0, now=100.0)
    assert not book.due(159.9) and book.due(160.0)
    assert not book.take(160.0)  # nothing changed: an empty checkpoint
    assert book.next_due == 220.0


def test_changed_markets_are_written_once() -> None:
    book = StateBook.starting(60.0, now=0.0)
    book.touched("0xb")
    book.touched("0xa")
    book.touched("0xa")
    assert book.take(60.0) == Checkpoint(("0xa", "0xb"), ())
    assert not book.take(120.0)


def test_a_forgotten_market_becomes_a_tombstone_and_a_touch_revives_it() -> None:
    book = StateBook.starting(60.0, now=0.0)
    book.touched("0xa")
    book.forgotten("0xa")
    book.forgotten("0xb")
    book.touched("0xb")
    assert book.take(60.0) == Checkpoint(("0xb",), ("0xa",))


def test_a_market_with_an_event_on_its_way_waits() -> None:
    book = StateBook.starting(60.0, now=0.0)
    for market_id in ("0xa", "0xb", "0xc"):
        book.touched(market_id)
    book.hold("0xa")  # in the pipeline
    assert book.take(60.0, unsafe={"0xb"}) == Checkpoint(("0xc",), ())  # 0xb: unacknowledged
    assert book.dirty == {"0xa", "0xb"}
    book.release("0xa")
    assert "0xa" not in book.held
    assert book.take(120.0) == Checkpoint(("0xa", "0xb"), ())


def test_two_events_of_one_market_hold_it_until_both_left() -> None:
    book = StateBook.starting(60.0, now=0.0)
    book.touched("0xa")
    book.hold("0xa")
    book.hold("0xa")
    book.release("0xa")
    assert book.take(60.0) == Checkpoint((), ())
    book.release("0xa")
    assert book.take(120.0) == Checkpoint(("0xa",), ())


def test_a_forgotten_market_with_an_event_on_its_way_keeps_its_tombstone_for_later() -> None:
    # Its event carries the market's state: a tombstone written first would be undone by it.
    book = StateBook.starting(60.0, now=0.0)
    book.hold("0xa")
    book.forgotten("0xa")
    book.forgotten("0xb")
    assert book.take(60.0) == Checkpoint((), ("0xb",))
    assert book.tombstones == {"0xa"}
    book.release("0xa")
    assert book.take(120.0) == Checkpoint((), ("0xa",))


def test_failed_records_are_due_again_unless_the_market_changed_side() -> None:
    book = StateBook.starting(60.0, now=0.0)
    book.touched("0xa")
    book.touched("0xb")
    book.forgotten("0xc")
    book.forgotten("0xd")
    checkpoint = book.take(60.0)
    assert checkpoint == Checkpoint(("0xa", "0xb"), ("0xc", "0xd"))
    book.forgotten("0xb")  # forgotten while its write was under way
    book.touched("0xd")  # subscribed again while its tombstone was under way
    book.failed(checkpoint, ["0xa", "0xb", "0xc", "0xd"])
    assert book.take(120.0) == Checkpoint(("0xa", "0xd"), ("0xb", "0xc"))
