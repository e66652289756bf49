"""Log lines that repeat: the first of a run goes through, then one per window (pure).

Used for the Kafka client's own lines (`kafka.connectivity`, `kafka.librdkafka_log`), the
publishers' retry warnings, and events handed over when partitions move (`kafka.partitioned`,
`service.handover`). Times are the caller's monotonic clock; nothing here reads one.
"""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["RepeatLimiter"]


class RepeatLimiter:
    """Lets the first of a run of repeated keys through, then at most one per `window` seconds.

    `allow(key, now)` returns None when the occurrence is to be left out, otherwise how many
    occurrences of `key` were left out since the last one let through. Memory stays bounded:
    past `max_keys` keys, those let through more than a window ago are forgotten (or, if none
    is that old, the older half -- their next occurrence goes through).
    """

    def __init__(self, window: float, *, max_keys: int = 256) -> None:
        if window <= 0:
            raise ValueError("window must be > 0")
        self.window = window
        self._max_keys = max_keys
        self._seen: dict[Hashable, tuple[float, int]] = {}  # key -> (let through at, left out)

    def allow(self, key: Hashable, now: float) -> int | None:
        """None: leave this one out. Otherwise: let it through, after that many left out."""
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window:
            self._seen[key] = (seen[0], seen[1] + 1)
            return None
        if seen is None and len(self._seen) >= self._max_keys:
            self._forget(now)
        self._seen[key] = (now, 0)
        return 0 if seen is None else seen[1]

    def _forget(self, now: float) -> None:
        stale = [k for k, (at, _) in self._seen.items() if now - at >= self.window]
        for key in stale or list(self._seen)[: len(self._seen) // 2]:
            del self._seen[key]
