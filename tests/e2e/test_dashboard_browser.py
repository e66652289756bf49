"""The operator's dashboard in a real browser: Debian's headless Chromium, through selenium.

* The demo (real broker, recorded election night) serves the page on a free port; the page,
  opened as soon as the server listens (normally seconds before the night's first event),
  comes to show the four events of the night without reloading, the three markets with their
  sparklines and the feed's health. Its screenshot is saved with the test's files, and to
  docs/dashboard.png (the README shows it) with `UPDATE_SCREENSHOT=1`.
  How early the browser opens depends on the machine's load, so the proof that
  updates arrive live is the second test's.
* Strings from Polymarket are rendered as text: a question holding `<script>` and
  `<img onerror>` shows as those characters, and creates no element. The same page, kept
  open, takes a new event and a new price through the live channel without reloading.

Selenium drives the browser from a worker thread (`anyio.to_thread`): its calls block, and
the server under test runs on this test's event loop. Everything waits generously (the suite
runs on every core of a busy 2-core machine); nothing sleeps a fixed time. Skipped, with the
reason, where Chromium or chromedriver is not installed (`.ci/run` installs them).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from polymarket_kafka.models import ConvictionDirection, MarketSnapshot
from polymarket_kafka.ops.board import MarketBoard
from polymarket_kafka.ops.dashboard import Dashboard
from polymarket_kafka.ops.health import ComponentStatus, ServiceHealth
from polymarket_kafka.ops.http_server import serve_ops
from polymarket_kafka.ruleset import load_rules
from polymarket_kafka.service.reloader import RulesHolder
from polymarket_kafka.service.stats import ServiceStats
from polymarket_kafka.testing.demo import run_demo
from tests.factories import make_event

TRUMP = "0xdd22472e552920b8438158ea7238bfadfa4f736aa4cee91a6b86c39ead110917"
HARRIS = "0xc6485bb7ea46d7bb89beb9c91e7572ecfc72a6273789496f78bc5e989e4d1638"
FED = "0x4319532e181605cb15b1bd677759a3bc7f7394b2fdf145195b700eeaedfd5221"
QUESTIONS = {
    TRUMP: "Will Donald Trump win the 2024 US Presidential Election?",
    HARRIS: "Will Kamala Harris win the 2024 US Presidential Election?",
    FED: "Fed rate hike in 2025?",
}
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
#: Every wait for the page: far above what it needs (about a second), for a loaded machine.
WAIT_SECONDS = 30.0
VIEWPORT = (1400, 1000)


def _executable(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or shutil.which(name, path="/usr/bin")
        if found:
            return found
    return None


@pytest.fixture
def chrome() -> Iterator[WebDriver]:
    """Headless Chromium driven by chromedriver (Debian's `chromium`, `chromium-driver`)."""
    driver_path = _executable("chromedriver")
    browser_path = _executable("chromium", "chromium-browser", "google-chrome")
    if driver_path is None or browser_path is None:
        pytest.skip(
            "needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver;"
            f" found chromedriver={driver_path}, chromium={browser_path})"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        "--lang=en-US",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver path is given: selenium looks nothing up and downloads nothing.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(60)
        yield driver
    finally:
        driver.quit()


def _wait(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    """`condition` once it holds; on a timeout, the page's text says what it showed."""
    wait = WebDriverWait(
        driver,
        WAIT_SECONDS,
        poll_frequency=0.2,
        ignored_exceptions=[StaleElementReferenceException],
    )
    try:
        return wait.until(condition)
    except TimeoutException:
        body = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"timed out waiting for {what}; the page shows:\n{body}") from None


#: What the page shows, read in one script: the page re-renders on every update, so element
#: handles held across several WebDriver calls could go stale in between.
_SNAPSHOT = """
const all = (sel, root) => [...(root || document).querySelectorAll(sel)];
const one = (sel, root) => (root || document).querySelector(sel);
return {
  mode: one("#live").dataset.mode,
  kept: window.__kept === undefined ? null : window.__kept,
  pwned: window.__pwned === undefined ? null : String(window.__pwned),
  injected: all("#markets img, #markets script, #events img, #events script, #health img, "
    + "#health i, #health b, #markets i").length,
  events: all("#events .event").map((e) => ({
    id: e.dataset.eventId, market: e.dataset.marketId, classes: e.className,
    href: one("a", e).getAttribute("href"), link: one("a", e).textContent, text: e.innerText,
    prices: one(".prices", e).textContent,
  })),
  rows: all("#markets tr.market").map((r) => ({
    market: r.dataset.marketId, id: r.id, question: one("td.question .q", r).textContent,
    price: one("td.price", r).textContent, text: r.innerText, classes: r.className,
    spark: all("svg.spark polyline", r).map((p) => p.getAttribute("points")),
  })),
  components: all("#health .component").map((c) => ({
    name: c.dataset.name, status: c.dataset.status, text: c.innerText,
  })),
  feed: one("#feed").innerText,
  categories: all("#filter-category option").map((o) => o.textContent),
};
"""


def _snapshot(driver: WebDriver) -> dict[str, Any]:
    return dict(driver.execute_script(_SNAPSHOT))


def _severe_logs(driver: WebDriver) -> list[dict[str, Any]]:
    """The browser console's errors (a failed request, a script error, a CSP violation)."""
    log: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [e for e in log if e.get("level") == "SEVERE"]


# -- the demo ------------------------------------------------------------------------------


def _trump_above_90(driver: WebDriver) -> bool:
    rows = {row["market"]: row for row in _snapshot(driver)["rows"]}
    price = rows.get(TRUMP, {}).get("price", "0%")
    return float(str(price).rstrip("%") or 0) > 90.0


def _watch_the_demo(driver: WebDriver, url: str) -> dict[str, Any]:
    """Open the page while the demo runs; wait for election night; read what it shows."""
    driver.get(url)
    # A mark in the page's JavaScript state: still there at the end, the page never reloaded.
    driver.execute_script("window.__kept = 'no reload'")
    _wait(driver, lambda d: len(_snapshot(d)["events"]) == 4, "the 4 events of election night")
    _wait(driver, lambda d: _snapshot(d)["mode"] == "live", "the live channel")
    _wait(driver, lambda d: len(_snapshot(d)["components"]) >= 3, "the health components")
    _wait(driver, lambda d: len(_snapshot(d)["rows"]) == 3, "the three markets")
    # The market list follows the events within its rebuild interval (a second or so).
    _wait(driver, _trump_above_90, "Trump's row at the night's price")
    seen = _snapshot(driver)
    seen["severe"] = _severe_logs(driver)

    # The screenshot: the viewport at VIEWPORT, as first opened.
    outer = driver.execute_script(
        "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]"
    )
    driver.set_window_size(VIEWPORT[0] + outer[0], VIEWPORT[1] + outer[1])
    seen["png"] = driver.get_screenshot_as_png()

    # An event's link leads to its market's row, highlighted.
    target = seen["events"][0]["href"].lstrip("#")

    def click_first_event(d: WebDriver) -> bool:
        d.find_element(By.CSS_SELECTOR, "#events .event a").click()
        return True

    _wait(driver, click_first_event, "a click on the first event")
    _wait(
        driver,
        lambda d: "highlight" in (d.find_element(By.ID, target).get_attribute("class") or ""),
        "the linked row to be highlighted",
    )
    seen["linked"] = target

    driver.get("about:blank")  # closes the live channel before the server stops
    return seen


@pytest.mark.broker
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_the_demo_dashboard_shows_election_night_live(
    chrome: WebDriver, tmp_path: Path
) -> None:
    listening = anyio.Event()
    ports: list[int] = []
    done = anyio.Event()  # the demo keeps serving the page until the browser is done
    result: list[tuple[object, int]] = []

    def on_listening(port: int) -> None:
        ports.append(port)
        listening.set()

    async def demo() -> None:
        result.append(
            await run_demo(
                interval_seconds=0.3,
                out=io.StringIO(),
                handle_signals=False,
                http_port=0,
                on_listening=on_listening,
                serve_until=done,
            )
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(demo)
        try:
            with anyio.fail_after(120):
                await listening.wait()
            url = f"http://127.0.0.1:{ports[0]}/"
            seen = await anyio.to_thread.run_sync(_watch_the_demo, chrome, url)
        finally:
            done.set()

    assert result and result[0][1] == 4  # the demo itself went as always
    assert seen["kept"] == "no reload"

    events = seen["events"]
    assert sorted(e["market"] for e in events) == sorted([TRUMP, TRUMP, HARRIS, HARRIS])
    for event in events:
        assert event["link"] == QUESTIONS[event["market"]]
        assert event["href"] == f"#market-{event['market']}"
        assert "→" in event["text"] and "conviction_move" in event["text"]
        assert ("up" if event["market"] == TRUMP else "down") in event["classes"].split()
    assert sum("Trump" in e["text"] for e in events) == 2
    assert sum("Harris" in e["text"] for e in events) == 2
    # The night's moves as the README tells them, newest first.
    moves = {(e["market"], e["prices"]) for e in events}
    assert moves == {
        (TRUMP, "58.0% → 71.1%"),
        (TRUMP, "71.1% → 92.5%"),
        (HARRIS, "42.1% → 28.8%"),
        (HARRIS, "28.8% → 6.8%"),
    }
    assert {e["prices"] for e in events[:2]} == {"71.1% → 92.5%", "28.8% → 6.8%"}

    rows = {r["market"]: r for r in seen["rows"]}
    assert set(rows) == {TRUMP, HARRIS, FED}
    for market_id, row in rows.items():
        assert row["id"] == f"market-{market_id}"
        assert row["question"] == QUESTIONS[market_id]
        assert market_id in row["text"]
        assert len(row["spark"]) == 1
        assert len(row["spark"][0].split()) >= 2, row["spark"]
    # By the end of the night (how late depends on when the page was read) Trump is >90%.
    assert float(rows[TRUMP]["price"].rstrip("%")) > 90.0, rows[TRUMP]["price"]
    assert seen["linked"] in {f"market-{TRUMP}", f"market-{HARRIS}"}

    components = {c["name"]: c for c in seen["components"]}
    assert {"kafka", "subscriptions", "polling", "stream", "stages"} <= set(components)
    for component in components.values():
        assert component["status"] in {"ok", "fail"}
        assert ("up" if component["status"] == "ok" else "down") in component["text"].split()
    assert load_rules(Path("rules/default.yaml")).version in seen["feed"]
    assert seen["severe"] == [], json.dumps(seen["severe"])

    # Saved with the test's files; `UPDATE_SCREENSHOT=1` also refreshes the README's copy (a
    # run's bytes differ: the page shows when it last refreshed).
    screenshot = tmp_path / "dashboard.png"
    screenshot.write_bytes(seen["png"])
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.write_bytes(seen["png"])


# -- untrusted strings, and the live channel -----------------------------------------------

EVIL_ID = "0x" + "ab" * 32
EVIL_QUESTION = (
    "Will <script>window.__pwned = 1</script> "
    '<img src=x onerror="window.__pwned = 2"> & "quotes" win?'
)
EVIL_CATEGORY = "<img src=x onerror=alert(1)>"


def _read_untrusted(driver: WebDriver, url: str) -> dict[str, Any]:
    driver.get(url)
    driver.execute_script("window.__kept = 'no reload'")
    _wait(driver, lambda d: _snapshot(d)["rows"], "the market row")
    _wait(driver, lambda d: _snapshot(d)["components"], "the health components")
    _wait(driver, lambda d: _snapshot(d)["mode"] == "live", "the live channel")
    return _snapshot(driver)


def _read_live_update(driver: WebDriver, event_id: str) -> dict[str, Any]:
    def updated(d: WebDriver) -> dict[str, Any] | None:
        seen = _snapshot(d)
        arrived = [e["id"] for e in seen["events"]] == [event_id]
        return seen if arrived and seen["rows"][0]["price"] == "50.0%" else None

    seen: dict[str, Any] = _wait(driver, updated, "the new price and event, live")
    seen["severe"] = _severe_logs(driver)
    driver.get("about:blank")  # closes the live channel before the server stops
    return seen


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_market_strings_are_text_and_changes_arrive_live(chrome: WebDriver) -> None:
    now = datetime.now(UTC)
    board = MarketBoard()

    def observe(price: float, taken_at: datetime) -> None:
        board.observe(
            MarketSnapshot(
                market_id=EVIL_ID,
                question=EVIL_QUESTION,
                yes_price=price,
                taken_at=taken_at,
                category=EVIL_CATEGORY,
                tags=("<b>tag</b>",),
                liquidity=25_000.0,
                volume=1_000_000.0,
                spread=0.01,
            )
        )

    observe(0.40, now - timedelta(minutes=2))
    observe(0.42, now - timedelta(minutes=1))
    health = ServiceHealth(poll_interval_seconds=30.0)
    health.add_check("kafka", lambda: ComponentStatus(True, "<i>1/1</i> brokers up"))
    dashboard = Dashboard(board, health, RulesHolder(), ServiceStats(), lambda: datetime.now(UTC))
    serve = partial(
        serve_ops,
        "127.0.0.1",
        0,
        health=health,
        registry=CollectorRegistry(),
        dashboard=dashboard,
    )
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve)
        url = f"http://127.0.0.1:{port}/"
        shown = await anyio.to_thread.run_sync(_read_untrusted, chrome, url)

        # Something changes while the page is open: a new price, then an event.
        observe(0.50, datetime.now(UTC))
        event = make_event(
            event_id=str(uuid.uuid4()),
            market_id=EVIL_ID,
            question=EVIL_QUESTION,
            yes_price=0.5,
            no_price=0.5,
            baseline_yes_price=0.4,
            price_change=0.1,
            abs_price_change=0.1,
            direction=ConvictionDirection.TOWARD_YES,
        )
        board.published(event)
        updated = await anyio.to_thread.run_sync(_read_live_update, chrome, event.event_id)
        tg.cancel_scope.cancel()

    # The question, the category and a health detail are shown as the characters they are...
    row = shown["rows"][0]
    assert row["question"] == EVIL_QUESTION
    assert EVIL_CATEGORY in row["text"]
    assert EVIL_CATEGORY in shown["categories"]
    kafka = next(c for c in shown["components"] if c["name"] == "kafka")
    assert "<i>1/1</i> brokers up" in kafka["text"]
    # ... and made no element, ran nothing.
    assert shown["injected"] == 0 and shown["pwned"] is None
    assert row["price"] == "42.0%"

    # The page took the change through the live channel, without reloading.
    assert updated["kept"] == "no reload" and updated["mode"] == "live"
    event = updated["events"][0]
    assert event["link"] == EVIL_QUESTION
    assert "40.0% → 50.0%" in event["text"]
    assert len(updated["rows"][0]["spark"][0].split()) == 3
    assert updated["injected"] == 0 and updated["pwned"] is None
    assert updated["severe"] == [], json.dumps(updated["severe"])
