"""The `refresh_subscriptions` stage: the active subscriptions from the store, every
`subscription_refresh_seconds`, into `LatestSubscriptions`.

A failing refresh keeps the last known set in force and is retried sooner at first (1, 2,
4 ... s, at most the interval). Invalid documents are reported once each (again if their
error changes), never once per refresh.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from polymarket_kafka.service.ports import SubscriptionStore
from polymarket_kafka.service.stages import LatestSubscriptions
from polymarket_kafka.service.stats import ServiceSettings, SourceOutcomes

if TYPE_CHECKING:
    from polymarket_kafka.subscription_records import InvalidDocument

__all__ = ["refresh_subscriptions"]

logger = logging.getLogger("polymarket_kafka.service.pipeline")


async def refresh_subscriptions(
    store: SubscriptionStore,
    subscriptions: LatestSubscriptions,
    settings: ServiceSettings,
    outcomes: SourceOutcomes,
) -> None:
    warned: frozenset[tuple[str, str]] = frozenset()
    while True:
        try:
            active = await store.active()
        except Exception as exc:  # noqa: BLE001 - any store failure keeps the last set
            failures = outcomes.refresh_failed(exc)
            # Keep polling the last known set; retry sooner than a full interval at first.
            delay = min(settings.subscription_refresh_seconds, 2.0 ** min(failures, 6))
            logger.warning(
                "subscription refresh failed (%s); keeping %d known markets, retry in %.0fs",
                exc,
                len(subscriptions.everything),
                delay,
            )
            await anyio.sleep(delay)
            continue
        if active.subscriptions != subscriptions.everything or not subscriptions.loaded.is_set():
            logger.info("active subscriptions: %d markets", len(active.subscriptions))
        warned = _warn_invalid_documents(active.invalid, warned)
        subscriptions.set(active.subscriptions)
        outcomes.refreshed(len(subscriptions.market_ids()), len(active.invalid))
        await anyio.sleep(settings.subscription_refresh_seconds)


def _warn_invalid_documents(
    invalid: Sequence[InvalidDocument], warned: frozenset[tuple[str, str]]
) -> frozenset[tuple[str, str]]:
    """Warn once about each invalid document (and again if its error changes); return what
    is now known. Only the documents of the latest refresh are remembered: the set is bounded
    by the collection, and a document that was fixed and breaks again is reported again."""
    current = frozenset((document.document_id, document.error) for document in invalid)
    for document in invalid:
        if (document.document_id, document.error) not in warned:
            logger.warning(
                "invalid subscription document %s skipped: %s",
                document.describe(),
                document.error,
                extra={} if document.market_id is None else {"market_id": document.market_id},
            )
    return current
