"""`run_service` keeps its `ServiceHealth` up to date and runs background tasks as stages.

Polymarket is the fake HTTP server on loopback, subscriptions the in-process store, the
publisher a recording double. The health object is read from inside the service, by a
background task, the way the HTTP server reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import anyio
import pytest

from polymarket_kafka.models import PolymarketEvent
from polymarket_kafka.ops.health import HealthReport, ServiceHealth, StageState
from polymarket_kafka.polymarket import open_polymarket_client
from polymarket_kafka.polymarket.poller import MarketPoller
from polymarket_kafka.service.pipeline import run_service
from polymarket_kafka.service.ports import SubscriptionStore
from polymarket_kafka.service.stages import Stopper
from polymarket_kafka.service.stats import ServiceSettings, ServiceStats
from polymarket_kafka.subscriptions import ActiveSubscriptions
from polymarket_kafka.testing.fake_polymarket import FakePolymarketServer
from polymarket_kafka.testing.memory_store import InMemorySubscriptionStore

pytestmark = pytest.mark.anyio

PIPELINE = ["reloader", "detect", "deliver", "refresh_subscriptions", "poll_markets"]
#: The probes stop the service just after a poll cycle finished: with this much time to the
#: next one, no request is in flight when the stop cancels the poller. (On trio, httpx leaves
#: a cancelled request's body iterator to the garbage collector, which warns: encode/httpx#3686.)
POLL_SECONDS = 0.2


@dataclass
class RecordingPublisher:
    events: list[PolymarketEvent] = field(default_factory=list)

    async def publish(self, event: PolymarketEvent, state: object = None) -> None:
        self.events.append(event)


class FlakyStore(InMemorySubscriptionStore):
    """Fails its first `failures` refreshes, then serves the `seed` markets."""

    def __init__(self, seed: list[str], *, failures: int) -> None:
        super().__init__(seed)
        self.failures = failures
        self.calls = 0

    async def active(self) -> ActiveSubscriptions:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"MongoDB down (attempt {self.calls})")
        return await super().active()


@pytest.fixture
def server() -> Iterator[FakePolymarketServer]:
    with FakePolymarketServer(n_markets=3, price=lambda i: 0.50) as fake:
        yield fake


def clock() -> datetime:
    return datetime(2024, 11, 5, 23, 0, tzinfo=UTC)


async def run(
    server: FakePolymarketServer,
    health: ServiceHealth,
    *,
    background: list[Callable[[], Awaitable[None]]],
    store: SubscriptionStore | None = None,
    stopper: Stopper | None = None,
    max_cycles: int | None = None,
    stats: ServiceStats | None = None,
) -> None:
    markets = [m.condition_id for m in server.markets]
    async with open_polymarket_client(server.polymarket_config(max_retries=0)) as client:
        await run_service(
            stats=stats,
            store=store or InMemorySubscriptionStore(seed=markets),
            poller=MarketPoller(client, metadata_refresh_seconds=3600),
            publisher=RecordingPublisher(),
            settings=ServiceSettings(
                poll_interval_seconds=POLL_SECONDS,
                subscription_refresh_seconds=0.01,
                max_cycles=max_cycles,
                handle_signals=False,
            ),
            clock=clock,
            health=health,
            background=background,
            stopper=stopper,
        )


async def wait_until(
    health: ServiceHealth, predicate: Callable[[HealthReport], bool]
) -> HealthReport:
    while not predicate(report := health.ready(anyio.current_time())):  # noqa: ASYNC110
        await anyio.sleep(0.005)
    return report


async def test_ready_after_the_first_poll_then_stopping_then_stopped(
    server: FakePolymarketServer,
) -> None:
    health = ServiceHealth()
    stopper = Stopper()
    seen: dict[str, object] = {}

    async def probe() -> None:
        report = await wait_until(health, lambda r: r.ok)
        seen["ready"] = report.to_json()
        seen["stages"] = dict(health.stages)
        seen["live"] = health.live(anyio.current_time()).ok
        stopper.stop()
        seen["ready_after_stop"] = health.ready(anyio.current_time()).to_json()
        seen["live_after_stop"] = health.live(anyio.current_time()).ok
        await anyio.sleep_forever()  # until the drained service cancels it

    with anyio.fail_after(30):
        await run(server, health, background=[probe], stopper=stopper)

    assert seen["stages"] == dict.fromkeys(["probe", *PIPELINE], StageState.RUNNING)
    assert health.poll_interval_seconds == POLL_SECONDS  # taken from the settings
    ready = seen["ready"]
    assert isinstance(ready, dict)
    assert ready["components"]["subscriptions"]["detail"] == "3 active markets"
    assert ready["components"]["polling"]["status"] == "ok"
    assert "kafka" not in ready["components"]  # only the application adds that check
    assert seen["live"] is True
    after_stop = seen["ready_after_stop"]
    assert isinstance(after_stop, dict)
    assert after_stop["status"] == "fail"
    assert after_stop["components"]["stages"]["detail"] == "stopping: draining the pipeline"
    assert seen["live_after_stop"] is True
    # Drained and returned: every stage stopped, none crashed, still "live" (stopping).
    assert set(health.stages.values()) == {StageState.STOPPED}
    assert health.stopping
    assert health.live(anyio.current_time()).ok


async def test_subscription_failures_then_recovery(server: FakePolymarketServer) -> None:
    markets = [m.condition_id for m in server.markets]
    store = FlakyStore(markets[:2], failures=1)
    health = ServiceHealth()
    stopper = Stopper()
    seen: list[dict[str, object]] = []

    async def probe() -> None:
        failing = await wait_until(
            health, lambda r: r.components["subscriptions"].extra["consecutive_failures"] == 1
        )
        seen.append(failing.to_json())
        seen.append((await wait_until(health, lambda r: r.ok)).to_json())
        stopper.stop()

    with anyio.fail_after(30):
        await run(server, health, background=[probe], store=store, stopper=stopper)

    failing, recovered = (report["components"] for report in seen)
    assert isinstance(failing, dict)
    assert isinstance(recovered, dict)
    assert failing["subscriptions"]["status"] == "fail"
    assert failing["subscriptions"]["detail"] == (
        "subscriptions not loaded; latest refresh failed (1 in a row): MongoDB down (attempt 1)"
    )
    assert failing["polling"]["detail"] == "no successful poll cycle yet"
    assert recovered["subscriptions"]["detail"] == "2 active markets"
    # The probe returned after the stop request: ending while stopping is not a failure.
    assert health.stages["probe"] is StageState.STOPPED
    assert health.live(anyio.current_time()).ok


async def test_failed_poll_cycles_are_reported(server: FakePolymarketServer) -> None:
    class BrokenPoller:
        async def poll_once(self, subscriptions: object, now: datetime) -> object:
            raise RuntimeError("the poller broke")

    health = ServiceHealth()
    stopper = Stopper()
    seen: list[dict[str, object]] = []

    async def probe() -> None:
        report = await wait_until(health, lambda r: "last_error" in r.components["polling"].extra)
        seen.append(report.to_json())
        stopper.stop()

    with anyio.fail_after(30):
        await run_service(
            store=InMemorySubscriptionStore(seed=[server.markets[0].condition_id]),
            poller=BrokenPoller(),  # type: ignore[arg-type]
            publisher=RecordingPublisher(),
            settings=ServiceSettings(poll_interval_seconds=0.01, handle_signals=False),
            clock=clock,
            health=health,
            background=[probe],
            stopper=stopper,
        )
    polling = seen[0]["components"]["polling"]  # type: ignore[index]
    assert polling["status"] == "fail"
    assert polling["detail"] == (
        "no successful poll cycle yet; latest cycle failed: RuntimeError: the poller broke"
    )


async def test_a_crashing_background_task_stops_the_service(
    server: FakePolymarketServer,
) -> None:
    health = ServiceHealth()

    async def broken_server() -> None:
        await wait_until(health, lambda r: r.ok)
        raise OSError("cannot serve health/metrics on 127.0.0.1:9464: Address already in use")

    with (
        anyio.fail_after(30),
        pytest.RaisesGroup(pytest.RaisesExc(OSError, match="Address already in use")),
    ):
        await run(server, health, background=[broken_server])
    assert health.stages["broken_server"] is StageState.CRASHED
    live = health.live(anyio.current_time())
    assert not live.ok
    assert live.components["stages"].detail == (
        "broken_server crashed: OSError: cannot serve health/metrics on 127.0.0.1:9464: "
        "Address already in use"
    )


async def test_max_cycles_marks_stopping_and_partials_are_named(
    server: FakePolymarketServer,
) -> None:
    health = ServiceHealth()

    async def idle(label: str) -> None:
        await anyio.sleep_forever()

    with anyio.fail_after(30):
        await run(server, health, background=[partial(idle, "x")], max_cycles=2)
    assert health.stopping
    assert health.stages["idle"] is StageState.STOPPED
    assert health.live(anyio.current_time()).ok
    assert not health.ready(anyio.current_time()).ok


async def test_without_health_nothing_changes(server: FakePolymarketServer) -> None:
    markets = [m.condition_id for m in server.markets]
    async with open_polymarket_client(server.polymarket_config(max_retries=0)) as client:
        stats = await run_service(
            store=InMemorySubscriptionStore(seed=markets),
            poller=MarketPoller(client, metadata_refresh_seconds=3600),
            publisher=RecordingPublisher(),
            settings=ServiceSettings(
                poll_interval_seconds=0.01, max_cycles=2, handle_signals=False
            ),
            clock=clock,
        )
    assert stats.poll_cycles == 2


async def test_polymarket_down_fails_the_cycles_until_it_answers_again(
    server: FakePolymarketServer, caplog: pytest.LogCaptureFixture
) -> None:
    # One request per cycle (no retries): cycles 1-3 get a 503 from /midpoints, 4-5 do not.
    server.fail_next("/midpoints", 503, body={"error": "upstream down"}, times=3)
    health, stats = ServiceHealth(), ServiceStats()
    seen: list[dict[str, object]] = []

    async def probe() -> None:
        report = await wait_until(health, lambda r: "last_error" in r.components["polling"].extra)
        seen.append(report.to_json())
        await anyio.sleep_forever()

    with (
        anyio.fail_after(30),
        caplog.at_level(logging.WARNING, "polymarket_kafka.service"),
    ):
        await run(server, health, background=[probe], max_cycles=5, stats=stats)

    polling = seen[0]["components"]["polling"]  # type: ignore[index]
    assert polling["status"] == "fail"
    assert polling["detail"] == (
        "no successful poll cycle yet; latest cycle failed: Polymarket unavailable: "
        f"midpoints unavailable: {server.url}/midpoints unavailable after 1 attempt(s): "
        "HTTP 503: upstream down"
    )
    assert (stats.poll_unavailable, stats.poll_cycles, stats.poll_failures) == (3, 2, 0)
    assert stats.snapshots == 3 * 2
    assert stats.last_poll_at is not None
    # One line per unavailable cycle, not one per market.
    outage_lines = [r.getMessage() for r in caplog.records if "Polymarket unavailable" in r.message]
    assert len(outage_lines) == 3
    assert outage_lines[0].startswith("cycle 1: Polymarket unavailable, 3 market(s) not priced: ")
    assert not [r for r in caplog.records if "skipped market" in r.message]
    # Answered again: the last cycle succeeded and cleared the error.
    polling_now = health.ready(anyio.current_time()).to_json()["components"]["polling"]
    assert "last_error" not in polling_now


async def test_a_set_of_closed_markets_keeps_polling_healthy(
    server: FakePolymarketServer,
) -> None:
    # Closed markets are priced from Gamma, without a midpoint request: nothing is unavailable.
    for market in server.markets:
        server.close_market(market.condition_id)
    health, stats = ServiceHealth(), ServiceStats()

    with anyio.fail_after(30):
        await run(server, health, background=[], max_cycles=3, stats=stats)

    assert (stats.poll_cycles, stats.poll_unavailable, stats.poll_failures) == (3, 0, 0)
    assert server.request_count("POST /midpoints") == 0
    polling = health.ready(anyio.current_time()).components["polling"]
    assert "age_seconds" in polling.extra  # a successful cycle was recorded...
    assert "last_error" not in polling.extra  # ...and no failed one
