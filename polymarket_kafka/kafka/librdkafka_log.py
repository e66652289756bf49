"""librdkafka's own log lines, routed into `logging` without flooding it, and silent once closed.

confluent-kafka hands every librdkafka log line to the `logger` of the client configuration
as `logger.log(level, "%s [%s] %s", facility, client_name, text)`, from the thread that
serves the client (the publisher's poll thread). `LibrdkafkaLog` stands in for that logger
and forwards to a real one (`polymarket_kafka.kafka.publisher.librdkafka`), with three rules:

* `FAIL` lines (a connection to a broker failed or was closed) go to DEBUG. librdkafka reports
  the same failure through `error_cb`, where the publisher's `ConnectivityTracker` turns an
  outage into one WARNING, reminders and one INFO. Kept at their level (ERROR), they were
  half of the ~130 lines a 30 s outage produced: one per reconnection attempt, twice a second.
* Lines about this producer being fenced (`_FENCED`, "fences the current one") go to
  DEBUG: the transactional publisher stops the service with one CRITICAL line of its own
  that names the `transactional.id`; librdkafka's three (ADDPARTS, TXNERR, FATAL at ERROR
  and CRITICAL) said the same, less clearly.
* Any other line keeps its level, but a repeated line (same level, facility and text once its
  digits are masked: durations, counts and ports vary) goes through at most once per `window`
  seconds; the next one that does says how many were left out. A genuine first occurrence is
  never hidden.
* After `close` nothing is logged at all: once the publisher has closed, a late line (a
  producer destroyed late, a last callback) must not appear after the service said it
  stopped. The publisher closes it after its poll thread has ended.

Times come from an injected monotonic clock (called on the poll thread).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

from polymarket_kafka.kafka.connectivity import RepeatLimiter

__all__ = ["LibrdkafkaLog"]

#: librdkafka's facility for a failed or closed broker connection (also sent to `error_cb`).
_CONNECTION_FAILURE = "FAIL"
_DIGITS = re.compile(r"\d+")
#: Words of librdkafka's lines about a producer fenced by a newer one.
_FENCED_WORDS = ("_FENCED", "fences the current one", "has been fenced")


class LibrdkafkaLog:
    """A `logger` for a librdkafka client configuration (see the module docstring)."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        window: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._monotonic = monotonic
        self._repeats = RepeatLimiter(window)
        self._lock = threading.Lock()  # librdkafka may log from more than one thread
        self._closed = False

    def log(self, level: int, msg: str, *args: object) -> None:
        """Called by confluent-kafka for every librdkafka line."""
        facility = args[0] if len(args) == 3 else None  # (facility, client name, text)
        if facility == _CONNECTION_FAILURE or (
            len(args) == 3 and any(word in str(args[2]) for word in _FENCED_WORDS)
        ):
            level = logging.DEBUG
        # Held while logging, so that once `close` returns no line is on its way out.
        with self._lock:
            if self._closed or not self._logger.isEnabledFor(level):
                return
            if facility is not None and level > logging.DEBUG:
                # The client name is not in the key: a replaced producer repeats the same line.
                key = (level, facility, _DIGITS.sub("#", str(args[2])))
                left_out = self._repeats.allow(key, self._monotonic())
                if left_out is None:
                    return
                if left_out:
                    msg, args = f"{msg} (%d similar line(s) left out)", (*args, left_out)
            self._logger.log(level, msg, *args)

    def close(self) -> None:
        """Log nothing from now on (the publisher has closed)."""
        with self._lock:
            self._closed = True
