"""`ConnectivityTracker` and `RepeatLimiter`: plain data in, transitions out, times passed in.

The error texts below stand in for librdkafka's: the tracker only quotes them, so nothing here
depends on librdkafka's wording.
"""

from __future__ import annotations

import pytest

from polymarket_kafka.kafka.connectivity import (
    CameBack,
    ConnectivityTracker,
    RepeatLimiter,
    StillDown,
    WentDown,
)
from polymarket_kafka.redact import hide_server_credentials

CONFIRM = 10.0
REMINDER = 60.0
REFUSED = "broker:9092/bootstrap: connection refused"


def tracker(brokers: str = "broker:9092") -> ConnectivityTracker:
    return ConnectivityTracker(brokers, confirm_seconds=CONFIRM, reminder_seconds=REMINDER)


def connected(at: float = 0.0) -> ConnectivityTracker:
    t = tracker()
    assert t.statistics(1, 1, at) is None  # the first connection is not news
    assert t.state == "up"
    return t


def went_down(t: ConnectivityTracker, at: float) -> WentDown:
    """Break the connection at `at` and confirm the outage exactly at `at + CONFIRM`."""
    assert t.connection_error("_TRANSPORT", REFUSED, at)
    assert t.connection_error("_ALL_BROKERS_DOWN", "all down", at)
    assert t.tick(at, 0) is None
    down = t.tick(at + CONFIRM, 3)
    assert isinstance(down, WentDown)
    return down


# --- going down -----------------------------------------------------------------------------


def test_an_outage_is_one_transition_once_confirmed() -> None:
    t = connected()
    assert t.connection_error("_TRANSPORT", REFUSED, 100.0)
    assert t.connection_error("_ALL_BROKERS_DOWN", "1/1 brokers are down", 100.5)
    assert t.state == "suspect"
    assert t.tick(100.5, 3) is None
    assert t.tick(110.4, 3) is None  # not yet: a broker may still come back
    down = t.tick(110.5, 3)  # exactly CONFIRM after the first evidence
    assert down == WentDown(
        reason="all brokers down",
        brokers="broker:9092",
        last_error=REFUSED,
        down_seconds=10.0,
        pending=3,
        never_connected=False,
    )
    state: str = t.state
    assert state == "down" and t.outages == 1
    assert down.message() == (
        "Kafka unreachable for 10.0s: all brokers down (bootstrap servers broker:9092); "
        f"last error: {REFUSED}; 3 events pending, kept and re-sent once it is back "
        "(connection errors are logged at DEBUG until then)"
    )


def test_repeated_errors_make_one_outage_and_keep_its_start() -> None:
    t = connected()
    transitions = []
    for n in range(100):  # a reconnection attempt twice a second, as measured with Tansu
        now = 200.0 + n / 2
        t.connection_error("_TRANSPORT", f"attempt {n} refused", now)
        t.connection_error("_ALL_BROKERS_DOWN", "all down", now)
        transitions.append(t.tick(now, 1))
    found = [x for x in transitions if x is not None]
    assert len(found) == 1 and isinstance(found[0], WentDown)
    assert found[0].down_seconds == CONFIRM  # counted from the first evidence, not the last
    assert found[0].last_error == "attempt 20 refused"  # the latest when it was confirmed


def test_transport_errors_alone_do_not_start_an_outage() -> None:
    # One broker failing says why, not whether: another one may be up.
    t = connected()
    for n in range(50):
        assert t.connection_error("_TRANSPORT", REFUSED, float(n))
        assert t.connection_error("_RESOLVE", "no such host", float(n))
    assert t.tick(1000.0, 0) is None
    assert t.state == "up"


def test_statistics_without_a_broker_up_are_evidence_too() -> None:
    t = connected()
    assert t.statistics(0, 1, 50.0) is None
    assert t.state == "suspect"
    assert t.statistics(0, 1, 55.0) is None
    down = t.tick(60.0, 0)
    assert isinstance(down, WentDown)
    assert down.reason == "no broker up in the producer's statistics"
    assert down.down_seconds == CONFIRM and down.last_error is None
    assert "last error" not in down.message()


def test_librdkafkas_verdict_is_the_better_reason() -> None:
    t = connected()
    t.statistics(0, 1, 50.0)
    t.connection_error("_ALL_BROKERS_DOWN", "all down", 52.0)
    down = t.tick(60.0, 0)
    assert isinstance(down, WentDown)
    assert down.reason == "all brokers down" and down.down_seconds == CONFIRM


def test_statistics_listing_no_broker_say_nothing() -> None:
    t = connected()
    assert t.statistics(0, 0, 50.0) is None
    assert t.state == "up"


def test_unreachable_since_start_up() -> None:
    t = tracker()
    assert t.state == "unknown"
    t.connection_error("_RESOLVE", "cannot resolve broker", 0.0)
    t.connection_error("_ALL_BROKERS_DOWN", "0/1 brokers are down", 0.1)
    down = t.tick(CONFIRM + 0.1, 0)
    assert isinstance(down, WentDown) and down.never_connected
    assert down.message().startswith("Kafka unreachable since start-up for 10.0s:")
    assert "; no event pending (connection errors are logged at DEBUG" in down.message()


def test_the_broker_list_is_quoted_without_credentials() -> None:
    t = tracker("SASL_SSL://alice:s3cret@broker-1:9092,broker-2:9092")
    t.connection_error("_ALL_BROKERS_DOWN", "all down", 0.0)
    down = t.tick(CONFIRM, 0)
    assert isinstance(down, WentDown)
    assert "s3cret" not in down.message() and "alice" not in down.message()
    assert down.brokers == "SASL_SSL://***@broker-1:9092,broker-2:9092"


@pytest.mark.parametrize(
    ("servers", "shown"),
    [
        ("broker-1:9092,broker-2:9092", "broker-1:9092,broker-2:9092"),
        ("alice:s3cret@broker:9092", "***@broker:9092"),
        (
            "kafka://alice:p@ss@broker:9092, SSL://bob@b2:9093",
            "kafka://***@broker:9092, SSL://***@b2:9093",
        ),
        ("", ""),
    ],
)
def test_server_lists_lose_their_credentials(servers: str, shown: str) -> None:
    assert hide_server_credentials(servers) == shown


def test_errors_that_are_not_about_connectivity_are_left_to_the_caller() -> None:
    t = connected()
    assert not t.connection_error("TOPIC_AUTHORIZATION_FAILED", "denied", 5.0)
    assert not t.connection_error("_MSG_TIMED_OUT", "timed out", 5.0)
    assert t.state == "up"


def test_a_confirmation_delay_of_zero_confirms_at_the_next_tick() -> None:
    t = ConnectivityTracker("b:9092", confirm_seconds=0.0, reminder_seconds=1.0)
    t.connection_error("_ALL_BROKERS_DOWN", "all down", 5.0)
    assert isinstance(t.tick(5.0, 0), WentDown)


@pytest.mark.parametrize(("confirm", "reminder"), [(-1.0, 60.0), (10.0, 0.0), (10.0, -5.0)])
def test_invalid_durations_are_refused(confirm: float, reminder: float) -> None:
    with pytest.raises(ValueError, match="seconds must be"):
        ConnectivityTracker("b:9092", confirm_seconds=confirm, reminder_seconds=reminder)


# --- staying down ---------------------------------------------------------------------------


def test_a_reminder_exactly_at_the_interval_then_on_a_fixed_schedule() -> None:
    t = connected()
    went_down(t, 100.0)  # confirmed at 110
    assert t.tick(110.0, 3) is None  # never twice in one instant
    assert t.tick(169.9, 3) is None
    t.connection_error("_TRANSPORT", "refused again", 150.0)
    reminder = t.tick(170.0, 4)  # exactly REMINDER after the confirmation
    assert reminder == StillDown(
        reason="all brokers down",
        brokers="broker:9092",
        last_error="refused again",
        down_seconds=70.0,
        pending=4,
        errors=1,  # the _TRANSPORT just before _ALL_BROKERS_DOWN came while still up
    )
    assert reminder.message() == (
        "Kafka still unreachable after 70.0s: all brokers down (bootstrap servers "
        "broker:9092); 4 events pending; 1 failed connection attempt; last error: refused again"
    )
    assert t.tick(170.0, 4) is None
    assert t.tick(229.9, 4) is None
    assert isinstance(t.tick(230.0, 4), StillDown)
    assert t.outages == 1


def test_a_late_tick_gives_one_reminder_not_a_burst() -> None:
    t = connected()
    went_down(t, 0.0)  # confirmed at 10: reminders due at 70, 130, 190, 250
    late = t.tick(200.0, 0)  # three were due
    assert isinstance(late, StillDown) and late.down_seconds == 200.0
    assert t.tick(200.0, 0) is None
    assert t.tick(249.0, 0) is None
    assert isinstance(t.tick(250.0, 0), StillDown)  # the schedule did not drift


def test_plurals_are_spelt_right() -> None:
    t = connected()
    t.connection_error("_ALL_BROKERS_DOWN", "all down", 0.0)
    down = t.tick(CONFIRM, 1)
    assert isinstance(down, WentDown) and "; 1 event pending, kept" in down.message()
    reminder = t.tick(CONFIRM + REMINDER, 2)
    assert isinstance(reminder, StillDown)
    assert "; 2 events pending; 0 failed connection attempts" in reminder.message()
    t.statistics(1, 1, 100.0)
    t.connection_error("_ALL_BROKERS_DOWN", "all down", 200.0)
    down = t.tick(200.0 + CONFIRM, 0)
    assert isinstance(down, WentDown) and "; no event pending (" in down.message()
    reminder = t.tick(200.0 + CONFIRM + REMINDER, 0)
    assert isinstance(reminder, StillDown) and "; no event pending;" in reminder.message()


# --- coming back ----------------------------------------------------------------------------


def test_back_through_the_statistics() -> None:
    t = connected()
    went_down(t, 100.0)
    t.connection_error("_TRANSPORT", REFUSED, 120.0)
    back = t.statistics(1, 3, 142.5)
    assert back == CameBack(down_seconds=42.5, via="statistics: 1/3 brokers up", errors=1)
    assert back.message() == (
        "Kafka reachable again after 42.5s down (statistics: 1/3 brokers up); "
        "1 failed connection attempt during the outage"
    )
    assert t.state == "up"
    assert t.tick(1000.0, 0) is None  # no reminder once back
    assert t.statistics(1, 3, 1001.0) is None  # nor a second "back"


def test_back_through_a_delivery() -> None:
    t = connected()
    went_down(t, 100.0)
    for n in range(3):
        t.connection_error("_TRANSPORT", REFUSED, 120.0 + n)
    back = t.delivered(130.0)
    assert back == CameBack(down_seconds=30.0, via="an event was delivered", errors=3)
    assert t.delivered(131.0) is None


def test_a_blip_shorter_than_the_confirmation_is_not_news() -> None:
    t = connected()
    t.connection_error("_ALL_BROKERS_DOWN", "all down", 100.0)
    t.connection_error("_TRANSPORT", REFUSED, 100.2)
    assert t.statistics(1, 1, 104.0) is None  # back before it was confirmed: silent
    assert t.tick(200.0, 0) is None
    assert t.outages == 0


def test_a_delivery_also_ends_a_suspicion() -> None:
    t = tracker()
    t.connection_error("_ALL_BROKERS_DOWN", "all down", 0.0)
    assert t.delivered(1.0) is None
    assert t.tick(100.0, 0) is None and t.state == "up"


def test_flapping_slower_than_the_confirmation_logs_each_flap_once() -> None:
    t = connected()
    log: list[type] = []
    for cycle in range(3):
        start = 1000.0 * cycle
        for second in range(30):  # 30 s down: errors and statistics every second
            now = start + second
            t.connection_error("_ALL_BROKERS_DOWN", "all down", now)
            t.connection_error("_TRANSPORT", REFUSED, now)
            t.statistics(0, 1, now)
            if (x := t.tick(now, 0)) is not None:
                log.append(type(x))
        if (back := t.statistics(1, 1, start + 30.0)) is not None:
            log.append(type(back))
        for second in range(31, 100):  # then up for a while
            t.statistics(1, 1, start + second)
            assert t.tick(start + second, 0) is None
    assert log == [WentDown, CameBack] * 3
    assert t.outages == 3


def test_flapping_faster_than_the_confirmation_logs_nothing() -> None:
    t = connected()
    for n in range(200):  # down for 2 s, up for 2 s, over and over
        now = n * 2.0
        if n % 2 == 0:
            t.connection_error("_ALL_BROKERS_DOWN", "all down", now)
            assert t.statistics(0, 1, now + 1.0) is None
        else:
            assert t.statistics(1, 1, now) is None
        assert t.tick(now + 1.0, 0) is None
    assert t.outages == 0


def test_a_new_outage_after_a_recovery_starts_afresh() -> None:
    t = connected()
    went_down(t, 0.0)
    t.statistics(1, 1, 50.0)
    t.connection_error("_ALL_BROKERS_DOWN", "all down", 500.0)
    down = t.tick(500.0 + CONFIRM, 7)
    assert isinstance(down, WentDown)
    assert down.down_seconds == CONFIRM and down.pending == 7
    assert down.last_error is None  # the old outage's error is not this one's
    assert not down.never_connected
    reminder = t.tick(500.0 + CONFIRM + REMINDER, 7)
    assert isinstance(reminder, StillDown) and reminder.errors == 0
    assert t.outages == 2


# --- RepeatLimiter --------------------------------------------------------------------------


def test_the_first_of_a_run_goes_through_then_one_per_window() -> None:
    limiter = RepeatLimiter(60.0)
    assert limiter.allow("a", 0.0) == 0
    assert limiter.allow("a", 1.0) is None
    assert limiter.allow("a", 59.9) is None
    assert limiter.allow("b", 30.0) == 0  # keys are independent
    assert limiter.allow("a", 60.0) == 2  # exactly a window later, with how many were left out
    assert limiter.allow("a", 61.0) is None
    assert limiter.allow("a", 500.0) == 1
    assert limiter.allow("b", 500.0) == 0


def test_the_limiter_forgets_old_keys_to_stay_bounded() -> None:
    limiter = RepeatLimiter(10.0, max_keys=4)
    for n in range(4):
        limiter.allow(n, 0.0)
    limiter.allow(0, 1.0)  # left out: counted
    assert limiter.allow("new", 20.0) == 0  # the four old keys are forgotten...
    assert limiter.allow(0, 21.0) == 0  # ...with their counts
    assert len(limiter._seen) == 2


def test_the_limiter_drops_the_older_half_when_nothing_is_old() -> None:
    limiter = RepeatLimiter(10.0, max_keys=4)
    for n in range(4):
        limiter.allow(n, float(n))
    assert limiter.allow("new", 5.0) == 0
    assert sorted(map(str, limiter._seen)) == ["2", "3", "new"]
    assert limiter.allow(2, 6.0) is None  # still remembered
    assert limiter.allow(0, 6.0) == 0  # forgotten: goes through


def test_the_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window must be > 0"):
        RepeatLimiter(0.0)
