"""The Kafka publisher's poll thread: the only part of `kafka` that runs off the event loop.

confluent-kafka's `Producer` is thread-safe (librdkafka locks internally) but it runs callbacks
only inside `poll()`/`flush()`, and `poll()` blocks. So one worker thread does nothing but
`poll(0.1)`. The callbacks it runs (the publisher's) only append a record to `reports`; after
each poll the thread hands the batch to the event loop with `anyio.from_thread.run_sync` (trio
and asyncio alike), which calls the publisher's `drain`. All bookkeeping -- pending events,
retries, stats -- therefore happens on the event loop thread, without locks. This thread is
also the only one that ever closes a producer, so `poll()` never races with `close()`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import anyio
from confluent_kafka import KafkaError, KafkaException

from polymarket_kafka.kafka.settings import ProducerLike
from polymarket_kafka.kafka.statistics import StatisticsReport

__all__ = ["ClientErrorReport", "DeliveryReport", "PollThread", "Report"]

logger = logging.getLogger(__name__)

_POLL_SECONDS = 0.1


class DeliveryReport(NamedTuple):
    """The outcome of `produce()` number `token` of pending event `seq`, by producer
    `generation`, received at monotonic time `at`. A named tuple: one is made per event in
    the poll thread, at a third of a frozen dataclass's cost."""

    seq: int
    token: int
    generation: int
    error: KafkaError | None
    at: float


@dataclass(frozen=True)
class ClientErrorReport:
    """An error librdkafka reported for the producer of `generation` (not for one message)."""

    generation: int
    error: KafkaError


Report = DeliveryReport | ClientErrorReport | StatisticsReport


class PollThread:
    """Polls the producer being served and closes retired ones, until `stop`.

    `serve` and `stop` are called on the event loop thread; `run` is the task that owns the
    worker thread. `drain` is called on the event loop thread whenever `reports` is not empty.
    """

    def __init__(self, drain: Callable[[], None]) -> None:
        #: Appended to by the callbacks (this thread), emptied by `drain` (the event loop).
        self.reports: deque[Report] = deque()
        self._drain = drain
        self._polled: tuple[ProducerLike, int] | None = None  # (producer, generation)
        self._retiring: deque[ProducerLike] = deque()
        self._stop = threading.Event()

    def serve(self, producer: ProducerLike | None, generation: int) -> None:
        """Poll `producer` (of `generation`) from now on; the one served so far is closed."""
        previous, self._polled = self._polled, None if producer is None else (producer, generation)
        # Retired only after the swap: the thread never polls a producer it has closed.
        if previous is not None:
            self._retiring.append(previous[0])

    def stop(self) -> None:
        """Close what is retired and end the thread (after its current poll)."""
        self._stop.set()

    async def run(self) -> None:
        """Run the thread until `stop`."""
        # Shielded: even when cancelled before it started, the thread must run until `stop`,
        # or the final flush gets no reports and the producer is never closed.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._poll_forever)

    def _poll_forever(self) -> None:
        while True:
            while self._retiring:
                _retire(self._retiring.popleft())
            if self._stop.is_set():
                # `stop` is called after the last `serve`: a producer retired between the loop
                # above and this check is closed here, never left open.
                while self._retiring:
                    _retire(self._retiring.popleft())
                return
            polled = self._polled
            if polled is None:
                self._stop.wait(_POLL_SECONDS)
            else:
                try:
                    polled[0].poll(_POLL_SECONDS)
                except KafkaException as exc:
                    # confluent-kafka raises a fatal error from poll() (it never reaches
                    # error_cb): report it like one.
                    self.reports.append(ClientErrorReport(polled[1], exc.args[0]))
            if self.reports:
                anyio.from_thread.run_sync(self._drain)


def _retire(producer: ProducerLike) -> None:
    """Drop everything a producer still holds and close it (never raises)."""
    try:
        producer.purge(in_queue=True, in_flight=True, blocking=True)
        with contextlib.suppress(KafkaException):  # a fatal error is raised again: known
            producer.flush(0)  # serves the purged messages' reports: stale, ignored
        close = getattr(producer, "close", None)  # not in older confluent-kafka versions
        if close is not None:
            close()
    except Exception:
        logger.warning("closing a retired Kafka producer failed", exc_info=True)
