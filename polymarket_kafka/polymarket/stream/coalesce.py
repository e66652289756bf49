"""Per-market coalescing of stream updates (pure: times are passed in).

An active market sends many updates a second; the detector needs at most one snapshot per
market per `interval`. `Coalescer.offer(key, now)` marks a market as changed. The first
change after a quiet spell is due at once (leading edge: a move after calm costs no delay);
changes within `interval` of the last emission are due when it ends (trailing edge), and
several of them count once (`coalesced`). The value itself is not kept here: the caller reads
the latest quote when the market is due, so the latest always wins.

Bounds: at most one pending entry per key and one heap entry per pending key (a key offered
again while pending does not grow the heap); `last_emitted` holds a time per key seen and is
trimmed by `forget`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

__all__ = ["Coalescer"]


@dataclass
class Coalescer:
    interval: float
    #: Offers absorbed by an emission already pending (the update was coalesced).
    coalesced: int = 0
    _pending: dict[str, float] = field(default_factory=dict)
    _heap: list[tuple[float, str]] = field(default_factory=list)
    _last_emitted: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.interval >= 0:
            raise ValueError(f"interval must be >= 0, got {self.interval!r}")

    def offer(self, key: str, now: float) -> None:
        """`key` changed at `now`."""
        if key in self._pending:
            self.coalesced += 1
            return
        last = self._last_emitted.get(key)
        due = now if last is None else max(now, last + self.interval)
        self._pending[key] = due
        heapq.heappush(self._heap, (due, key))

    def next_due(self) -> float | None:
        """When the earliest pending key is due; None when nothing is pending."""
        while self._heap and self._pending.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # forgotten while waiting
        return self._heap[0][0] if self._heap else None

    def take_due(self, now: float) -> list[str]:
        """The keys due at `now`, in due order; they count as emitted at `now`."""
        due = []
        while self._heap and self._heap[0][0] <= now:
            at, key = heapq.heappop(self._heap)
            if self._pending.get(key) != at:
                continue  # forgotten (and maybe offered again) while this entry waited
            del self._pending[key]
            self._last_emitted[key] = now
            due.append(key)
        return due

    def forget(self, key: str) -> None:
        """Drop everything about `key` (no longer streamed)."""
        self._pending.pop(key, None)
        self._last_emitted.pop(key, None)
        if len(self._heap) > 2 * len(self._pending) + 64:
            self._heap = [(d, k) for d, k in self._heap if self._pending.get(k) == d]
            heapq.heapify(self._heap)

    @property
    def pending(self) -> int:
        return len(self._pending)
