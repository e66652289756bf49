"""The embedded demo (README command 1): real broker, recorded Polymarket session."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polymarket_kafka.ruleset import load_rules
from polymarket_kafka.testing.demo import (
    DEFAULT_CASSETTE,
    DEFAULT_CHANNEL_CASSETTE,
    DEMO_START,
    InvalidCassetteError,
    SteppingClock,
    channel_cycles,
    demo_market_ids,
    midpoint_cycles,
    run_demo,
)
from tests.component.test_cassette_transport import load_generator

TRUMP = "0xdd22472e552920b8438158ea7238bfadfa4f736aa4cee91a6b86c39ead110917"
HARRIS = "0xc6485bb7ea46d7bb89beb9c91e7572ecfc72a6273789496f78bc5e989e4d1638"
FED = "0x4319532e181605cb15b1bd677759a3bc7f7394b2fdf145195b700eeaedfd5221"
#: Calm synthetic hours before the ten recorded ones (cassettes/make_cassettes.py says why).
LEAD_IN: int = load_generator().DEMO_LEAD_IN

pytestmark = pytest.mark.broker


def test_demo_cassette_describes_three_real_markets() -> None:
    assert sorted(demo_market_ids(DEFAULT_CASSETTE)) == sorted([TRUMP, HARRIS, FED])
    assert midpoint_cycles(DEFAULT_CASSETTE) == LEAD_IN + 10


def test_stepping_clock() -> None:
    from datetime import UTC, datetime, timedelta

    clock = SteppingClock(DEMO_START, timedelta(hours=1))
    assert clock.current() == DEMO_START  # before the first call
    assert [clock(), clock()] == [DEMO_START, DEMO_START + timedelta(hours=1)]
    assert clock.current() == DEMO_START + timedelta(hours=1)  # peeking does not step
    # After the lead-in, the first recorded cycle is election night 2024, 23:00 UTC.
    assert DEMO_START + timedelta(hours=LEAD_IN) == datetime(2024, 11, 5, 23, tzinfo=UTC)


@pytest.mark.anyio
async def test_demo_publishes_and_reads_back_the_election_night_moves() -> None:
    out = io.StringIO()
    stats, read_back = await run_demo(interval_seconds=0.01, out=out, handle_signals=False)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert read_back == stats.events_acknowledged == len(events) == 4
    assert stats.everything_delivered
    assert stats.poll_cycles == LEAD_IN + 10
    assert {e["market_id"] for e in events} == {TRUMP, HARRIS}  # the calm Fed market is silent
    # The calm lead-in day is silent: every event is on election night.
    assert {e["timestamp"] for e in events} == {
        "2024-11-06T03:00:00+00:00",
        "2024-11-06T05:00:00+00:00",
    }
    trump = [(e["baseline_yes_price"], e["yes_price"]) for e in events if e["market_id"] == TRUMP]
    # rules/default.yaml: each move is confirmed on the next hourly poll before it fires, and
    # must stand out from the market's own volatility (`volatility`), learnt since the lead-in.
    assert trump == [(0.58, 0.711), (0.711, 0.9245)]
    assert [e["severity"] for e in events if e["market_id"] == TRUMP] == ["major", "extreme"]
    harris = [(e["baseline_yes_price"], e["yes_price"]) for e in events if e["market_id"] == HARRIS]
    assert harris == [(0.4215, 0.288), (0.288, 0.068)]
    assert {e["rules_version"] for e in events} == {load_rules("rules/default.yaml").version}
    assert all(e["direction"] == "toward_no" for e in events if e["market_id"] == HARRIS)
    assert all(e["published_at"] for e in events)
    # The moves came through the market channel (each hour's frames before its REST poll),
    # their prices as REST reported them, 2 s old by Polymarket's clock.
    assert {(e["price_source"], e["price_age_seconds"]) for e in events} == {("ws", 2.0)}
    frames = channel_cycles(DEFAULT_CHANNEL_CASSETTE)
    messages = sum(
        len(json.loads(f)) if f.startswith("[") else 1 for c in frames.values() for f in c
    )
    assert messages > len(frames)  # arrays and single objects, as live
    # One streamed snapshot per market an hour's frames touch (the first hour's one frame is
    # an array of the three books), every one handed over.
    assert stats.snapshots_streamed == 3 + sum(len(c) for k, c in frames.items() if k > 1)


def test_demo_channel_cassette_follows_the_rest_cassette() -> None:
    """Every streamed frame carries the price REST reports at that cycle (the midpoint of
    its book, or the server's best bid and ask)."""
    from polymarket_kafka.polymarket.stream.frames import decode_frame
    from polymarket_kafka.polymarket.stream.quotes import Quotes

    generator = load_generator()
    prices = generator._demo_prices()
    assets = [generator.TRUMP_YES, generator.HARRIS_YES, generator.FED_YES]
    quotes = Quotes()
    for asset in assets:
        quotes.track(asset)
    for cycle, frames in sorted(channel_cycles(DEFAULT_CHANNEL_CASSETTE).items()):
        for frame in frames:
            decoded = decode_frame(frame)
            assert decoded.errors == []
            for message in decoded.messages:
                quotes.apply(message)
        for asset, expected in zip(assets, prices[cycle], strict=True):
            priced = quotes.price(asset)
            assert priced is not None
            assert priced[0] == pytest.approx(expected, abs=1e-9), (cycle, asset)


def test_invalid_channel_cassette_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "channel.yaml"
    for text in ("[not: yaml", "version: 2\nfirst_cycle: 1\ncycles: []\n", "cycles: 3\n"):
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(InvalidCassetteError, match="not a version-1 list"):
            channel_cycles(bad)
    with pytest.raises(InvalidCassetteError):
        channel_cycles(tmp_path / "missing.yaml")


@pytest.mark.anyio
async def test_demo_with_a_missing_cassette_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="demo cassette not found"):
        await run_demo(cassette=tmp_path / "nope.yaml", handle_signals=False)


def test_demo_command_prints_events_and_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "polymarket_kafka", "demo", "--interval", "0.01"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HTTP_PORT": "0"},  # any free port: parallel tests never clash
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert all(json.loads(line)["source"] == "polymarket-kafka" for line in lines)
    summary = "4 events detected, 4 acknowledged by Kafka, 4 read back from the broker"
    assert summary in result.stderr


def test_demo_command_with_missing_cassette_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "polymarket_kafka", "demo", "--cassette", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "demo cassette not found" in result.stderr
