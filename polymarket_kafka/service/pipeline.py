"""The service: one task group running refresh → poll → detect → deliver.

```
 store ──refresh──► LatestSubscriptions ──► poll ──(snapshots)──► detect ──(events)──► deliver
                                   signals: SIGINT/SIGTERM stop the sources, SIGHUP reloads rules
```

Ownership and shutdown follow trio's structured-concurrency rules. `run_service` opens one
task group; the stages talk only through bounded memory object streams, so a slow broker
applies backpressure up to the poller instead of growing memory. Shutdown flows downstream:
a stop request cancels the *sources* (subscription refresh and polling) only; the poller
closes its send side, `detect` drains what is queued and closes its own, `deliver` drains the
rest, and the caller's publisher then flushes under a shielded, bounded scope. Nothing that
was detected is dropped by a shutdown.

Every error has a home: a malformed market is skipped by the poller; an exception while
detecting one snapshot is logged with its market id and counted; a failing poll cycle or
subscription refresh is logged, counted and retried on the next tick (the last known
subscriptions stay in force). A cycle in which Polymarket did not answer
(`PollResult.unavailable`) is counted apart and logged once, not once per market. Only the
publisher may stop the service: if it cannot accept events any more, there is nothing safe
left to do.
"""

from __future__ import annotations

import logging
import math
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import (
    MemoryObjectReceiveStream,
    MemoryObjectSendStream,
    MemoryObjectStreamStatistics,
)

from polymarket_kafka.detection import Detector, DetectorStats, RuleSource
from polymarket_kafka.events import build_event
from polymarket_kafka.histogram import Histogram
from polymarket_kafka.models import MarketSnapshot, PolymarketEvent, PolymarketSubscription
from polymarket_kafka.ops.health import ServiceHealth
from polymarket_kafka.service.ports import (
    InvalidDocumentLike,
    Poller,
    PollOutcome,
    Publisher,
    SourceOutcomes,
    SubscriptionSource,
    run_stage,
    task_name,
)
from polymarket_kafka.service.reloader import RulesHolder, run_reloader

__all__ = [
    "LatestSubscriptions",
    "Poller",
    "Publisher",
    "RulesHolder",
    "ServiceSettings",
    "ServiceStats",
    "Stopper",
    "SubscriptionSource",
    "next_poll_tick",
    "run_service",
]

logger = logging.getLogger(__name__)


#: A snapshot and the monotonic time (`anyio.current_time()`) it left the poller.
_Polled = tuple[MarketSnapshot, float]


@dataclass(frozen=True)
class ServiceSettings:
    """Timing and sizing of the pipeline."""

    poll_interval_seconds: float = 30.0
    subscription_refresh_seconds: float = 30.0
    snapshot_buffer: int = 1024
    event_buffer: int = 256
    #: Stop by itself after this many poll cycles (the demo and tests); None runs forever.
    max_cycles: int | None = None
    #: Install SIGINT/SIGTERM/SIGHUP handlers (only possible in the main thread).
    handle_signals: bool = True
    #: After a stop request, how long detect + deliver may take to drain what is queued.
    drain_grace_seconds: float = 10.0


@dataclass
class ServiceStats:
    """Plain counters of what the pipeline did (`metrics` exports them at scrape time)."""

    #: Poll cycles by outcome: ok, Polymarket unavailable (`PollResult.unavailable`), raised.
    poll_cycles: int = 0
    poll_unavailable: int = 0
    poll_failures: int = 0
    #: Poll ticks not run because a cycle overran the interval (`next_poll_tick`).
    poll_ticks_skipped: int = 0
    snapshots: int = 0
    markets_skipped: int = 0
    events_detected: int = 0
    #: Handed to the publisher (accepted by the producer's queue): not yet "delivered".
    events_published: int = 0
    #: Left in the pipeline, never handed to the publisher (the drain ran out of time).
    events_undelivered: int = 0
    #: Acknowledged by Kafka, and handed over but NOT acknowledged (given up, or still pending
    #: when the producer closed). Known only once the publisher has closed: its owner records
    #: them with `record_delivery` (`run_service` returns before the final flush).
    events_acknowledged: int = 0
    events_unacknowledged: int = 0
    detection_errors: int = 0
    subscription_refreshes: int = 0
    subscription_failures: int = 0
    #: Subscription documents skipped by the latest refresh because they do not validate.
    invalid_subscription_documents: int = 0
    reload_requests: int = 0
    rule_resets: int = 0
    last_poll_at: datetime | None = None
    #: What the detector dropped: glitches, stale and thin-book snapshots, unwatched markets.
    detector: DetectorStats = field(default_factory=DetectorStats)
    #: How long each poll cycle took (`poll_once`, successful or not), in seconds.
    poll_duration: Histogram = field(default_factory=Histogram)
    #: Distinct markets in the latest active subscriptions.
    markets_tracked: int = 0
    #: Events detected by `(rule, severity or "none", direction)`.
    events_by_label: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    #: Live statistics of the pipeline's channels by name (`snapshots`, `events`), registered
    #: by `run_service`: the metrics layer calls them at scrape time.
    channels: dict[str, Callable[[], MemoryObjectStreamStatistics]] = field(default_factory=dict)

    def record_delivery(self, acknowledged: int, unacknowledged: int) -> None:
        """Record what Kafka acknowledged once the publisher has closed (see the fields)."""
        self.events_acknowledged = acknowledged
        self.events_unacknowledged = unacknowledged

    @property
    def everything_delivered(self) -> bool:
        """True when every detected event was acknowledged by Kafka (exit status 0)."""
        return self.events_undelivered == 0 and self.events_unacknowledged == 0


class LatestSubscriptions:
    """A latest-value cell: the refresher writes the active set, the poller reads it."""

    def __init__(self) -> None:
        self._value: tuple[PolymarketSubscription, ...] = ()
        self.loaded = anyio.Event()
        self.version = 0

    @property
    def value(self) -> tuple[PolymarketSubscription, ...]:
        return self._value

    def set(self, value: tuple[PolymarketSubscription, ...]) -> None:
        self._value = value
        self.version += 1
        self.loaded.set()

    def market_ids(self) -> frozenset[str]:
        return frozenset(s.market_id for s in self._value)


class Stopper:
    """Requests a stop. The first request cancels the sources and lets the pipeline drain
    (bounded by `ServiceSettings.drain_grace_seconds`); a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._sources = anyio.CancelScope()
        self._service: anyio.CancelScope | None = None
        #: Called on the first request (`run_service` marks its health as stopping).
        self._on_stop: Callable[[], None] = lambda: None

    def stop(self) -> None:
        if self.requested:
            logger.warning("second stop request: stopping now without draining")
            if self._service is not None:
                self._service.cancel()
            return
        self.requested = True
        self._on_stop()
        self._sources.cancel()


async def run_service(
    *,
    store: SubscriptionSource,
    poller: Poller,
    publisher: Publisher,
    settings: ServiceSettings,
    clock: Callable[[], datetime],
    rules: RulesHolder | None = None,
    stats: ServiceStats | None = None,
    stopper: Stopper | None = None,
    on_published: Callable[[PolymarketEvent], Awaitable[None]] | None = None,
    health: ServiceHealth | None = None,
    background: Sequence[Callable[[], Awaitable[None]]] = (),
    task_status: TaskStatus[Stopper] = anyio.TASK_STATUS_IGNORED,
) -> ServiceStats:
    """Run the pipeline until stopped (signal, `Stopper.stop()`, or `max_cycles`), drained.

    Returns the counters. `clock` gives the wall-clock time stamped on snapshots (tests and
    the demo inject a fake one). The publisher is owned by the caller, which flushes it after
    this returns; every event this function accepted has been handed to `publish`.

    `health` (if given) is kept up to date: every task is a stage, subscription refreshes
    and poll cycles are recorded (on `anyio.current_time()`), a stop marks it stopping.
    `background` tasks (e.g. the health/metrics server) run in the service's task group as
    stages named after the callable, from start-up until the pipeline has drained; an
    exception in one stops the service like any stage's.
    """
    rules = rules or RulesHolder()
    stats = stats or ServiceStats()
    stopper = stopper or Stopper()
    health = health if health is not None else ServiceHealth()
    health.poll_interval_seconds = settings.poll_interval_seconds
    stopper._on_stop = health.mark_stopping
    outcomes = SourceOutcomes(stats, health)
    subscriptions = LatestSubscriptions()
    snap_send, snap_recv = anyio.create_memory_object_stream[_Polled](settings.snapshot_buffer)
    event_send, event_recv = anyio.create_memory_object_stream[PolymarketEvent](
        settings.event_buffer
    )
    stats.channels.update(snapshots=snap_recv.statistics, events=event_recv.statistics)

    async with anyio.create_task_group() as tg:
        stopper._service = tg.cancel_scope
        for task in background:
            tg.start_soon(run_stage, health, task_name(task), task)
        if settings.handle_signals:
            await tg.start(run_stage, health, "signals", _handle_signals, stopper, rules, stats)
        tg.start_soon(run_stage, health, "reloader", run_reloader, rules)
        tg.start_soon(
            run_stage, health, "detect", _detect, snap_recv, event_send, rules, subscriptions, stats
        )
        deliver = (_deliver, event_recv, publisher, stats, on_published, tg.cancel_scope)
        tg.start_soon(run_stage, health, "deliver", *deliver)
        task_status.started(stopper)
        with stopper._sources:
            async with anyio.create_task_group() as sources:
                refresh = (_refresh_subscriptions, store, subscriptions, settings, outcomes)
                sources.start_soon(run_stage, health, "refresh_subscriptions", *refresh)
                with health.stage("poll_markets"):
                    polling = (poller, subscriptions, settings, clock, outcomes)
                    await _poll_markets(snap_send, *polling)
                health.mark_stopping()  # max_cycles: the sources are done, the rest drains
                sources.cancel_scope.cancel()
        health.mark_stopping()
        if stopper.requested:
            logger.info("stop requested: sources stopped, draining the pipeline")
            tg.cancel_scope.deadline = anyio.current_time() + settings.drain_grace_seconds
    logger.info(
        "pipeline drained after %d poll cycles: %d events detected, %d handed to Kafka",
        stats.poll_cycles,
        stats.events_detected,
        stats.events_published,
    )
    return stats


async def _handle_signals(
    stopper: Stopper,
    rules: RulesHolder,
    stats: ServiceStats,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                stats.reload_requests += 1
                logger.info("SIGHUP received: reloading rules")
                rules.request_reload()
            else:
                logger.info("%s received: stopping gracefully", signal.Signals(signum).name)
                stopper.stop()


async def _refresh_subscriptions(
    store: SubscriptionSource,
    subscriptions: LatestSubscriptions,
    settings: ServiceSettings,
    outcomes: SourceOutcomes,
) -> None:
    warned: frozenset[tuple[str, str]] = frozenset()
    while True:
        try:
            active = await store.active()
        except Exception as exc:  # noqa: BLE001 - any store failure keeps the last set
            failures = outcomes.refresh_failed(exc)
            # Keep polling the last known set; retry sooner than a full interval at first.
            delay = min(settings.subscription_refresh_seconds, 2.0 ** min(failures, 6))
            logger.warning(
                "subscription refresh failed (%s); keeping %d known markets, retry in %.0fs",
                exc,
                len(subscriptions.value),
                delay,
            )
            await anyio.sleep(delay)
            continue
        if active.subscriptions != subscriptions.value or not subscriptions.loaded.is_set():
            logger.info("active subscriptions: %d markets", len(active.subscriptions))
        warned = _warn_invalid_documents(active.invalid, warned)
        subscriptions.set(active.subscriptions)
        outcomes.refreshed(len(subscriptions.market_ids()), len(active.invalid))
        await anyio.sleep(settings.subscription_refresh_seconds)


def _warn_invalid_documents(
    invalid: Sequence[InvalidDocumentLike], warned: frozenset[tuple[str, str]]
) -> frozenset[tuple[str, str]]:
    """Warn once about each invalid document (and again if its error changes); return what
    is now known. Only the documents of the latest refresh are remembered: the set is bounded
    by the collection, and a document that was fixed and breaks again is reported again."""
    current = frozenset((document.document_id, document.error) for document in invalid)
    for document in invalid:
        if (document.document_id, document.error) not in warned:
            logger.warning(
                "invalid subscription document %s skipped: %s",
                document.describe(),
                document.error,
                extra={} if document.market_id is None else {"market_id": document.market_id},
            )
    return current


async def _poll_markets(
    snapshots: MemoryObjectSendStream[_Polled],
    poller: Poller,
    subscriptions: LatestSubscriptions,
    settings: ServiceSettings,
    clock: Callable[[], datetime],
    outcomes: SourceOutcomes,
) -> None:
    async with snapshots:
        await subscriptions.loaded.wait()
        next_tick = anyio.current_time()
        cycles = 0
        while settings.max_cycles is None or cycles < settings.max_cycles:
            cycles += 1
            now = clock()
            started = anyio.current_time()
            try:
                result = await poller.poll_once(subscriptions.value, now)
            except Exception as exc:
                outcomes.poll_failed(exc, anyio.current_time() - started)
                logger.exception(
                    "poll cycle %d failed; retrying on the next tick",
                    cycles,
                    extra={"cycle": cycles},
                )
            else:
                if outcomes.polled(result, now, anyio.current_time() - started):
                    _log_skipped(cycles, result)
                else:
                    logger.warning(
                        "cycle %d: Polymarket unavailable, %d market(s) not priced: %s",
                        cycles,
                        len(result.skipped),
                        result.unavailable,
                        extra={"cycle": cycles},
                    )
                for snapshot in result.snapshots:
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


async def _detect(
    snapshots: MemoryObjectReceiveStream[_Polled],
    events: MemoryObjectSendStream[PolymarketEvent],
    rules: RulesHolder,
    subscriptions: LatestSubscriptions,
    stats: ServiceStats,
) -> None:
    detector = Detector(stats=stats.detector)
    seen_version = -1
    in_force = rules.current
    async with snapshots, events:
        async for snapshot, polled_at in snapshots:
            if subscriptions.version != seen_version:
                seen_version = subscriptions.version
                active = subscriptions.market_ids()
                for market_id in detector.tracked() - active:
                    detector.forget(market_id)
            if rules.current is not in_force:
                # A reload swapped the rules between two snapshots: adopt them here, so every
                # snapshot is judged by exactly one rule set.
                in_force = rules.current
                _adopt(detector, in_force, stats)
            stats.snapshots += 1
            try:
                # The snapshot's age is how long it waited in the pipeline, on the monotonic
                # clock (the injected wall clock may be a scripted one).
                waited = timedelta(seconds=anyio.current_time() - polled_at)
                changes = detector.observe(snapshot, in_force, snapshot.taken_at + waited)
                built = [build_event(change) for change in changes]
            except Exception:
                stats.detection_errors += 1
                logger.exception(
                    "detection failed for market %s",
                    snapshot.market_id,
                    extra={"market_id": snapshot.market_id},
                )
                continue
            for event in built:
                stats.events_detected += 1
                label = (event.rule, event.severity or "none", event.direction.value)
                stats.events_by_label[label] += 1
                logger.info(
                    "conviction change %s %s %.4f -> %.4f (%s, %s) event_id=%s",
                    event.market_id,
                    event.direction.value,
                    event.baseline_yes_price,
                    event.yes_price,
                    event.rule,
                    event.severity,
                    event.event_id,
                    extra={
                        "market_id": event.market_id,
                        "event_id": event.event_id,
                        "rule": event.rule,
                    },
                )
                await events.send(event)


def _adopt(detector: Detector, rules: RuleSource, stats: ServiceStats) -> None:
    resets = detector.apply_rules(rules)
    stats.rule_resets += len(resets)
    for reset in resets:
        logger.info(
            "rules %s: detection state of market %s reset (parameters %s -> %s)",
            rules.version,
            reset.market_id,
            reset.old_state_key,
            reset.new_state_key or "not watched",
            extra={"market_id": reset.market_id},
        )
    logger.info(
        "rules %s in force: %d markets reset, %d kept",
        rules.version,
        len(resets),
        len(detector.tracked()),
    )


async def _deliver(
    events: MemoryObjectReceiveStream[PolymarketEvent],
    publisher: Publisher,
    stats: ServiceStats,
    on_published: Callable[[PolymarketEvent], Awaitable[None]] | None,
    service_scope: anyio.CancelScope,
) -> None:
    async with events:
        try:
            async for event in events:
                await publisher.publish(event)
                stats.events_published += 1
                if on_published is not None:
                    await on_published(event)
        except anyio.get_cancelled_exc_class():
            # The drain ran out of time (or a forced stop): name every event left behind.
            _report_undelivered(events, stats)
            raise
    # Everything upstream has drained: only the signal handler can still be running.
    service_scope.cancel()


def _report_undelivered(
    events: MemoryObjectReceiveStream[PolymarketEvent], stats: ServiceStats
) -> None:
    while True:
        try:
            event = events.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return
        stats.events_undelivered += 1
        logger.error(
            "event NOT delivered (stopped before publishing): market %s event_id=%s",
            event.market_id,
            event.event_id,
            extra={"market_id": event.market_id, "event_id": event.event_id, "rule": event.rule},
        )
