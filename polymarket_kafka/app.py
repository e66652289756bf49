"""Composition root: open the real adapters from `AppConfig` and run the service.

Resources are opened outermost-first so they close in the order shutdown needs: the
publisher flushes (shielded, bounded by the grace period) before the HTTP client closes, and
MongoDB closes last.
"""

from __future__ import annotations

from polymarket_kafka.clock import now_utc
from polymarket_kafka.config import AppConfig
from polymarket_kafka.kafka import open_kafka_publisher
from polymarket_kafka.poller import MarketPoller
from polymarket_kafka.polymarket import open_polymarket_client
from polymarket_kafka.reloader import RulesHolder, default_rules_path
from polymarket_kafka.service import ServiceSettings, ServiceStats, run_service
from polymarket_kafka.subscriptions import open_subscription_store

__all__ = ["load_initial_rules", "run_app", "settings_from_config"]


def settings_from_config(config: AppConfig) -> ServiceSettings:
    """Pipeline settings from the environment configuration."""
    return ServiceSettings(
        poll_interval_seconds=config.poll_interval_seconds,
        subscription_refresh_seconds=config.mongo.poll_interval_seconds,
        drain_grace_seconds=config.shutdown_grace_seconds,
    )


def load_initial_rules(config: AppConfig) -> RulesHolder:
    """The rules to start with: RULES_PATH, else rules/default.yaml, else the built-ins.

    Raises `ruleset.RulesError` (every issue with file, line and key) for an invalid file:
    unlike a reload, a bad file at start-up stops the service before it touches anything.
    """
    return RulesHolder.from_path(default_rules_path(config.rules_path), clock=now_utc)


async def run_app(config: AppConfig, rules: RulesHolder | None = None) -> ServiceStats:
    """Run the service against the configured MongoDB, Polymarket and Kafka until stopped."""
    rules = rules if rules is not None else load_initial_rules(config)
    async with (
        open_subscription_store(config.mongo, clock=now_utc) as store,
        open_polymarket_client(config.polymarket) as client,
        open_kafka_publisher(
            config.kafka, clock=now_utc, grace_seconds=config.shutdown_grace_seconds
        ) as publisher,
    ):
        poller = MarketPoller(
            client, metadata_refresh_seconds=config.polymarket.metadata_refresh_seconds
        )
        return await run_service(
            store=store,
            poller=poller,
            publisher=publisher,
            settings=settings_from_config(config),
            clock=now_utc,
            rules=rules,
        )
