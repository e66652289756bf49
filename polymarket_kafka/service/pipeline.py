"""The service: helpers around a nested task group running refresh → poll → detect → deliver.

Why this file is over 400 lines: `detect` and `deliver` are the two stages whose drain and
hand-over rules must be read together, next to the task groups they run in; everything
around them is apart already (stages, durable, handover, polling, refresh, streaming).

```
 store ──refresh──► LatestSubscriptions ──► poll ──(snapshots)──► detect ──(events)──► deliver
 helpers: signals (SIGINT/SIGTERM stop the sources, SIGHUP reloads rules), reloader, ops server
```

Ownership and shutdown follow trio's structured-concurrency rules. The pipeline (sources,
detect, deliver) runs in its own task group nested in the service's; the helpers run in the
outer one, and once the pipeline has ended its owner cancels them. No stage cancels anything
above itself. The stages talk only through bounded memory object streams, so a slow broker
applies backpressure up to the poller instead of growing memory.

Shutdown flows downstream: a stop request cancels the *sources* (subscription refresh and
polling) only; the poller closes its send side, `detect` drains what is queued and closes its
own, `deliver` drains the rest, and the caller's publisher then flushes under a shielded,
bounded scope. However the sources end -- a stop request, `max_cycles` -- the rest gets at
most `drain_grace_seconds`; a second stop request ends it at once. An event is never lost
between two stages: whatever is left when the drain is cut short is logged and counted as
not delivered, by the stage holding it (`detect` sends shielded, so an event in a full
channel is either taken by `deliver` or still its own).

Every error has a home: a malformed market is skipped by the poller; an exception while
detecting one snapshot, or while adopting reloaded rules, is logged and counted (the rules
in force stay); a failing poll cycle or subscription refresh is logged, counted and retried
on the next tick (the last known subscriptions stay in force). A cycle in which Polymarket
did not answer (`PollResult.unavailable`) is counted apart and logged once, not once per
market. A stage or helper that raises anyway (the publisher that cannot accept events any
more, the ops server that cannot listen) stops the service at once, as an error cancels a
task group: what is queued is logged and counted as not delivered, and the error propagates.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from polymarket_kafka.detection import Detector
from polymarket_kafka.events import build_event
from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.ops.board import MarketBoard
from polymarket_kafka.ops.health import ServiceHealth
from polymarket_kafka.service.durable import DurableState, Records, StateKeeper, write_checkpoints
from polymarket_kafka.service.handover import Handover
from polymarket_kafka.service.ownership import Ownership
from polymarket_kafka.service.polling import Polled, poll_markets
from polymarket_kafka.service.ports import Poller, Publisher, SubscriptionStore
from polymarket_kafka.service.refresh import refresh_subscriptions
from polymarket_kafka.service.reloader import RulesHolder, run_reloader
from polymarket_kafka.service.stages import LatestSubscriptions, Stopper, run_stage, task_name
from polymarket_kafka.service.stats import ServiceSettings, ServiceStats, SourceOutcomes
from polymarket_kafka.service.streaming import StreamCoordinator

__all__ = ["DurableState", "run_service"]

logger = logging.getLogger(__name__)


async def run_service(
    *,
    store: SubscriptionStore,
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
    durable: DurableState | None = None,
    stream: StreamCoordinator | None = None,
    board: MarketBoard | None = None,
    ownership: Ownership | None = None,
    subscriptions: LatestSubscriptions | None = None,
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

    `durable` (optional): the detector starts from the restored states (rules that changed
    since are applied as by a reload), and the state of markets that changed is written every
    `checkpoint_seconds` and once more when `detect` has drained: staged for the publisher's
    transactions (exactly once, with each event's state handed to `publish`), or by a
    `checkpoint` stage (at least once).

    `stream` (optional): the market channel runs as a source beside polling (stage
    `stream`), sending its coalesced snapshots into the same channel, and the poll stage
    polls only what the stream does not serve (`service.streaming`).

    `board` (optional): the dashboard's view (`ops.board.MarketBoard`), fed with every
    snapshot judged, every event handed to Kafka and every market no longer watched.

    `ownership` (several instances): only the markets it owns are polled, streamed, judged
    and published (`service.handover`); `subscriptions` is then built with `ownership.owns`.
    """
    rules = rules or RulesHolder()
    stats = stats or ServiceStats()
    stopper = stopper or Stopper()
    health = health if health is not None else ServiceHealth()
    health.poll_interval_seconds = settings.poll_interval_seconds
    if stream is not None:
        # REST cycles are as rare as one per reconciliation when the stream serves everything.
        health.poll_interval_seconds = max(settings.poll_interval_seconds, stream.reconcile_seconds)
    stopper.on_stop(health.mark_stopping)
    outcomes = SourceOutcomes(stats, health)
    if subscriptions is None:
        subscriptions = LatestSubscriptions(None if ownership is None else ownership.owns)
    snap_send, snap_recv = anyio.create_memory_object_stream[Polled](settings.snapshot_buffer)
    event_send, event_recv = anyio.create_memory_object_stream[PolymarketEvent](
        settings.event_buffer
    )
    stats.channels.update(snapshots=snap_recv.statistics, events=event_recv.statistics)
    state_send, state_recv = anyio.create_memory_object_stream[Records](1)
    keeper = StateKeeper(durable, state_send, anyio.current_time())
    handover = Handover(ownership, subscriptions, stats)

    async with anyio.create_task_group() as helpers:
        for task in background:
            helpers.start_soon(run_stage, health, task_name(task), task)
        if settings.handle_signals:
            installed = anyio.Event()
            signals = (_handle_signals, stopper, rules, stats, installed)
            helpers.start_soon(run_stage, health, "signals", *signals)
            await installed.wait()  # a signal sent from now on is handled
        helpers.start_soon(run_stage, health, "reloader", run_reloader, rules)
        task_status.started(stopper)
        with stopper.pipeline:
            async with anyio.create_task_group() as pipeline:
                detect = (
                    _detect,
                    snap_recv,
                    event_send,
                    rules,
                    subscriptions,
                    stats,
                    keeper,
                    board,
                    handover,
                )
                pipeline.start_soon(run_stage, health, "detect", *detect)
                deliver = (
                    _deliver,
                    event_recv,
                    publisher,
                    stats,
                    on_published,
                    keeper,
                    board,
                    handover,
                )
                pipeline.start_soon(run_stage, health, "deliver", *deliver)
                if durable is not None and durable.sink is not None:
                    checkpoint = (write_checkpoints, state_recv, durable.sink, keeper.book, stats)
                    pipeline.start_soon(run_stage, health, "checkpoint", *checkpoint)
                else:
                    state_recv.close()
                with stopper.sources:
                    refresh = (refresh_subscriptions, store, subscriptions, settings, outcomes)
                    polling = (snap_send, poller, subscriptions, settings, clock, outcomes, stream)
                    await _run_sources(health, refresh, polling)
                health.mark_stopping()
                if stopper.requested:
                    logger.info("stop requested: sources stopped, draining the pipeline")
                # However the sources ended, what is queued gets a bounded time to drain.
                pipeline.cancel_scope.deadline = anyio.current_time() + settings.drain_grace_seconds
            if pipeline.cancel_scope.cancelled_caught:
                logger.warning(
                    "the pipeline did not drain within %gs: what was left in it is NOT delivered",
                    settings.drain_grace_seconds,
                )
        # The pipeline has drained: the helpers have nothing left to serve.
        helpers.cancel_scope.cancel()
    logger.info(
        "pipeline drained after %d poll cycles: %d events detected, %d handed to Kafka",
        stats.poll_cycles,
        stats.events_detected,
        stats.events_published,
    )
    return stats


_Refresh = tuple[
    Callable[
        [SubscriptionStore, LatestSubscriptions, ServiceSettings, SourceOutcomes],
        Awaitable[None],
    ],
    SubscriptionStore,
    LatestSubscriptions,
    ServiceSettings,
    SourceOutcomes,
]


async def _run_sources(
    health: ServiceHealth,
    refresh: _Refresh,
    polling: tuple[
        MemoryObjectSendStream[Polled],
        Poller,
        LatestSubscriptions,
        ServiceSettings,
        Callable[[], datetime],
        SourceOutcomes,
        StreamCoordinator | None,
    ],
) -> None:
    """The sources: subscription refresh, polling and the stream (if any), until polling
    ends (`max_cycles`) or the caller's scope is cancelled (a stop request)."""
    async with anyio.create_task_group() as sources:
        sources.start_soon(run_stage, health, "refresh_subscriptions", *refresh)
        coordinator = polling[-1]
        if coordinator is not None:
            stream = coordinator.stream.run
            sources.start_soon(run_stage, health, "stream", stream, polling[0].clone())
        with health.stage("poll_markets"):
            await poll_markets(*polling)
        sources.cancel_scope.cancel()


async def _handle_signals(
    stopper: Stopper,
    rules: RulesHolder,
    stats: ServiceStats,
    installed: anyio.Event,
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        installed.set()
        async for signum in signals:
            if signum == signal.SIGHUP:
                stats.reload_requests += 1
                logger.info("SIGHUP received: reloading rules")
                rules.request_reload()
            else:
                logger.info("%s received: stopping gracefully", signal.Signals(signum).name)
                stopper.stop()


async def _detect(
    snapshots: MemoryObjectReceiveStream[Polled],
    events: MemoryObjectSendStream[PolymarketEvent],
    rules: RulesHolder,
    subscriptions: LatestSubscriptions,
    stats: ServiceStats,
    keeper: StateKeeper | None = None,
    board: MarketBoard | None = None,
    handover: Handover | None = None,
) -> None:
    keeper = keeper or StateKeeper.off()
    handover = handover or Handover.off()
    detector = Detector(stats=stats.detector)
    seen_version = -1
    in_force = rules.current
    async with snapshots, events, keeper.checkpoints:
        # Before the first snapshot; meanwhile the snapshots wait in their bounded channel.
        await keeper.restore(detector, in_force, stats)
        async for snapshot, polled_at in snapshots:
            handover.sync(detector, keeper, in_force)  # before any market is forgotten
            if not handover.admits(snapshot.market_id, polled_at):
                continue  # polled before its partition moved
            if subscriptions.version != seen_version:
                seen_version = subscriptions.version
                active = subscriptions.market_ids()
                for market_id in detector.known() - active:
                    if not handover.protects(market_id):
                        keeper.forget(detector, market_id)
                if board is not None:
                    for market_id in board.market_ids() - active:
                        board.forget(market_id)
            if rules.current is not in_force:
                # A reload swapped the rules between two snapshots: adopt them here, so every
                # snapshot is judged by exactly one rule set. Rules that cannot be adopted are
                # handed back (`reject`): the holder names the rules in force again, so they
                # are not retried before the next reload.
                if keeper.adopt(detector, rules.current, stats):
                    in_force = rules.current
                else:
                    rules.reject(rules.current, in_force)
            stats.snapshots += 1
            stats.snapshots_streamed += snapshot.source == "ws"
            try:
                # The snapshot's age is how long it waited in the pipeline, on the monotonic
                # clock (the injected wall clock may be a scripted one).
                waited = timedelta(seconds=anyio.current_time() - polled_at)
                now = snapshot.taken_at + waited
                changes = keeper.observe(detector, snapshot, in_force, now)
                built = [build_event(change) for change in changes]
            except Exception:
                stats.detection_errors += 1
                logger.exception(
                    "detection failed for market %s",
                    snapshot.market_id,
                    extra={"market_id": snapshot.market_id},
                )
                continue
            if board is not None:
                board.observe(snapshot)
            for event in built:
                _record_detected(event, stats)
                keeper.hold(event.market_id)
                handover.stamp(event)
            if built:
                keeper.attach(detector, built[-1])
            for sent, event in enumerate(built):
                try:
                    # Shielded, so that an event is never lost between two stages: with the
                    # channel full, the send ends when `deliver` takes the event (a stopped
                    # `deliver` takes and reports everything queued) or when it is gone.
                    with anyio.CancelScope(shield=True):
                        await events.send(event)
                except anyio.BrokenResourceError:
                    # `deliver` has ended (stopped, or failed: its error is the one that
                    # stops the service): this snapshot's events not sent are left behind.
                    for event_left in built[sent:]:
                        _record_undelivered(event_left, stats)
                    return
            keeper.tick(detector)
        handover.sync(detector, keeper, in_force)  # never stage a lost partition's states
        await keeper.final(detector)  # drained: the last checkpoint, waited for


def _record_detected(event: PolymarketEvent, stats: ServiceStats) -> None:
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
        extra={"market_id": event.market_id, "event_id": event.event_id, "rule": event.rule},
    )


async def _deliver(
    events: MemoryObjectReceiveStream[PolymarketEvent],
    publisher: Publisher,
    stats: ServiceStats,
    on_published: Callable[[PolymarketEvent], Awaitable[None]] | None,
    keeper: StateKeeper | None = None,
    board: MarketBoard | None = None,
    handover: Handover | None = None,
) -> None:
    keeper = keeper or StateKeeper.off()
    handover = handover or Handover.off()
    async with events:
        try:
            async for event in events:
                if not handover.publishable(event, anyio.current_time()):
                    keeper.attached(event)  # its state goes with it
                    keeper.release(event.market_id)
                    continue
                # A publish cancelled before Kafka's client accepted the event is the
                # publisher's to report (`Publisher`): it counts it as not acknowledged.
                await publisher.publish(event, keeper.attached(event))
                keeper.release(event.market_id)
                stats.events_published += 1
                if board is not None:
                    board.published(event)
                if on_published is not None:
                    await on_published(event)
        except BaseException:
            # The drain ran out of time, a forced stop, or the publisher (or `on_published`)
            # failed: name every event left behind before closing the channel.
            while True:
                try:
                    _record_undelivered(events.receive_nowait(), stats)
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            raise


def _record_undelivered(event: PolymarketEvent, stats: ServiceStats) -> None:
    stats.events_undelivered += 1
    # Left behind: its market stays held, so its state (the new baseline) is never written
    # and a restart finds the move again.
    logger.error(
        "event NOT delivered (stopped before publishing): market %s event_id=%s",
        event.market_id,
        event.event_id,
        extra={"market_id": event.market_id, "event_id": event.event_id, "rule": event.rule},
    )
