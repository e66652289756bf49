"""Rate limiter pacing (fake clock, no real sleeping) and retry decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from polymarket_kafka.polymarket.errors import PolymarketBlockedError, PolymarketHTTPError
from polymarket_kafka.polymarket.ratelimit import RateLimiter
from polymarket_kafka.polymarket.retry import (
    RetryPolicy,
    error_message,
    full_jitter_backoff,
    is_html,
    is_retryable_status,
    non_retryable_error,
    parse_retry_after,
    retry_after_hint,
)

NOW = datetime(2024, 11, 6, 3, 0, tzinfo=UTC)


class FakeClock:
    """A monotonic clock that only moves when somebody sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# --- rate limiter ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_calls_are_spaced_by_the_interval() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.1, clock=clock, sleep=clock.sleep)

    waited = [await limiter.acquire() for _ in range(4)]

    assert waited == [False, True, True, True]
    assert clock.sleeps == pytest.approx([0.1, 0.1, 0.1])
    assert limiter.waits == 3
    assert limiter.waited_seconds == pytest.approx(0.3)


@pytest.mark.anyio
async def test_no_wait_once_the_interval_has_passed() -> None:
    clock = FakeClock()
    limiter = RateLimiter.from_delay_ms(250, clock=clock, sleep=clock.sleep)
    await limiter.acquire()

    clock.now += 0.25
    assert await limiter.acquire() is False

    clock.now += 0.1
    assert await limiter.acquire() is True
    assert clock.sleeps == pytest.approx([0.15])


@pytest.mark.anyio
async def test_wait_returns_the_seconds_waited() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.25, clock=clock, sleep=clock.sleep)

    assert [await limiter.wait() for _ in range(3)] == pytest.approx([0.0, 0.25, 0.25])
    assert limiter.waited_seconds == pytest.approx(0.5)


@pytest.mark.anyio
async def test_zero_delay_disables_pacing() -> None:
    clock = FakeClock()
    limiter = RateLimiter.from_delay_ms(0, clock=clock, sleep=clock.sleep)

    for _ in range(100):
        assert await limiter.acquire() is False

    assert clock.sleeps == []
    assert limiter.waits == 0


def test_concurrent_reservations_queue_in_arrival_order() -> None:
    limiter = RateLimiter(0.5)

    # Five callers arrive at the same instant: each books the next free slot.
    assert [limiter.reserve(10.0) for _ in range(5)] == [0.0, 0.5, 1.0, 1.5, 2.0]
    # A caller arriving later than the booked slots waits only for the remainder.
    assert limiter.reserve(11.0) == pytest.approx(1.5)


def test_burst_allows_that_many_calls_at_once() -> None:
    limiter = RateLimiter(1.0, burst=3)

    assert [limiter.reserve(0.0) for _ in range(5)] == [0.0, 0.0, 0.0, 1.0, 2.0]
    assert limiter.reserve(100.0) == 0.0


@pytest.mark.anyio
async def test_concurrent_tasks_each_get_their_own_slot() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.2, clock=clock, sleep=clock.sleep)

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(limiter.acquire)

    # The fake clock advances on every sleep, so only the totals are order-free facts.
    assert limiter.waits == 2
    assert sum(clock.sleeps) >= 0.2


@pytest.mark.anyio
async def test_default_clock_and_sleep_are_anyio() -> None:
    limiter = RateLimiter(0.001)

    await limiter.acquire()
    await limiter.acquire()  # really sleeps for about a millisecond

    assert limiter.waits in (0, 1)


@pytest.mark.parametrize(("interval", "burst"), [(-0.1, 1), (0.1, 0)])
def test_limiter_rejects_bad_arguments(interval: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be >="):
        RateLimiter(interval, burst=burst)


# --- what is retryable -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (425, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (422, False),
    ],
)
def test_retryable_statuses(status: int, retryable: bool) -> None:
    assert is_retryable_status(status) is retryable


def _response(
    status: int,
    content: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    url: str | None = "https://clob.polymarket.com/midpoints",
) -> httpx.Response:
    request = httpx.Request("POST", url) if url else None
    return httpx.Response(status, content=content, headers=headers, request=request)


def test_an_html_403_is_a_block() -> None:
    page = b"<!DOCTYPE html><title>Attention Required! | Cloudflare</title>"
    error = non_retryable_error(_response(403, page, {"content-type": "text/html"}))

    assert isinstance(error, PolymarketBlockedError)
    assert error.url == "https://clob.polymarket.com/midpoints"


def test_html_is_recognised_by_its_body_when_the_content_type_lies() -> None:
    response = _response(403, b"  <html>blocked</html>", {"content-type": "application/json"})

    assert is_html(response)
    assert isinstance(non_retryable_error(response), PolymarketBlockedError)


def test_a_json_403_is_a_plain_http_error() -> None:
    error = non_retryable_error(_response(403, b'{"error": "forbidden"}'))

    assert isinstance(error, PolymarketHTTPError)
    assert (error.status, error.body_excerpt) == (403, "forbidden")


def test_error_message_prefers_the_json_error_field() -> None:
    body = b'{"error": "No orderbook exists for the requested token id"}'
    assert error_message(_response(404, body)) == "No orderbook exists for the requested token id"
    assert error_message(_response(404, b'{"type": "x"}')) == '{"type": "x"}'
    assert error_message(_response(404, b"plain text")) == "plain text"


def test_an_error_for_a_response_without_request_still_has_a_url() -> None:
    error = non_retryable_error(_response(400, b"{}", url=None))

    assert isinstance(error, PolymarketHTTPError)
    assert error.url == "<unknown url>"


# --- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("-3", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),
        (format_datetime(NOW - timedelta(seconds=30), usegmt=True), 0.0),
        ("Wed, 06 Nov 2024 03:00:45", 45.0),  # a date without a zone is taken as UTC
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_the_header_wins_over_the_body_hint() -> None:
    response = _response(
        429, b'{"error": "slow down", "retry_after_seconds": 9}', {"Retry-After": "2"}
    )

    assert retry_after_hint(response, NOW) == 2.0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error": "slow down", "retry_after_seconds": 7}', 7.0),
        (b'{"retry_after_seconds": "3"}', 3.0),
        (b'{"retry_after_seconds": true}', None),
        (b'{"retry_after_seconds": null}', None),
        (b'{"error": "slow down"}', None),
        (b'["retry_after_seconds"]', None),
        (b"Too Many Requests", None),
    ],
)
def test_the_body_hint(body: bytes, expected: float | None) -> None:
    assert retry_after_hint(_response(429, body), NOW) == expected


# --- backoff ---------------------------------------------------------------------------------


def test_full_jitter_bounds() -> None:
    def top() -> float:
        return 0.999999

    assert full_jitter_backoff(0, base=0.5, cap=10, random=lambda: 0.0) == 0.0
    assert full_jitter_backoff(0, base=0.5, cap=10, random=top) == pytest.approx(0.5, rel=1e-5)
    assert full_jitter_backoff(3, base=0.5, cap=10, random=top) == pytest.approx(4.0, rel=1e-5)
    assert full_jitter_backoff(10, base=0.5, cap=10, random=top) == pytest.approx(10.0, rel=1e-5)
    assert full_jitter_backoff(10_000, base=0.5, cap=10, random=lambda: 0.5) == 5.0


@given(
    st.integers(min_value=0, max_value=200),
    st.floats(min_value=0, max_value=1, exclude_max=True),
    st.floats(min_value=0.001, max_value=5),
    st.floats(min_value=0.001, max_value=120),
)
def test_backoff_stays_within_the_exponential_envelope(
    attempt: int, r: float, base: float, cap: float
) -> None:
    delay = full_jitter_backoff(attempt, base=base, cap=cap, random=lambda: r)

    assert 0.0 <= delay <= min(cap, base * 2.0 ** min(attempt, 62))


def test_policy_uses_the_server_hint_capped() -> None:
    policy = RetryPolicy(max_retry_after_seconds=30, random=lambda: 0.5, wall_clock=lambda: NOW)

    assert policy.delay(0, _response(429, headers={"Retry-After": "2"})) == 2.0
    assert policy.delay(0, _response(429, headers={"Retry-After": "3600"})) == 30.0
    assert policy.delay(0, _response(429, b'{"retry_after_seconds": 45}')) == 30.0
    in_ten = format_datetime(NOW + timedelta(seconds=10), usegmt=True)
    assert policy.delay(0, _response(503, headers={"Retry-After": in_ten})) == 10.0


def test_policy_falls_back_to_jittered_backoff() -> None:
    policy = RetryPolicy(base_delay_seconds=1, max_delay_seconds=8, random=lambda: 0.5)

    assert [policy.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.delay(1, _response(503)) == 1.0


def test_policy_rejects_negative_retries() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)


def test_default_policy_is_usable() -> None:
    policy = RetryPolicy()

    assert 0.0 <= policy.delay(2) <= 2.0
    assert policy.delay(0, _response(429, headers={"Retry-After": "1"})) == 1.0
