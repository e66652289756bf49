"""Hot reload of the rules: the holder on its own, then SIGHUP against a running service.

The service runs with the real poller against the fake Polymarket server on loopback and a
recording publisher (as in test_service.py). The SIGHUP is sent from inside a poll cycle and
that cycle waits until the reload has finished, so which snapshots ran under which rules is
deterministic.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from polymarket_kafka.models import PolymarketSubscription
from polymarket_kafka.polymarket import open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller, PollResult
from polymarket_kafka.ruleset import RuleSet, load_rules
from polymarket_kafka.service.pipeline import run_service
from polymarket_kafka.service.reloader import RulesHolder, default_rules_path, run_reloader
from polymarket_kafka.service.stats import ServiceSettings, ServiceStats
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore
from tests.component.test_service import RecordingPublisher, ScriptedClock

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 11, 5, 23, 0, tzinfo=UTC)

# The volatility test is off (`z: 0`): these tests are about reloading, on fresh markets
# whose first moves a market-aware detector would judge against its prior volatility.
ONE_POLL = """\
version: 1
defaults:
  confirm: {polls: 1}
  move: {abs: 0.04}
  volatility: {z: 0}
"""
STRICT = """\
version: 1
defaults:
  confirm: {polls: 1}
  move: {abs: 0.30, log_odds: 5}
  volatility: {z: 0}
"""
TWO_POLLS = """\
version: 1
defaults:
  confirm: {polls: 2}
  volatility: {z: 0}
"""
TWO_POLLS_RENAMED = """\
version: 1
defaults:
  name: renamed_move
  confirm: {polls: 2}
  severity: {small: {}, big: {abs: 0.05}}
  volatility: {z: 0}
"""
TWO_POLLS_NEW_WINDOW = """\
version: 1
defaults:
  window: 30m
  confirm: {polls: 2}
  volatility: {z: 0}
"""
BROKEN = """\
version: 1
defaults:
  move: {abs: -0.5}
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def rules_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


# --- the holder --------------------------------------------------------------------------


async def test_valid_reload_swaps_and_counts(tmp_path: Path) -> None:
    path = rules_file(tmp_path, ONE_POLL)
    clock = FakeClock()
    holder = RulesHolder.from_path(path, clock=clock)
    old = holder.current
    assert holder.metrics.last_reload_success_timestamp == T0.timestamp()
    path.write_text(STRICT)
    clock.now = T0 + timedelta(minutes=5)
    assert await holder.reload() is True
    assert holder.current is not old
    assert holder.current.version == load_rules(path).version != old.version
    assert holder.metrics.reload_total == {"success": 1, "failure": 0}
    assert holder.metrics.version == holder.current.version
    assert holder.metrics.last_reload_success_timestamp == clock.now.timestamp()


async def test_rejected_rules_hand_the_holder_back_to_the_rules_in_force(tmp_path: Path) -> None:
    path = rules_file(tmp_path, ONE_POLL)
    holder = RulesHolder.from_path(path)
    in_force = holder.current
    path.write_text(STRICT)
    assert await holder.reload() is True
    rejected = holder.current
    holder.reject(rejected, in_force)  # what the detect stage does when adoption fails
    assert holder.current is in_force
    assert holder.metrics.version == in_force.version
    assert holder.metrics.reload_total == {"success": 1, "failure": 0}  # the file was valid
    # A reload that came in meanwhile is not undone by rejecting an older set.
    path.write_text(TWO_POLLS)
    assert await holder.reload() is True
    newer = holder.current
    holder.reject(rejected, in_force)
    assert holder.current is newer
    assert holder.metrics.version == newer.version


async def test_invalid_reload_keeps_old_rules_and_logs_location(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = rules_file(tmp_path, ONE_POLL)
    holder = RulesHolder.from_path(path, clock=FakeClock())
    old = holder.current
    path.write_text(BROKEN)
    assert await holder.reload() is False
    assert holder.current is old
    assert holder.metrics.reload_total == {"success": 0, "failure": 1}
    assert holder.metrics.version == old.version
    assert holder.metrics.last_reload_success_timestamp == T0.timestamp()
    assert f"{path}:3:" in caplog.text and "defaults.move.abs" in caplog.text
    assert "previous rules stay in force" in caplog.text


async def test_reload_of_a_deleted_file_keeps_old_rules(tmp_path: Path) -> None:
    path = rules_file(tmp_path, ONE_POLL)
    holder = RulesHolder.from_path(path)
    path.unlink()
    assert await holder.reload() is False
    assert holder.metrics.reload_total["failure"] == 1


async def test_unexpected_loader_failure_keeps_old_rules(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(path: Path) -> RuleSet:
        raise MemoryError("boom")

    holder = RulesHolder(RuleSet.builtin(), path=tmp_path / "x.yaml", loader=explode)
    assert await holder.reload() is False
    assert holder.metrics.reload_total["failure"] == 1
    assert "boom" in caplog.text


async def test_identical_file_reload_changes_nothing(tmp_path: Path) -> None:
    path = rules_file(tmp_path, ONE_POLL)
    holder = RulesHolder.from_path(path)
    before = holder.current.version
    path.write_text("# a comment\n" + ONE_POLL.replace("0.04", "0.040"))
    assert await holder.reload() is True
    assert holder.current.version == before


async def test_reload_without_a_file_keeps_built_ins() -> None:
    holder = RulesHolder.from_path(None)
    assert holder.current.source == RuleSet.builtin().source
    assert await holder.reload() is False
    assert holder.metrics.reload_total == {"success": 0, "failure": 0}


async def test_requests_coalesce_into_one_reload(tmp_path: Path) -> None:
    path = rules_file(tmp_path, ONE_POLL)
    calls: list[Path] = []

    def counting(p: Path) -> RuleSet:
        calls.append(p)
        return load_rules(p)

    holder = RulesHolder(load_rules(path), path=path, loader=counting)
    for _ in range(5):
        holder.request_reload()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_reloader, holder)
        with anyio.fail_after(5):
            # Polling the reload counter: the outcome is what the test waits for.
            while holder.metrics.reload_total["success"] < 1:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        holder.request_reload()
        with anyio.fail_after(5):
            while holder.metrics.reload_total["success"] < 2:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert len(calls) == 2


def test_default_rules_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_rules_path(Path("x.yaml")) == Path("x.yaml")
    monkeypatch.chdir(tmp_path)
    assert default_rules_path(None) is None
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "default.yaml").write_text(ONE_POLL)
    assert default_rules_path(None) == Path("rules/default.yaml")


# --- SIGHUP against a running service ----------------------------------------------------


class HupPoller:
    """The real poller; before cycle `at`, rewrites the rules file, sends SIGHUP and waits
    for the reload to finish (succeed or fail) so the cycle runs under the outcome."""

    def __init__(
        self, inner: MarketPoller, holder: RulesHolder, at: int, rewrite: Callable[[], Any]
    ) -> None:
        self.inner, self.holder, self.at, self.rewrite, self.cycle = inner, holder, at, rewrite, 0

    async def poll_once(
        self, subscriptions: Collection[PolymarketSubscription], now: datetime
    ) -> PollResult:
        self.cycle += 1
        if self.cycle == self.at:
            done = sum(self.holder.metrics.reload_total.values())
            self.rewrite()
            os.kill(os.getpid(), signal.SIGHUP)
            with anyio.fail_after(10):
                # The reload runs in the service's own reloader task: poll its counters.
                while sum(self.holder.metrics.reload_total.values()) == done:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
        return await self.inner.poll_once(subscriptions, now)


@pytest.fixture
def server() -> Iterator[FakePolymarketServer]:
    with FakePolymarketServer(n_markets=2, price=lambda i: 0.50) as fake:
        yield fake


async def run_with_hup(
    server: FakePolymarketServer,
    holder: RulesHolder,
    script: dict[int, dict[str, float]],
    *,
    at: int,
    rewrite: Callable[[], Any],
    cycles: int = 4,
) -> tuple[ServiceStats, RecordingPublisher]:
    publisher = RecordingPublisher()
    markets = [m.condition_id for m in server.markets]
    async with open_polymarket_client(server.polymarket_config(max_retries=0)) as client:
        poller = HupPoller(MarketPoller(client, metadata_refresh_seconds=3600), holder, at, rewrite)
        with anyio.fail_after(20):
            stats = await run_service(
                store=InMemorySubscriptionStore(seed=markets),
                poller=poller,
                publisher=publisher,
                settings=ServiceSettings(
                    poll_interval_seconds=0.01, max_cycles=cycles, handle_signals=True
                ),
                clock=ScriptedClock(server, script),
                rules=holder,
            )
    return stats, publisher


async def test_sighup_swaps_valid_rules_for_the_next_snapshots(
    server: FakePolymarketServer, tmp_path: Path
) -> None:
    a, b = (m.condition_id for m in server.markets)
    path = rules_file(tmp_path, ONE_POLL)
    holder = RulesHolder.from_path(path)
    old_version = holder.current.version
    # Cycle index 1: a moves 10 points (old rules fire). Cycle 3: b moves 10 points, after
    # the reload to 30-point rules (nothing fires).
    stats, publisher = await run_with_hup(
        server,
        holder,
        {1: {a: 0.60}, 3: {b: 0.60}},
        at=3,
        rewrite=lambda: path.write_text(STRICT),
    )
    assert [e.market_id for e in publisher.events] == [a]
    assert publisher.events[0].rules_version == old_version
    assert holder.current.version == load_rules(path).version != old_version
    assert stats.reload_requests == 1
    assert holder.metrics.reload_total == {"success": 1, "failure": 0}


async def test_sighup_with_invalid_file_keeps_old_rules(
    server: FakePolymarketServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = (m.condition_id for m in server.markets)
    path = rules_file(tmp_path, ONE_POLL)
    holder = RulesHolder.from_path(path)
    old = holder.current
    _, publisher = await run_with_hup(
        server,
        holder,
        {1: {a: 0.60}, 3: {b: 0.60}},
        at=3,
        rewrite=lambda: path.write_text(BROKEN),
    )
    # Both moves fire: the old 4-point rules stayed in force.
    assert [e.market_id for e in publisher.events] == [a, b]
    assert {e.rules_version for e in publisher.events} == {old.version}
    assert holder.current is old
    assert holder.metrics.reload_total == {"success": 0, "failure": 1}
    assert f"{path}:3:" in caplog.text


async def test_reload_keeps_state_when_detection_parameters_are_unchanged(
    server: FakePolymarketServer, tmp_path: Path
) -> None:
    a = server.markets[0].condition_id
    path = rules_file(tmp_path, TWO_POLLS)
    holder = RulesHolder.from_path(path)
    # Cycle 1 opens a pending move of a (two polls needed); the reload (name and severity
    # only) happens before cycle 2, which confirms it under the new rules.
    stats, publisher = await run_with_hup(
        server,
        holder,
        {1: {a: 0.60}},
        at=3,
        rewrite=lambda: path.write_text(TWO_POLLS_RENAMED),
    )
    (event,) = publisher.events
    assert (event.rule, event.severity) == ("renamed_move", "big")
    assert event.baseline_yes_price == 0.50
    assert event.rules_version == holder.current.version
    assert stats.rule_resets == 0


async def test_a_reload_changing_the_window_loses_no_pending_move(
    server: FakePolymarketServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11: a SIGHUP changing `window` used to reset every market and lose the moves
    pending in that cycle. Now the markets are re-evaluated under the new window."""
    caplog.set_level(logging.INFO, logger="polymarket_kafka")
    a = server.markets[0].condition_id
    path = rules_file(tmp_path, TWO_POLLS)
    holder = RulesHolder.from_path(path)
    stats, publisher = await run_with_hup(
        server,
        holder,
        {1: {a: 0.60}},
        at=3,
        rewrite=lambda: path.write_text(TWO_POLLS_NEW_WINDOW),
    )
    # Cycle 1 opened a's move from 0.50; cycle 2, under the new window, confirms it.
    (event,) = publisher.events
    assert (event.market_id, event.baseline_yes_price, event.yes_price) == (a, 0.50, 0.60)
    assert event.rules_version == holder.current.version
    assert stats.rule_resets == 2  # both markets were tracked, and re-evaluated
    assert f"detection state of market {a} re-evaluated under new parameters" in caplog.text
