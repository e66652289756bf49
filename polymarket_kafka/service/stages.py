"""The supervision pieces of the pipeline: named stages, the stop request, the latest
subscriptions.

`run_stage` runs a long-lived task as a named stage of `ServiceHealth`, so `/health/live`
knows which task ended and why; it is typed like anyio's `TaskGroup.start_soon`
(`TypeVarTuple`), so mypy checks every stage's arguments. `Stopper` is how anything (a
signal, a test, the demo) asks the service to stop: it owns the two cancel scopes the
pipeline runs its sources and its drain in, and the pipeline only enters them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVarTuple, Unpack

import anyio

from polymarket_kafka.models import PolymarketSubscription
from polymarket_kafka.ops.health import ServiceHealth

__all__ = ["LatestSubscriptions", "Stopper", "run_stage", "task_name"]

logger = logging.getLogger(__name__)

Args = TypeVarTuple("Args")


async def run_stage(
    health: ServiceHealth,
    name: str,
    task: Callable[[Unpack[Args]], Awaitable[object]],
    *args: *Args,
) -> None:
    """Run `task(*args)` as stage `name` of `health`."""
    with health.stage(name):
        await task(*args)


def task_name(task: Callable[..., object]) -> str:
    """The stage name of a background task: its function's name."""
    # functools.partial has no __name__: name it after the function it wraps.
    target = getattr(task, "func", task)
    return str(getattr(target, "__name__", type(target).__name__))


class LatestSubscriptions:
    """A latest-value cell: the refresher writes the active set, the poller reads it.

    With an `owner` (several instances share the markets, `service.ownership`), `value`
    holds only the markets it owns; `refilter` applies a change of ownership at once (the
    store is not read again).
    """

    def __init__(self, owner: Callable[[str], bool] | None = None) -> None:
        self._all: tuple[PolymarketSubscription, ...] = ()
        self._value: tuple[PolymarketSubscription, ...] = ()
        self._owner = owner
        self.loaded = anyio.Event()
        self.version = 0
        #: Reads of the store so far (`set` calls; a `refilter` is not one).
        self.refreshes = 0

    @property
    def value(self) -> tuple[PolymarketSubscription, ...]:
        return self._value

    @property
    def everything(self) -> tuple[PolymarketSubscription, ...]:
        """Every active subscription, owned or not."""
        return self._all

    def set(self, value: tuple[PolymarketSubscription, ...]) -> None:
        self._all = value
        self.refreshes += 1
        self._filter()
        self.loaded.set()

    def refilter(self) -> None:
        """The owner's markets changed: filter the latest set again."""
        self._filter()

    def market_ids(self) -> frozenset[str]:
        return frozenset(s.market_id for s in self._value)

    def _filter(self) -> None:
        owner = self._owner
        self._value = (
            self._all if owner is None else tuple(s for s in self._all if owner(s.market_id))
        )
        self.version += 1


class Stopper:
    """Requests a stop. The first request cancels the sources and lets the pipeline drain
    (bounded by `ServiceSettings.drain_grace_seconds`); a second one stops it at once.

    The pipeline runs its sources inside `sources` and its whole drain inside `pipeline`;
    `on_stop` callbacks run once, on the first request (the service marks its health as
    stopping). Nothing else about a stop is shared.
    """

    def __init__(self) -> None:
        self.requested = False
        self.sources = anyio.CancelScope()
        self.pipeline = anyio.CancelScope()
        self._callbacks: list[Callable[[], object]] = []

    def on_stop(self, callback: Callable[[], object]) -> None:
        """Call `callback` on the first stop request (at once if one was already made)."""
        if self.requested:
            callback()
        else:
            self._callbacks.append(callback)

    def stop(self) -> None:
        if self.requested:
            logger.warning("second stop request: stopping now without draining")
            self.pipeline.cancel()
            return
        self.requested = True
        for callback in self._callbacks:
            callback()
        self.sources.cancel()
