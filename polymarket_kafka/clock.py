"""The one wall clock of the service shell.

The pure core (detection, events) never reads a clock: time is passed in. The shell's
adapters take a `clock` argument defaulting to `now_utc`, so tests inject a fake one.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["now_utc"]


def now_utc() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)
