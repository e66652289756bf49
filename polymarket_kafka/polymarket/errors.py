"""Exceptions raised by the Polymarket adapter.

The hierarchy separates what the caller should do next:

- `PolymarketBlockedError`: an HTML 403 from Cloudflare. Retrying will not help; an operator
  must look at the host's network (geo or IP block).
- `PolymarketHTTPError`: any other non-retryable 4xx. The request itself is wrong (or, for
  `POST /midpoints`, one token has no order book; the client bisects those).
- `PolymarketUnavailableError`: transport errors, timeouts, 429/425/5xx that persisted after
  every retry. Try again next cycle.
- `MalformedPayloadError`: a 2xx whose body is not the documented shape as a whole (not JSON,
  wrong top-level type). Per-item problems never raise; they become per-id failure reasons.
"""

from __future__ import annotations

__all__ = [
    "MalformedPayloadError",
    "PolymarketBlockedError",
    "PolymarketError",
    "PolymarketHTTPError",
    "PolymarketUnavailableError",
]

_EXCERPT_CHARS = 200


def excerpt(text: str, limit: int = _EXCERPT_CHARS) -> str:
    """One line of at most `limit` characters, for error messages and logs."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class PolymarketError(Exception):
    """Base class of every error raised by the Polymarket adapter."""


class PolymarketBlockedError(PolymarketError):
    """HTTP 403 with an HTML body: Cloudflare refused the request. Never retried."""

    def __init__(self, url: str, body: str) -> None:
        self.url = url
        self.body_excerpt = excerpt(body)
        super().__init__(
            f"403 HTML page from {url}: this looks like a geo/IP block by Cloudflare, not a rate "
            "limit; check the host's region or egress IP (retrying will not help)"
        )


class PolymarketHTTPError(PolymarketError):
    """A non-retryable HTTP error status (4xx other than 425/429 and HTML 403)."""

    def __init__(self, status: int, url: str, body: str) -> None:
        self.status = status
        self.url = url
        self.body_excerpt = excerpt(body)
        super().__init__(f"HTTP {status} from {url}: {self.body_excerpt}")


class PolymarketUnavailableError(PolymarketError):
    """The API did not answer usefully after every allowed retry."""

    def __init__(self, url: str, attempts: int, last_problem: str) -> None:
        self.url = url
        self.attempts = attempts
        self.last_problem = last_problem
        super().__init__(f"{url} unavailable after {attempts} attempt(s): {last_problem}")


class MalformedPayloadError(PolymarketError):
    """A successful response whose body, as a whole, is not the documented shape."""
