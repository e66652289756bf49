"""What the pipeline did, in plain counters, and where its sources record their outcomes.

`ServiceStats` is read by the metrics at scrape time and by the final log line;
`SourceOutcomes` is the one place where the sources record how each subscription refresh
and poll cycle went: it classifies the outcome once and updates both the counters and
`ServiceHealth`, so the metrics and the health endpoints never disagree. `log_stopped` writes
the service's last line once the publisher has closed and Kafka's acknowledgements are known.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import anyio
from anyio.streams.memory import MemoryObjectStreamStatistics

from polymarket_kafka.detection import DetectorStats
from polymarket_kafka.histogram import Histogram
from polymarket_kafka.ops.health import ServiceHealth
from polymarket_kafka.service.ports import PollOutcome

__all__ = ["ServiceSettings", "ServiceStats", "SourceOutcomes", "log_stopped"]

logger = logging.getLogger(__name__)


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
    #: Once the sources stop (a stop request, or `max_cycles` reached), how long detect and
    #: deliver may take to drain what is queued (`SHUTDOWN_GRACE_SECONDS`).
    drain_grace_seconds: float = 10.0


@dataclass
class ServiceStats:
    """Plain counters of what the pipeline did (`ops.metrics` exports them at scrape time)."""

    #: Poll cycles by outcome: ok, Polymarket unavailable (`PollResult.unavailable`), raised.
    poll_cycles: int = 0
    poll_unavailable: int = 0
    poll_failures: int = 0
    #: Poll ticks not run because a cycle overran the interval (`next_poll_tick`).
    poll_ticks_skipped: int = 0
    snapshots: int = 0
    #: Of `snapshots`, those streamed from the market channel (the rest were polled).
    snapshots_streamed: int = 0
    #: Several instances: snapshots of markets whose partition moved away while they were
    #: on their way to `detect` (dropped: the new owner observes them).
    snapshots_not_owned: int = 0
    #: Several instances: events `deliver` did not publish because their partition changed
    #: owner after they were detected (the owner detects them again: not lost).
    events_handed_over: int = 0
    #: ... and those the publisher left uncommitted when their partition moved (known once
    #: it has closed, `record_delivery`).
    events_handed_over_by_publisher: int = 0
    markets_skipped: int = 0
    events_detected: int = 0
    #: Handed to the publisher (accepted by the producer's queue): not yet "delivered".
    events_published: int = 0
    #: Left in the pipeline, never handed to the publisher (the drain ran out of time, a
    #: forced stop, or a stage failed). An event whose `publish` was cancelled is the
    #: publisher's to count (`ports.Publisher`); `events_not_delivered` counts every loss.
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
    #: Reloaded rule sets the detector could not adopt (the rules in force stayed).
    rule_adoption_failures: int = 0
    #: Durable state (`KAFKA_STATE_TOPIC`): markets restored at start, records written to the
    #: state topic (states and tombstones), and records that could not be written (retried at
    #: the next checkpoint).
    state_markets_restored: int = 0
    state_records_written: int = 0
    state_write_failures: int = 0
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

    def record_delivery(self, acknowledged: int, unacknowledged: int, handed_over: int = 0) -> None:
        """Record what Kafka acknowledged once the publisher has closed (see the fields);
        `handed_over`: what the publisher left to other instances (several instances)."""
        self.events_acknowledged = acknowledged
        self.events_unacknowledged = unacknowledged
        self.events_handed_over_by_publisher = handed_over

    @property
    def events_not_delivered(self) -> int:
        """Detected events Kafka did not acknowledge, however they were lost: left in the
        pipeline, inside a `publish` that was cancelled, given up, dead-lettered, or pending
        when the publisher closed. Counted as the difference, so that no way of losing an
        event can be missed. Final once `record_delivery` was called."""
        handed_over = self.events_handed_over + self.events_handed_over_by_publisher
        return max(0, self.events_detected - self.events_acknowledged - handed_over)

    @property
    def everything_delivered(self) -> bool:
        """True when every detected event was acknowledged by Kafka (exit status 0)."""
        return self.events_not_delivered == 0


class SourceOutcomes:
    """Records each subscription refresh and poll cycle once, into `stats` and `health`.

    Called by the service's source tasks on the event loop thread; `time` is the monotonic
    clock poll cycles are stamped with for readiness.
    """

    def __init__(
        self,
        stats: ServiceStats,
        health: ServiceHealth,
        *,
        time: Callable[[], float] = anyio.current_time,
    ) -> None:
        self._stats, self._health, self._time = stats, health, time

    def refreshed(self, active_markets: int, invalid_documents: int = 0) -> None:
        """A refresh read the active subscriptions: `active_markets` distinct markets, and
        `invalid_documents` documents it had to skip."""
        self._stats.subscription_refreshes += 1
        self._stats.markets_tracked = active_markets
        self._stats.invalid_subscription_documents = invalid_documents
        self._health.record_subscriptions(active_markets)

    def refresh_failed(self, error: Exception) -> int:
        """A refresh failed; returns how many failed in a row (for the retry backoff)."""
        self._stats.subscription_failures += 1
        return self._health.record_refresh_failure(str(error))

    def polled(self, result: PollOutcome, now: datetime, seconds: float) -> bool:
        """A cycle stamped `now` returned after `seconds`; False if Polymarket was unavailable
        (`result.unavailable`): a failed cycle for readiness, `unavailable` for the metrics."""
        self._stats.poll_duration.observe(seconds)
        self._stats.markets_skipped += len(result.skipped)
        if result.unavailable is not None:
            self._stats.poll_unavailable += 1
            self._health.record_poll_failure(f"Polymarket unavailable: {result.unavailable}")
            return False
        self._stats.poll_cycles += 1
        self._stats.last_poll_at = now
        self._health.record_poll(self._time())
        return True

    def ticks_skipped(self, count: int) -> None:
        """`count` poll ticks were skipped after a cycle overran the interval."""
        self._stats.poll_ticks_skipped += count

    def poll_failed(self, error: Exception, seconds: float) -> None:
        """A cycle raised `error` after `seconds`."""
        self._stats.poll_duration.observe(seconds)
        self._stats.poll_failures += 1
        self._health.record_poll_failure(f"{type(error).__name__}: {error}")


def log_stopped(
    stats: ServiceStats, *, acknowledged: int, unacknowledged: int, handed_over: int = 0
) -> None:
    """Record the final delivery outcome in `stats` and log the service's last line.

    Called by the publisher's owner once it has closed. "Acknowledged" means Kafka confirmed
    the write (`acks=all`); anything else detected is counted as not delivered, and the line
    is then an ERROR (the CLI exits 1).
    """
    stats.record_delivery(acknowledged, unacknowledged, handed_over)
    missing = stats.events_not_delivered
    summary = (
        f"service stopped after {stats.poll_cycles} poll cycles: {stats.events_detected} "
        f"events detected, {stats.events_acknowledged} acknowledged by Kafka"
    )
    moved = stats.events_handed_over + handed_over
    if moved:
        summary += f", {moved} handed over to the instances that took their partitions"
    if missing:
        logger.error("%s, %d NOT delivered", summary, missing)
    else:
        logger.info("%s", summary)
