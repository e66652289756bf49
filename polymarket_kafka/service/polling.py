"""The polling source of the pipeline: poll cycles on a fixed grid of ticks.

`poll_markets` runs `Poller.poll_once` every `poll_interval_seconds` over the latest active
subscriptions and sends each snapshot down the pipeline; a failed or unavailable cycle is
recorded (`SourceOutcomes`) and retried on the next tick; a cycle that overran the interval
skips the ticks already past (`next_poll_tick`, pure) instead of bursting.

With the market channel on (`coordinator`), a tick polls only what the stream does not serve,
and everything once per reconciliation interval (`service.streaming`); a tick with nothing to
poll makes no request and records no cycle.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from polymarket_kafka.models import MarketSnapshot
from polymarket_kafka.service.ports import Poller, PollOutcome
from polymarket_kafka.service.stages import LatestSubscriptions
from polymarket_kafka.service.stats import ServiceSettings, SourceOutcomes
from polymarket_kafka.service.streaming import StreamCoordinator

__all__ = ["Polled", "next_poll_tick", "poll_markets"]

logger = logging.getLogger(__name__)

#: A snapshot and the monotonic time (`anyio.current_time()`) it left the poller.
Polled = tuple[MarketSnapshot, float]


async def poll_markets(
    snapshots: MemoryObjectSendStream[Polled],
    poller: Poller,
    subscriptions: LatestSubscriptions,
    settings: ServiceSettings,
    clock: Callable[[], datetime],
    outcomes: SourceOutcomes,
    coordinator: StreamCoordinator | None = None,
) -> None:
    async with snapshots:
        await subscriptions.loaded.wait()
        next_tick = anyio.current_time()
        cycles = 0
        while settings.max_cycles is None or cycles < settings.max_cycles:
            cycles += 1
            now = clock()
            started = anyio.current_time()
            active = subscriptions.value
            if coordinator is None:
                polled = await _cycle(
                    cycles, partial(poller.poll_once, active, now), now, started, outcomes
                )
            else:
                plan = coordinator.plan(active, started)
                polled = []
                if plan.only != frozenset():
                    # (Otherwise the stream serves every market: no REST cycle, and none
                    # recorded; readiness then asks for one per reconciliation, `run_service`.)
                    poll = partial(coordinator.poll, active, now, plan)
                    polled = await _cycle(cycles, poll, now, started, outcomes)
                # Failed or skipped too: the stream still follows the subscriptions.
                polled = coordinator.after_poll(active, plan, polled, clock)
            for snapshot in polled:
                await snapshots.send((snapshot, anyio.current_time()))
            now_monotonic = anyio.current_time()
            interval = settings.poll_interval_seconds
            next_tick, missed = next_poll_tick(next_tick, interval, now_monotonic)
            if missed:
                outcomes.ticks_skipped(missed)
                logger.warning(
                    "cycle %d took %.1fs, longer than the poll interval (%gs): %d tick(s) "
                    "skipped, next cycle in %.1fs",
                    cycles,
                    now_monotonic - started,
                    interval,
                    missed,
                    max(0.0, next_tick - now_monotonic),
                    extra={"cycle": cycles},
                )
            await anyio.sleep(max(0.0, next_tick - now_monotonic))


async def _cycle(
    cycle: int,
    poll: Callable[[], Awaitable[PollOutcome]],
    now: datetime,
    started: float,
    outcomes: SourceOutcomes,
) -> list[MarketSnapshot]:
    """Run cycle `cycle`'s poll (stamped `now`, begun at monotonic `started`) and record how
    it went; return its snapshots (none when it raised)."""
    try:
        result = await poll()
    except Exception as exc:
        outcomes.poll_failed(exc, anyio.current_time() - started)
        logger.exception(
            "poll cycle %d failed; retrying on the next tick", cycle, extra={"cycle": cycle}
        )
        return []
    if outcomes.polled(result, now, anyio.current_time() - started):
        _log_skipped(cycle, result)
    else:
        logger.warning(
            "cycle %d: Polymarket unavailable, %d market(s) not priced: %s",
            cycle,
            len(result.skipped),
            result.unavailable,
            extra={"cycle": cycle},
        )
    return list(result.snapshots)


def next_poll_tick(previous: float, interval: float, now: float) -> tuple[float, int]:
    """The tick of the next poll cycle after the one due at `previous`, and how many ticks
    were skipped because they were already past at `now` (monotonic seconds).

    Ticks stay on the grid `previous + k * interval`. After a cycle that overran, the next
    one runs on the first tick not yet past -- at once when `now` is on it -- instead of
    running every missed tick back to back (a burst of requests that only repeats the same
    prices, and pressure on Polymarket's rate limits).
    """
    tick = previous + interval
    if now <= tick:
        return tick, 0
    # The small tolerance keeps a tick that `now` reached exactly (give or take float
    # rounding) from being counted as missed.
    missed = math.ceil((now - tick) / interval - 1e-9)
    return tick + missed * interval, missed


def _log_skipped(cycle: int, result: PollOutcome) -> None:
    """The one line of each skipped market in a cycle (the poller itself logs none)."""
    for market_id, reason in result.skipped.items():
        logger.warning(
            "cycle %d: skipped market %s: %s",
            cycle,
            market_id,
            reason,
            extra={
                "cycle": cycle,
                "market_id": market_id,
                "skip_reason": result.skip_kinds.get(market_id, "other"),
            },
        )
