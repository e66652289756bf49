"""Client-side pacing of Polymarket requests: a token bucket in GCRA form.

`POLYMARKET_RATE_LIMIT_DELAY_MS` is the minimum spacing between two request starts. That is a
token bucket refilled with one token every `interval` seconds and holding `burst` tokens (1 by
default, i.e. strict spacing). It is implemented as the Generic Cell Rate Algorithm: a single
number, the theoretical arrival time (TAT) of the next request, replaces the token count, so
there is no refill loop and no lock.

Why no lock: the slot is reserved synchronously (read TAT, write TAT, no `await` in between),
which is atomic under any anyio backend's cooperative scheduling. Each caller then sleeps
outside any critical section until its own slot, so concurrent callers queue in arrival order
without holding each other up. A caller cancelled while sleeping wastes its slot, which only
makes the pacing slightly more conservative.

The clock and the sleep are injectable, so tests drive the limiter with a fake clock and
never really sleep.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

__all__ = ["RateLimiter"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    """Space request starts at least `interval_seconds` apart (after an optional burst).

    `interval_seconds == 0` disables pacing: `acquire()` returns at once and never waits.
    `clock` must be monotonic (default: `anyio.current_time`, the event loop's clock);
    `sleep` defaults to `anyio.sleep`. `waits` counts the calls that had to wait.
    """

    def __init__(
        self,
        interval_seconds: float,
        *,
        burst: int = 1,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        if interval_seconds < 0:
            raise ValueError(f"interval_seconds must be >= 0, got {interval_seconds}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.interval = float(interval_seconds)
        self.burst = burst
        self._clock: Clock = clock or anyio.current_time
        self._sleep: Sleep = sleep or anyio.sleep
        self._tat: float | None = None
        self.waits = 0
        self.waited_seconds = 0.0

    @classmethod
    def from_delay_ms(
        cls, delay_ms: float, *, clock: Clock | None = None, sleep: Sleep | None = None
    ) -> RateLimiter:
        """The limiter for `POLYMARKET_RATE_LIMIT_DELAY_MS` (milliseconds, 0 disables)."""
        return cls(delay_ms / 1000.0, clock=clock, sleep=sleep)

    def reserve(self, now: float) -> float:
        """Book the next slot at time `now`; return how long the caller must wait (>= 0).

        Pure bookkeeping, no I/O: `acquire()` is this plus the sleep.
        """
        if self.interval == 0:
            return 0.0
        tat = now if self._tat is None else max(self._tat, now)
        self._tat = tat + self.interval
        return max(0.0, tat - now - (self.burst - 1) * self.interval)

    async def acquire(self) -> bool:
        """Wait until the caller may start a request. Returns True when it had to wait."""
        return await self.wait() > 0

    async def wait(self) -> float:
        """Wait until the caller may start a request; return the seconds waited (0: none)."""
        delay = self.reserve(self._clock())
        if delay <= 0:
            return 0.0
        self.waits += 1
        self.waited_seconds += delay
        await self._sleep(delay)
        return delay
