"""The delays of a retry loop that waits twice as long after every failure, up to a cap.

Pure: the caller sleeps. `delays = doubling(0.5, 30.0)`, then `next(delays)` after each
failure gives 0.5, 1, 2, ... 30, 30, ...
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["doubling"]


def doubling(first: float, cap: float) -> Iterator[float]:
    """`first`, then twice the previous delay, never more than `cap` (endless)."""
    delay = first
    while True:
        yield delay
        delay = min(2 * delay, cap)
