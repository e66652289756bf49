"""The subscription store's records: plain data, shared by every store (no MongoDB here).

`validate_market_id` (the one check of a market id), the results of a refresh
(`ActiveSubscriptions`, `InvalidDocument`) and of a write (`SubscriptionChange`), and the
millisecond timestamps both stores write (`store_timestamp`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from polymarket_kafka.models import PolymarketSubscription, utc

__all__ = [
    "MARKET_ID",
    "ActiveSubscriptions",
    "Clock",
    "InvalidDocument",
    "SubscriptionChange",
    "store_timestamp",
    "validate_market_id",
]

Clock = Callable[[], datetime]

#: A Polymarket condition id: `0x` and 64 hex digits.
MARKET_ID = re.compile(r"0x[0-9a-fA-F]{64}")


def validate_market_id(market_id: object) -> str:
    """Return a Polymarket condition id (`0x` + 64 hex digits) in lower case.

    Raises `ValueError` naming the offending value otherwise. Lower-casing keeps one document
    per market whatever case a caller used (Polymarket's APIs return lower case).
    """
    if not isinstance(market_id, str) or MARKET_ID.fullmatch(market_id) is None:
        raise ValueError(
            f"invalid market_id {market_id!r}: expected a Polymarket condition id "
            "(0x followed by 64 hex digits)"
        )
    return market_id.lower()


@dataclass(frozen=True)
class InvalidDocument:
    """A stored document that is not a valid subscription; skipped, reported, never fatal."""

    document_id: str
    market_id: str | None
    error: str

    def describe(self) -> str:
        """How to find the document: its market_id when it has one, and its `_id`."""
        if self.market_id is None:
            return f"_id={self.document_id}"
        return f"market_id={self.market_id} (_id={self.document_id})"


@dataclass(frozen=True)
class ActiveSubscriptions:
    """Valid subscriptions sorted by `market_id`, and the documents that failed validation."""

    subscriptions: tuple[PolymarketSubscription, ...]
    invalid: tuple[InvalidDocument, ...] = ()

    @property
    def market_ids(self) -> frozenset[str]:
        """The market ids of the valid subscriptions."""
        return frozenset(s.market_id for s in self.subscriptions)


@dataclass(frozen=True)
class SubscriptionChange:
    """What one `subscribe`/`unsubscribe` call did, and the document read back after it.

    `delta` is what this call did to `ref_count`: +1 (subscribe), -1 (unsubscribe) or 0 (an
    `unsubscribe` of an unknown market or of one already at zero). `created` is True when
    `subscribe` inserted the document. `subscription` is the document read back after the
    write -- it may already include other writers' changes -- or None when it could not be
    read or did not validate; `read_error` then says why. A failed read-back never undoes or
    hides the write.
    """

    market_id: str
    delta: int
    created: bool = False
    subscription: PolymarketSubscription | None = None
    read_error: str | None = None

    @property
    def applied(self) -> bool:
        """True when this call changed `ref_count`."""
        return self.delta != 0

    @property
    def ref_count(self) -> int | None:
        """The read-back `ref_count`, None when the document could not be read back."""
        return None if self.subscription is None else self.subscription.ref_count


def store_timestamp(clock: Clock) -> datetime:
    now = utc(clock())
    return now.replace(microsecond=now.microsecond - now.microsecond % 1000)
