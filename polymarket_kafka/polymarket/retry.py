"""Retry decisions for Polymarket requests: what is retryable, and how long to wait.

Pure functions plus a small policy object; the client owns the loop and the sleeping.

Retryable: transport errors and timeouts, 429 (rate limited), 425 ("service not ready", seen
during volatility), and every 5xx. Not retryable: any other 4xx (the request is wrong, or the
token has no order book), and above all a 403 with an HTML body, which is Cloudflare blocking
the host (geo/IP), not a rate limit, so hammering it would only prolong the block.

Waiting: exponential backoff with *full jitter* (uniform in [0, min(cap, base * 2**attempt)]),
which spreads retries of many clients better than equal or decorrelated jitter for the same
mean. When the server names a wait (`Retry-After` header in seconds or as an HTTP date, or the
CLOB error body's `retry_after_seconds`) we wait exactly that, capped by
`max_retry_after_seconds` so a bogus hint cannot stall a poll cycle for an hour.
"""

from __future__ import annotations

import json
import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from polymarket_kafka.clock import now_utc
from polymarket_kafka.polymarket.errors import (
    PolymarketBlockedError,
    PolymarketError,
    PolymarketHTTPError,
)

__all__ = [
    "RetryPolicy",
    "error_message",
    "full_jitter_backoff",
    "is_html",
    "is_retryable_status",
    "non_retryable_error",
    "parse_retry_after",
    "retry_after_hint",
]


def is_retryable_status(status: int) -> bool:
    """True for 425, 429 and 5xx."""
    return status in (425, 429) or status >= 500


def is_html(response: httpx.Response) -> bool:
    """Does the body look like an HTML page (by content-type, or by its first character)?"""
    if "html" in response.headers.get("content-type", "").lower():
        return True
    return response.content.lstrip()[:1] == b"<"


def error_message(response: httpx.Response) -> str:
    """The CLOB/Gamma `{"error": ...}` message, else the raw body text."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return response.text
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return response.text


def non_retryable_error(response: httpx.Response) -> PolymarketError:
    """The exception for a non-retryable, non-2xx response."""
    try:
        url = str(response.request.url)
    except RuntimeError:  # a Response built without a request (tests, hand-made)
        url = "<unknown url>"
    if response.status_code == 403 and is_html(response):
        return PolymarketBlockedError(url, response.text)
    return PolymarketHTTPError(response.status_code, url, error_message(response))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header value (delta-seconds or an HTTP date).

    Returns None when the value is absent or unparseable; a date in the past gives 0.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - now).total_seconds())
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


def retry_after_hint(response: httpx.Response, now: datetime) -> float | None:
    """The server's requested wait: the `Retry-After` header, else `retry_after_seconds`."""
    from_header = parse_retry_after(response.headers.get("retry-after"), now)
    if from_header is not None:
        return from_header
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    value = body.get("retry_after_seconds")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    return parse_retry_after(str(value), now)


def full_jitter_backoff(
    attempt: int, *, base: float, cap: float, random: Callable[[], float]
) -> float:
    """Uniform in [0, min(cap, base * 2**attempt)] ("full jitter"); `attempt` counts from 0."""
    ceiling = min(cap, base * float(2 ** min(max(attempt, 0), 62)))
    return ceiling * random()


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry and how long to wait between attempts.

    `max_retries` is the number of retries after the first attempt (0 = try once).
    `random` returns a float in [0, 1) (jitter); `wall_clock` is only used to turn an HTTP
    date in `Retry-After` into a duration. Both are injectable for tests.
    """

    max_retries: int = 4
    base_delay_seconds: float = 0.5
    max_delay_seconds: float = 10.0
    max_retry_after_seconds: float = 30.0
    random: Callable[[], float] = field(default=_random.random, repr=False)
    wall_clock: Callable[[], datetime] = field(default=now_utc, repr=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based) after `response`.

        A server hint wins over the computed backoff, capped by `max_retry_after_seconds`.
        """
        if response is not None:
            hint = retry_after_hint(response, self.wall_clock())
            if hint is not None:
                return min(hint, self.max_retry_after_seconds)
        return full_jitter_backoff(
            attempt,
            base=self.base_delay_seconds,
            cap=self.max_delay_seconds,
            random=self.random,
        )
