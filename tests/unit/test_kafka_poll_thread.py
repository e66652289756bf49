"""The poll thread closes every producer it was given, whatever the interleaving at stop.

The race is driven deterministically: the retiring queue itself runs the "event loop side"
(`serve(None)` then `stop()`) at the worst moment -- right after the thread found it empty
and before it checks for the stop -- so no sleep or thread timing decides the outcome.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from polymarket_kafka.kafka.poll_thread import PollThread


@dataclass
class Producer:
    polls: int = 0
    calls: list[str] = field(default_factory=list)

    def produce(self, topic: str, **kwargs: object) -> None:
        raise AssertionError("not used")

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        self.calls.append("purge")

    def flush(self, timeout: float) -> int:
        self.calls.append("flush")
        return 0

    def close(self) -> bool:
        self.calls.append("close")
        return True


class StopsWhenFoundEmpty(deque[object]):
    """Empty when the thread looks; the owner retires the producer and stops right after."""

    def __init__(self, thread: PollThread) -> None:
        super().__init__()
        self.thread, self.fired = thread, False

    def __bool__(self) -> bool:
        empty = len(self) == 0
        if empty and not self.fired:
            self.fired = True
            self.thread.serve(None, 1)  # what the publisher's close does...
            self.thread.stop()  # ...immediately followed by this
        return not empty


def test_a_producer_retired_just_before_stop_is_still_closed() -> None:
    thread = PollThread(lambda: None)
    producer = Producer()
    thread.serve(producer, 0)
    thread._retiring = StopsWhenFoundEmpty(thread)  # type: ignore[assignment]
    thread._poll_forever()  # returns once stopped
    assert producer.calls == ["purge", "flush", "close"]
    assert producer.polls == 0


def test_producers_retired_while_running_are_closed_and_not_polled_again() -> None:
    drained: list[int] = []
    thread = PollThread(lambda: drained.append(1))
    first, second = Producer(), Producer()
    thread.serve(first, 0)
    thread.serve(second, 1)
    thread.serve(None, 2)
    thread.stop()
    thread._poll_forever()
    assert first.calls == second.calls == ["purge", "flush", "close"]
    assert first.polls == second.polls == 0
