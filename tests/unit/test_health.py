"""ServiceHealth: liveness and readiness transitions, driven with plain numbers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from polymarket_kafka.ops.health import ComponentStatus, HealthReport, ServiceHealth, StageState

#: Stages entered by `running`, kept open (a collected generator would end its stage).
_OPEN = ExitStack()


@pytest.fixture(autouse=True)
def _close_open_stages() -> Iterator[None]:
    yield
    _OPEN.close()


def running(*names: str) -> ServiceHealth:
    """A health object (10 s poll interval) whose `names` stages are running."""
    health = ServiceHealth(poll_interval_seconds=10.0)
    for name in names:
        _OPEN.enter_context(health.stage(name))
    return health


def ready_service() -> ServiceHealth:
    health = running("poll_markets", "detect")
    health.add_check("kafka", lambda: ComponentStatus(True, "1/1 brokers up"))
    health.record_subscriptions(3)
    health.record_poll(100.0)
    return health


def test_report_json_shape() -> None:
    report = HealthReport.of(
        {
            "a": ComponentStatus(True, "fine"),
            "b": ComponentStatus(False, "broken", {"count": 2}),
        }
    )
    assert not report.ok
    assert report.to_json() == {
        "status": "fail",
        "components": {
            "a": {"status": "ok", "detail": "fine"},
            "b": {"status": "fail", "detail": "broken", "count": 2},
        },
    }
    assert HealthReport.of({"a": ComponentStatus(True, "fine")}).to_json()["status"] == "ok"


def test_fully_ready_service() -> None:
    report = ready_service().ready(105.0)
    assert report.ok, report.to_json()
    assert list(report.components) == ["kafka", "subscriptions", "polling", "stages"]
    body = report.to_json()["components"]
    assert body["kafka"] == {"status": "ok", "detail": "1/1 brokers up"}
    assert body["subscriptions"]["detail"] == "3 active markets"
    assert body["subscriptions"]["active_markets"] == 3
    assert body["polling"]["detail"] == "last successful poll cycle 5.0s ago (limit 20s)"
    assert body["stages"]["stages"] == {"poll_markets": "running", "detect": "running"}


def test_not_ready_before_anything_happened() -> None:
    report = running("poll_markets").ready(0.0)
    assert not report.ok
    body = report.to_json()["components"]
    assert body["subscriptions"]["status"] == "fail"
    assert body["subscriptions"]["detail"] == "subscriptions not loaded"
    assert body["polling"]["detail"] == "no successful poll cycle yet"
    assert body["stages"]["status"] == "ok"
    assert running("poll_markets").live(0.0).ok  # but alive


def test_refresh_failures_before_and_after_the_first_load() -> None:
    health = ready_service()
    fresh = ServiceHealth()
    fresh.record_refresh_failure("list active subscriptions failed: ServerSelectionTimeoutError")
    fresh.record_refresh_failure("list active subscriptions failed: ServerSelectionTimeoutError")
    subscriptions = fresh.ready(0.0).components["subscriptions"]
    assert not subscriptions.ok
    assert subscriptions.detail == (
        "subscriptions not loaded; latest refresh failed (2 in a row): "
        "list active subscriptions failed: ServerSelectionTimeoutError"
    )
    assert subscriptions.extra["consecutive_failures"] == 2

    # Once loaded, a failing refresh keeps the last set in force: still ready, but visibly.
    health.record_refresh_failure("connection refused")
    subscriptions = health.ready(105.0).components["subscriptions"]
    assert subscriptions.ok
    assert subscriptions.detail == (
        "3 active markets; latest refresh failed (1 in a row): connection refused"
    )
    assert subscriptions.extra["last_error"] == "connection refused"
    health.record_subscriptions(1)
    subscriptions = health.ready(105.0).components["subscriptions"]
    assert (subscriptions.detail, subscriptions.extra["consecutive_failures"]) == (
        "1 active market",
        0,
    )
    assert "last_error" not in subscriptions.extra


@pytest.mark.parametrize(
    ("now", "ok"),
    [(100.0, True), (119.9, True), (120.0, True), (120.1, False), (500.0, False)],
)
def test_polling_is_fresh_within_twice_the_interval(now: float, ok: bool) -> None:
    health = ready_service()  # polled at 100 with a 10 s interval
    assert health.ready(now).components["polling"].ok is ok
    assert health.ready(now).ok is ok


def test_poll_failures_are_shown_and_a_success_clears_them() -> None:
    health = ready_service()
    health.record_poll_failure("HTTPStatusError: 503")
    polling = health.ready(125.0).components["polling"]
    assert not polling.ok
    assert polling.detail == (
        "last successful poll cycle 25.0s ago (limit 20s); "
        "latest cycle failed: HTTPStatusError: 503"
    )
    health.record_poll(130.0)
    polling = health.ready(131.0).components["polling"]
    assert polling.ok
    assert "failed" not in polling.detail


def test_poll_interval_set_later_changes_the_limit() -> None:
    health = ready_service()
    health.poll_interval_seconds = 1.0
    assert not health.ready(105.0).components["polling"].ok


def test_stage_lifecycle_crash_makes_it_not_live() -> None:
    health = ServiceHealth()
    with health.stage("detect"):
        assert health.stages == {"detect": StageState.RUNNING}
        with pytest.raises(RuntimeError), health.stage("deliver"):
            raise RuntimeError("boom")
    assert health.stages == {"detect": StageState.STOPPED, "deliver": StageState.CRASHED}
    live = health.live(0.0)
    assert not live.ok
    assert live.components["stages"].detail == "deliver crashed: RuntimeError: boom"
    assert live.to_json()["components"]["stages"]["stages"] == {
        "detect": "stopped",
        "deliver": "crashed: RuntimeError: boom",
    }
    # A crash stays a failure even while stopping.
    health.mark_stopping()
    assert not health.live(0.0).ok


def test_a_stage_that_ends_while_not_stopping_is_not_live() -> None:
    health = running("poll_markets")
    with health.stage("reloader"):
        pass
    live = health.live(0.0)
    assert not live.ok
    assert live.components["stages"].detail == "stopped unexpectedly: reloader"


def test_cancellation_marks_a_stage_stopped_and_stopping_keeps_it_live() -> None:
    health = running("deliver")

    class Cancelled(BaseException):
        pass

    with pytest.raises(Cancelled), health.stage("refresh_subscriptions"):
        raise Cancelled
    assert health.stages["refresh_subscriptions"] is StageState.STOPPED
    health.mark_stopping()
    assert health.stopping
    live, ready = health.live(0.0), ready_service_stopping()
    assert live.ok
    assert live.components["stages"].detail == "stopping: draining the pipeline"
    assert not ready.ok
    assert ready.components["stages"].detail == "stopping: draining the pipeline"
    assert [n for n, c in ready.components.items() if not c.ok] == ["stages"]


def ready_service_stopping() -> HealthReport:
    health = ready_service()
    health.mark_stopping()
    return health.ready(101.0)


def test_a_failing_check_fails_its_component_and_extra_is_kept() -> None:
    health = ready_service()
    health.add_check("kafka", lambda: ComponentStatus(False, "all brokers down", {"up": 0}))
    kafka = health.ready(101.0).to_json()["components"]["kafka"]
    assert kafka == {"status": "fail", "detail": "all brokers down", "up": 0}

    def broken() -> ComponentStatus:
        raise ValueError("no statistics")

    health.add_check("kafka", broken)
    kafka_status = health.ready(101.0).components["kafka"]
    assert not kafka_status.ok
    assert kafka_status.detail == "check failed: ValueError: no statistics"


def test_secrets_are_scrubbed_from_every_detail() -> None:
    health = ServiceHealth(secrets=("hunter2", "", "s3cr%40t", "s3cr@t"))
    health.add_check("kafka", lambda: ComponentStatus(False, "SASL auth failed for hunter2"))
    health.record_refresh_failure("auth failed for mongodb://u:s3cr@t@db/ and s3cr%40t")
    health.record_poll_failure("token hunter2 rejected")
    with pytest.raises(RuntimeError), health.stage("detect"):
        raise RuntimeError("password hunter2")
    text = repr(health.ready(0.0).to_json()) + repr(health.live(0.0).to_json())
    assert "hunter2" not in text
    assert "s3cr" not in text
    assert "***" in text


def test_url_user_info_is_scrubbed_like_in_the_logs_even_without_configured_secrets() -> None:
    health = ServiceHealth()  # nothing configured: the URL pattern alone must catch these
    health.record_refresh_failure("cannot reach mongodb://alice:pa55@db:27017/")
    health.record_poll_failure("proxy http://bob:tok3n@proxy:3128 refused")
    with pytest.raises(RuntimeError), health.stage("detect"):
        raise RuntimeError("gave up on https://carol@hooks.example/")
    body = health.ready(0.0).to_json()["components"]
    assert body["subscriptions"]["last_error"] == "cannot reach mongodb://***:***@db:27017/"
    assert body["polling"]["last_error"] == "proxy http://***:***@proxy:3128 refused"
    assert body["stages"]["stages"]["detect"] == (
        "crashed: RuntimeError: gave up on https://***@hooks.example/"
    )
    text = repr(body) + repr(health.live(0.0).to_json())
    for secret in ("alice", "pa55", "bob", "tok3n", "carol"):
        assert secret not in text


def test_extra_fields_of_a_check_are_scrubbed_too() -> None:
    health = ServiceHealth(secrets=("hunter2",))
    extra = {
        "uri": "mongodb://alice:pa55@db/",
        "nested": {"hunter2-key": ["password hunter2", ("http://bob:tok3n@proxy",)]},
        "count": 3,
        "ratio": 0.5,
        "missing": None,
    }
    health.add_check("kafka", lambda: ComponentStatus(True, "ok", extra))
    kafka = health.ready(0.0).to_json()["components"]["kafka"]
    assert kafka == {
        "status": "ok",
        "detail": "ok",
        "uri": "mongodb://***:***@db/",
        "nested": {"***-key": ["password ***", ["http://***:***@proxy"]]},
        "count": 3,
        "ratio": 0.5,
        "missing": None,
    }
