"""A tiny latency histogram: fixed upper bounds, per-bucket counts, sum and count.

Why not `prometheus_client.Histogram`: the components count in plain dataclasses that know
nothing about Prometheus (no global registry, nothing to unregister between tests), and the
metrics layer reads them at scrape time. This is the plain-data equivalent, exported by
`ops.metrics` as a Prometheus histogram via `cumulative()`.

Buckets follow Prometheus' `le` semantics: a value equal to an upper bound falls in that
bucket, and the last bucket (`+Inf`) catches everything above the largest bound. Pure data,
no clock: the caller measures and passes the value in.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["DEFAULT_SECONDS_BOUNDS", "Histogram"]

#: Upper bounds in seconds, from a fast local request (5 ms) to a slow poll cycle (1 min).
DEFAULT_SECONDS_BOUNDS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


def _checked(bounds: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(b) for b in bounds)
    if not values:
        raise ValueError("a histogram needs at least one upper bound")
    if any(not math.isfinite(b) for b in values):
        raise ValueError(f"histogram bounds must be finite (+Inf is implicit), got {values}")
    if any(a >= b for a, b in itertools.pairwise(values)):
        raise ValueError(f"histogram bounds must be strictly increasing, got {values}")
    return values


@dataclass
class Histogram:
    """Counts of observed values per bucket, with their sum and count.

    `counts[i]` is the number of values `v` with `bounds[i-1] < v <= bounds[i]`; the extra
    last entry counts values above `bounds[-1]`. Not thread-safe: observe and read on one
    thread (the event loop's).
    """

    bounds: tuple[float, ...] = DEFAULT_SECONDS_BOUNDS
    counts: list[int] = field(init=False)
    sum: float = field(default=0.0, init=False)
    count: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.bounds = _checked(self.bounds)
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Add one value (e.g. a duration in seconds). NaN is refused with `ValueError`."""
        if math.isnan(value):
            raise ValueError("cannot observe NaN")
        # bisect_left: a value equal to a bound belongs to that bound's bucket (`le`).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """`(upper bound, values <= bound)` for every bound, ending with `(inf, count)`."""
        result: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            result.append((bound, running))
        return result
