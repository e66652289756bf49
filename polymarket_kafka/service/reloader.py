"""Hot reload of the rules file: parse, validate and compile off to the side, swap atomically.

Modelled on Prometheus: a reload is all-or-nothing. The new file is read and compiled in a
worker thread while detection keeps running on the old `RuleSet`; only a fully compiled
rule set is swapped in, with one attribute assignment that the detect stage picks up before
its next snapshot. An invalid file changes nothing: the old rules keep running, every issue
is logged with its file, line and key, and the failure is counted. Because the swap happens
between two snapshots, an event already detected is delivered exactly once, built under
the rules it was detected with.

A rule set that compiles but that the detector cannot adopt (resolving a tracked market
raises) is handed back by the detect stage (`reject`): the rules in force stay, and
`current` names them again.

SIGHUPs coalesce: the signal handler only *requests* a reload. However many requests arrive
while a reload runs, exactly one more reload follows, and it reads the file as it is then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import anyio

from polymarket_kafka.detection import Detector, RuleSource
from polymarket_kafka.ruleset import RulesError, RuleSet, default_rules_path, load_rules
from polymarket_kafka.service.stats import ServiceStats

__all__ = ["RulesHolder", "RulesMetrics", "adopt_rules", "default_rules_path", "run_reloader"]

logger = logging.getLogger(__name__)


@dataclass
class RulesMetrics:
    """Reload counters for the metrics layer (`rules_reload_total{result}`, ...)."""

    reload_total: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    #: Unix time of the last successful load (the initial load counts).
    last_reload_success_timestamp: float | None = None
    #: `rules_version` of the rules in force.
    version: str = ""


class RulesHolder:
    """The rules in force. Readers read `current`; only `reload()` replaces it."""

    def __init__(
        self,
        rules: RuleSet | None = None,
        *,
        path: Path | None = None,
        loader: Callable[[Path], RuleSet] = load_rules,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.current: RuleSet = rules if rules is not None else RuleSet.builtin()
        self.path = path
        self._loader = loader
        self._clock = clock
        self.metrics = RulesMetrics(version=self.current.version)
        if clock is not None:
            self.metrics.last_reload_success_timestamp = clock().timestamp()
        self._requested = anyio.Event()

    @classmethod
    def from_path(
        cls, path: Path | None, *, clock: Callable[[], datetime] | None = None
    ) -> RulesHolder:
        """Load the initial rules (raises `RulesError`); None = built-in defaults."""
        rules = load_rules(path) if path is not None else RuleSet.builtin()
        return cls(rules, path=path, clock=clock)

    def request_reload(self) -> None:
        """Ask for a reload (signal-safe, coalescing): `run_reloader` performs it."""
        self._requested.set()

    async def reload(self) -> bool:
        """Reload now, off the event loop. Returns True when new rules were swapped in."""
        if self.path is None:
            logger.info("rules reload requested; no rules file configured, keeping built-ins")
            return False
        path = self.path
        try:
            new = await anyio.to_thread.run_sync(self._loader, path)
        except RulesError as exc:
            self._failed(f"rules reload failed; the previous rules stay in force:\n{exc}")
            return False
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old rules running
            self._failed(f"rules reload failed ({exc!r}); the previous rules stay in force")
            return False
        old, self.current = self.current, new
        self.metrics.reload_total["success"] += 1
        self.metrics.version = new.version
        if self._clock is not None:
            self.metrics.last_reload_success_timestamp = self._clock().timestamp()
        if new.version == old.version:
            logger.info("rules reloaded from %s: unchanged (version %s)", path, new.version)
        else:
            logger.info("rules reloaded from %s: version %s -> %s", path, old.version, new.version)
        return True

    def reject(self, rules: RuleSet, in_force: RuleSet) -> None:
        """The detector could not adopt `rules` and keeps `in_force`: `current` (and the
        `rules_version` metric) name `in_force` again, unless a newer reload has replaced
        `rules` meanwhile. The reload itself stays counted as a success: the file was valid."""
        if self.current is rules:
            self.current = in_force
            self.metrics.version = in_force.version

    def _failed(self, message: str) -> None:
        self.metrics.reload_total["failure"] += 1
        logger.error("%s", message)

    async def wait_requested(self) -> None:
        """Wait for the next reload request; the requests made so far are consumed."""
        await self._requested.wait()
        self._requested = anyio.Event()


async def run_reloader(holder: RulesHolder) -> None:
    """Serve reload requests one at a time until cancelled (requests coalesce)."""
    while True:
        await holder.wait_requested()
        await holder.reload()


def adopt_rules(detector: Detector, rules: RuleSource, stats: ServiceStats) -> bool:
    """Adopt reloaded rules; False (logged, counted, the rules in force kept) if that fails.

    Markets that a failed adoption had already reset start afresh under the rules in force,
    as any reset market does: no event is lost or made up by it.
    """
    try:
        resets = detector.apply_rules(rules)
    except Exception:
        stats.rule_adoption_failures += 1
        logger.exception(
            "rules %s could not be adopted; detection goes on with the rules in force",
            rules.version,
        )
        return False
    stats.rule_resets += len(resets)
    for reset in resets:
        if reset.new_state_key is None:
            what = "dropped: not watched under the new rules"
        else:
            what = f"re-evaluated under new parameters ({reset.old_state_key} -> "
            what += f"{reset.new_state_key}), its prices kept"
            if reset.pending_dropped:
                what += "; its pending move no longer qualifies and was dropped"
        logger.info(
            "rules %s: detection state of market %s %s",
            rules.version,
            reset.market_id,
            what,
            extra={"market_id": reset.market_id},
        )
    logger.info(
        "rules %s in force: %d markets re-evaluated or dropped, %d unchanged",
        rules.version,
        len(resets),
        len(detector.tracked()) - sum(r.new_state_key is not None for r in resets),
    )
    return True
