"""`detect`'s and `deliver`'s side of ownership, when several instances share the markets.

`Handover` keeps the pipeline consistent while partitions move (`service.ownership`):

* `sync` (detect, before each snapshot and before the last checkpoint): applies the
  partition changes -- a lost partition's markets dropped quietly, a gained one's restored
  states taken over (rules that changed since re-applied, as at start);
* `admits` (detect): a snapshot is judged only if its market's partition is owned and was
  already owned when the snapshot was polled;
* `stamp` / `publishable` (detect / deliver): every event carries the ownership generation
  of its partition at detection. `deliver` hands over, instead of publishing, an event whose
  partition changed owner since -- even if it came back: the restored state never included
  the event, so the move is detected again from it (one event id, never two);
* `protects` (detect): a market restored by a takeover is not deleted as unsubscribed before
  this instance has read the subscriptions once since (the previous owner may have seen a
  newer subscription list).

With no ownership (one instance), `Handover.off()` lets everything through and does nothing.
Bounds: one generation per event between `detect` and `deliver`; one entry per restored
market until the next subscription refresh.
"""

from __future__ import annotations

import logging

from polymarket_kafka.detection import Detector, RuleSource
from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.repeats import RepeatLimiter
from polymarket_kafka.service.durable import StateKeeper
from polymarket_kafka.service.ownership import Ownership
from polymarket_kafka.service.stages import LatestSubscriptions
from polymarket_kafka.service.stats import ServiceStats

__all__ = ["Handover"]

logger = logging.getLogger("polymarket_kafka.service.pipeline")

#: A handed-over event is logged at WARNING at most once per this many seconds (the rest,
#: counted, at DEBUG): a rebalance may hand over thousands.
LOG_WINDOW_SECONDS = 10.0


class Handover:
    """See the module docstring; one per `run_service`, shared by `detect` and `deliver`."""

    def __init__(
        self,
        ownership: Ownership | None,
        subscriptions: LatestSubscriptions,
        stats: ServiceStats,
    ) -> None:
        self.ownership = ownership
        self._subscriptions = subscriptions
        self._stats = stats
        self._seen = -1
        self._generations: dict[str, int] = {}
        #: Restored market -> the subscription refreshes counted when it was restored.
        self._restored: dict[str, int] = {}
        self._warnings = RepeatLimiter(LOG_WINDOW_SECONDS)

    @classmethod
    def off(cls) -> Handover:
        return cls(None, LatestSubscriptions(), ServiceStats())

    def sync(self, detector: Detector, keeper: StateKeeper, rules: RuleSource) -> None:
        """Apply the partition changes since the last call (nothing when there are none)."""
        ownership = self.ownership
        if ownership is None or ownership.version == self._seen:
            return
        self._seen = ownership.version
        changes = ownership.take_changes()
        restored = keeper.take_over(detector, changes, ownership)
        if not restored:
            return
        self._stats.state_markets_restored += restored
        refreshes = self._subscriptions.refreshes
        for change in changes:
            for state in change.states:
                self._restored[state.market_id] = refreshes
        keeper.adopt(detector, rules, self._stats)

    def admits(self, market_id: str, polled_at: float) -> bool:
        ownership = self.ownership
        if ownership is None or ownership.admits(market_id, polled_at):
            return True
        self._stats.snapshots_not_owned += 1
        return False

    def protects(self, market_id: str) -> bool:
        """True while `market_id`, restored by a takeover, waits for a subscription refresh
        to say whether it is still subscribed."""
        restored_at = self._restored.get(market_id)
        if restored_at is None:
            return False
        if self._subscriptions.refreshes > restored_at:
            del self._restored[market_id]
            return False
        return True

    def stamp(self, event: PolymarketEvent) -> None:
        if self.ownership is not None:
            self._generations[event.event_id] = self.ownership.generation_of(event.market_id)

    def publishable(self, event: PolymarketEvent, now: float) -> bool:
        """False: the event's partition changed owner since it was detected (handed over:
        counted and logged)."""
        ownership = self.ownership
        if ownership is None:
            return True
        generation = self._generations.pop(event.event_id, None)
        if generation == ownership.generation_of(event.market_id):
            return True
        self._stats.events_handed_over += 1
        left_out = self._warnings.allow("handed_over", now)
        more = f"; {left_out} more since the last such line" if left_out else ""
        logger.log(
            logging.DEBUG if left_out is None else logging.WARNING,
            "event of market %s not published: its partition changed owner since it was "
            "detected; the owner detects it again from the committed state (event_id=%s%s)",
            event.market_id,
            event.event_id,
            more,
            extra={"market_id": event.market_id, "event_id": event.event_id, "rule": event.rule},
        )
        return False
