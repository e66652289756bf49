"""One market's recent prices in a bounded, bucketed window, and its volatility (pure).

The window keeps the last `window` of a market's prices in at most `WINDOW_BUCKETS` (+ 2)
time buckets: each bucket holds its last observation (time and price), so a market polled
every 5 s with a 1 h window keeps 61 pairs of floats instead of 720 observations, whatever
the polling rate. Buckets are aligned on multiples of `window / WINDOW_BUCKETS` seconds since
the epoch. The newest bucket is the *current* one (the price now); the others, from the
`anchor` on, are the *candidates* a move can be measured from (`Detector`).

Volatility is measured from the buckets as they leave the window, so a move is always judged
against the market's volatility *before* it: an exponentially weighted average (half-life
`volatility.half_life`) of squared bucket-to-bucket changes per second, each change clipped
at `VOLATILITY_CLIP` standard deviations (one news jump does not deafen the market for a
day). It starts at `volatility.prior`, the volatility assumed of a market not yet known.

Per observation the work is O(1): a price in the current bucket overwrites it; a new bucket
appends one pair and drops the pairs that left the window (amortised O(1), each feeding the
volatility once). The quiet band — the prices that cannot qualify against any candidate —
is recomputed only when the candidates or the volatility change (a new bucket, a new
anchor), so most observations cost one comparison.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from collections.abc import Iterator

from polymarket_kafka.detection.moves import per_second, required_move
from polymarket_kafka.ruleset.params import DetectionParams

__all__ = [
    "MIN_BUCKET_SECONDS",
    "VOLATILITY_CLIP",
    "WINDOW_BUCKETS",
    "MarketWindow",
    "bucket_width",
]

#: Buckets per window (their width is `window / WINDOW_BUCKETS`).
WINDOW_BUCKETS = 60
#: A change feeds the volatility clipped to this many standard deviations.
VOLATILITY_CLIP = 5.0
#: Margin keeping the quiet band strictly inside what `moves.at_least` could accept.
_BAND_MARGIN = 2e-9


#: Narrowest bucket: a window below 60 ms (a subscription override can ask for one) still
#: has buckets whose boundaries are finite numbers.
MIN_BUCKET_SECONDS = 0.001


def bucket_width(params: DetectionParams) -> float:
    """Width of a window bucket, in seconds."""
    return max(params.window_seconds / WINDOW_BUCKETS, MIN_BUCKET_SECONDS)


class MarketWindow:
    """The bucketed window and volatility of one market. Times are float seconds since the
    epoch (exact for snapshot times: see `detector_state`)."""

    __slots__ = (
        "anchor",
        "bucket_end",
        "exit",
        "prices",
        "quiet_high",
        "quiet_low",
        "reach",
        "stale",
        "times",
        "variance",
    )

    def __init__(
        self,
        times: deque[float],
        prices: deque[float],
        bucket_end: float,
        variance: float,
        anchor: float | None = None,
        exit: tuple[float, float] | None = None,
    ) -> None:
        self.times = times
        self.prices = prices
        #: End of the current bucket: an observation at or after it opens a new one.
        self.bucket_end = bucket_end
        #: Variance per second of the price (see the module docstring).
        self.variance = variance
        #: Only buckets observed at or after this time are candidates (None: all).
        self.anchor = anchor
        #: The last bucket that left the window: the next one's change is measured from it.
        self.exit = exit
        self.quiet_low = 0.0
        self.quiet_high = 0.0
        #: A price closer than this to a candidate cannot be a qualifying move from it.
        self.reach = 0.0
        #: The quiet band must be recomputed before use.
        self.stale = True

    @classmethod
    def start(cls, at: float, price: float, params: DetectionParams) -> MarketWindow:
        """A market's window at its first observation, with the prior volatility."""
        window = cls(deque([at]), deque([price]), 0.0, per_second(params.volatility_prior))
        window.bucket_end = _bucket_end(at, params)
        return window

    def add(self, at: float, price: float, params: DetectionParams) -> None:
        """Record an observation (newer than every one before)."""
        if at < self.bucket_end:
            self.times[-1] = at
            self.prices[-1] = price
            return
        self._trim(at, params)
        self.times.append(at)
        self.prices.append(price)
        self.bucket_end = _bucket_end(at, params)
        self.stale = True

    def _trim(self, at: float, params: DetectionParams) -> None:
        """Drop the buckets older than the window (the latest is always kept), each feeding
        the volatility."""
        horizon = at - params.window_seconds
        times, prices = self.times, self.prices
        while len(times) > 1 and times[0] < horizon:
            self._feed(times.popleft(), prices.popleft(), params)

    def _feed(self, at: float, price: float, params: DetectionParams) -> None:
        previous, self.exit = self.exit, (at, price)
        if previous is not None:
            self.learn(price - previous[1], at - previous[0], params)

    def learn(self, change: float, seconds: float, params: DetectionParams) -> None:
        """Fold one price change over `seconds` into the volatility (clipped at
        `VOLATILITY_CLIP` standard deviations, when there is a scale to clip at)."""
        if seconds <= 0:
            return
        scale = max(self.variance, per_second(params.volatility_floor))
        if scale > 0:  # with prior and floor both 0 there is nothing to clip at yet
            limit = VOLATILITY_CLIP * math.sqrt(scale * seconds)
            change = max(-limit, min(limit, change))
        weight = -math.expm1(-seconds * math.log(2) / params.volatility_half_life_seconds)
        self.variance += weight * (change * change / seconds - self.variance)

    def _start(self) -> int:
        """Index of the first bucket from the anchor on."""
        anchor = self.anchor
        if anchor is None or self.times[0] >= anchor:
            return 0
        return bisect.bisect_left(self.times, anchor)

    def candidates(self) -> Iterator[tuple[float, float]]:
        """(time, price) of the buckets a move can be measured from, oldest first: every
        bucket but the current one, from the anchor on."""
        start, stop = self._start(), len(self.times) - 1
        return zip(
            itertools.islice(self.times, start, stop),
            itertools.islice(self.prices, start, stop),
            strict=True,
        )

    def first(self) -> tuple[float, float]:
        """The oldest observation kept from the anchor on (the current one if none)."""
        start = min(self._start(), len(self.times) - 1)
        return self.times[start], self.prices[start]

    def quiet(self, price: float, params: DetectionParams) -> bool:
        """True when `price` cannot be a qualifying move from any candidate: it is within
        `reach` = `max(floor, required_move(min_horizon))` of all of them (a fast,
        conservative test; the detector checks the previous observation against `reach`)."""
        if self.stale:
            self._band(params)
        return self.quiet_low < price < self.quiet_high

    def _band(self, params: DetectionParams) -> None:
        start, stop = self._start(), len(self.prices) - 1
        prices = list(itertools.islice(self.prices, start, stop))
        self.stale = False
        reach = max(params.floor, required_move(self.variance, 0.0, params)) - _BAND_MARGIN
        self.reach = reach
        if not prices:
            self.quiet_low, self.quiet_high = -math.inf, math.inf
            return
        self.quiet_low, self.quiet_high = max(prices) - reach, min(prices) + reach

    def anchor_at(self, at: float) -> None:
        """Measure from `at` on: earlier buckets are no longer candidates."""
        self.anchor = at
        self.stale = True

    def drop_since(self, at: float) -> None:
        """Forget the buckets observed at or after `at` (a glitch: never a baseline; the
        detector folds the glitch into the volatility itself, `learn`); the next observation
        opens a new bucket."""
        times, prices = self.times, self.prices
        while times and times[-1] >= at:
            times.pop()
            prices.pop()
        self.bucket_end = -math.inf
        self.stale = True

    def restart(self, at: float, price: float, params: DetectionParams) -> None:
        """Keep only this observation (the volatility stays: it is the market's, measured)."""
        self.times = deque([at])
        self.prices = deque([price])
        self.bucket_end = _bucket_end(at, params)
        self.anchor = None
        self.stale = True

    def reshape(self, last: float, params: DetectionParams) -> None:
        """Adopt another window length: re-bucket what is kept at the new width (the last
        observation of each new bucket) and trim it to the new window as of `last`."""
        times: deque[float] = deque()
        prices: deque[float] = deque()
        for at, price in zip(self.times, self.prices, strict=True):
            # The same test as `add` (`at < end of the last bucket`), so that a time on a
            # boundary that `window / 60` cannot hold exactly falls on the same side.
            if times and at < _bucket_end(times[-1], params):
                times[-1], prices[-1] = at, price
            else:
                times.append(at)
                prices.append(price)
        self.times, self.prices = times, prices
        self._trim(last, params)
        self.bucket_end = _bucket_end(self.times[-1], params)
        self.stale = True


def _bucket_end(at: float, params: DetectionParams) -> float:
    width = bucket_width(params)
    return (math.floor(at / width) + 1) * width
