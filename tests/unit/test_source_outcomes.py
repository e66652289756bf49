"""`SourceOutcomes`: one record per refresh and poll cycle, into the metrics and the health."""

from __future__ import annotations

from datetime import UTC, datetime

from polymarket_kafka.ops.health import ServiceHealth
from polymarket_kafka.polymarket.poller import PollResult
from polymarket_kafka.service.stats import ServiceStats, SourceOutcomes

T0 = datetime(2024, 11, 5, 23, 0, tzinfo=UTC)


def outcomes(now: float = 50.0) -> tuple[SourceOutcomes, ServiceStats, ServiceHealth]:
    stats, health = ServiceStats(), ServiceHealth(poll_interval_seconds=10.0)
    return SourceOutcomes(stats, health, time=lambda: now), stats, health


def test_refreshes_count_the_markets_once_and_failures_in_a_row() -> None:
    record, stats, health = outcomes()
    assert record.refresh_failed(ConnectionError("down")) == 1
    assert record.refresh_failed(ConnectionError("still down")) == 2
    record.refreshed(4)
    assert record.refresh_failed(ConnectionError("down again")) == 1  # a new run of failures

    assert (stats.subscription_refreshes, stats.subscription_failures) == (1, 3)
    assert stats.markets_tracked == 4
    subscriptions = health.ready(50.0).components["subscriptions"]
    assert subscriptions.ok
    assert subscriptions.extra["active_markets"] == 4
    assert subscriptions.detail == (
        "4 active markets; latest refresh failed (1 in a row): down again"
    )


def test_an_ok_cycle_moves_the_last_poll_in_both() -> None:
    record, stats, health = outcomes(now=50.0)
    assert record.polled(PollResult([], {"0xa": "closed market without a price"}), T0, 0.5)
    assert (stats.poll_cycles, stats.poll_unavailable, stats.poll_failures) == (1, 0, 0)
    assert (stats.last_poll_at, stats.markets_skipped, stats.poll_duration.count) == (T0, 1, 1)
    polling = health.ready(55.0).components["polling"]
    assert polling.ok
    assert polling.extra["age_seconds"] == 5.0


def test_an_unavailable_cycle_is_a_failure_for_health_and_counted_apart() -> None:
    record, stats, health = outcomes()
    result = PollResult([], {"0xa": "midpoints unavailable: 503"}, "midpoints unavailable: 503")
    assert not record.polled(result, T0, 1.5)
    record.poll_failed(RuntimeError("boom"), 0.25)

    assert (stats.poll_cycles, stats.poll_unavailable, stats.poll_failures) == (0, 1, 1)
    assert stats.last_poll_at is None
    assert (stats.markets_skipped, stats.poll_duration.count) == (1, 2)
    polling = health.ready(50.0).components["polling"]
    assert not polling.ok
    assert polling.detail == "no successful poll cycle yet; latest cycle failed: RuntimeError: boom"

    record.polled(result, T0, 1.0)
    assert health.ready(50.0).components["polling"].extra["last_error"] == (
        "Polymarket unavailable: midpoints unavailable: 503"
    )
