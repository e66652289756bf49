"""Loading `/prices-history` bodies and Gamma sidecars for `replay`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polymarket_kafka.replay.history import (
    HistoryError,
    load_history,
    load_market,
    market_for,
    parse_history,
    series_name,
    sidecar_path,
)

TRUMP = "0xdd22472e552920b8438158ea7238bfadfa4f736aa4cee91a6b86c39ead110917"
T0 = 1730851200  # 2024-11-06T00:00:00Z


def _body(*points: Any) -> dict[str, Any]:
    return {"history": list(points)}


def _write(path: Path, payload: object) -> Path:
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


# --- histories -----------------------------------------------------------------------------


def test_parses_numbers_and_numeric_strings_as_utc_points() -> None:
    series = parse_history(_body({"t": T0, "p": 0.58}, {"t": T0 + 3600, "p": "0.706"}), "h.json")
    assert [(p.at, p.price) for p in series.points] == [
        (datetime(2024, 11, 6, tzinfo=UTC), 0.58),
        (datetime(2024, 11, 6, 1, tzinfo=UTC), 0.706),
    ]
    assert series.name == "h"
    assert series.span_seconds == 3600.0
    assert series.median_step_seconds == 3600.0
    assert (series.duplicates_dropped, series.reordered) == (0, False)


def test_out_of_order_points_are_sorted_and_flagged() -> None:
    series = parse_history(
        _body({"t": T0 + 120, "p": 0.3}, {"t": T0, "p": 0.1}, {"t": T0 + 60, "p": 0.2}), "h"
    )
    assert [p.price for p in series.points] == [0.1, 0.2, 0.3]
    assert series.reordered


def test_duplicate_timestamps_keep_the_last_point_of_the_file_and_are_counted() -> None:
    series = parse_history(
        _body(
            {"t": T0, "p": 0.1},
            {"t": T0 + 60, "p": 0.2},
            {"t": T0, "p": 0.15},
            {"t": T0 + 60, "p": 0.25},
            {"t": T0 + 60, "p": 0.22},
        ),
        "h",
    )
    assert [p.price for p in series.points] == [0.15, 0.22]
    assert series.duplicates_dropped == 3


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "expected a CLOB /prices-history body"),
        ({"prices": []}, "expected a CLOB /prices-history body"),
        ({"history": {"t": 1}}, "history: expected a list"),
        ({"history": []}, "history is empty"),
        (_body({"t": T0, "p": 0.5}, [T0, 0.5]), "history[1]: expected an object"),
        (_body({"p": 0.5}), "history[0]: missing key 't'"),
        (_body({}), "missing key 't' and 'p'"),
        (_body({"t": T0, "p": "abc"}), "history[0]: p: not a number"),
        (_body({"t": T0, "p": None}), "history[0]: p: not a number"),
        (_body({"t": T0, "p": 1.5}), "outside [0, 1]"),
        (_body({"t": T0, "p": "-0.01"}), "outside [0, 1]"),
        (_body({"t": "1730851200", "p": 0.5}), "t must be unix seconds"),
        (_body({"t": True, "p": 0.5}), "t must be unix seconds"),
        (_body({"t": -5, "p": 0.5}), "t must be unix seconds"),
        (_body({"t": 1730851200.5, "p": 0.5}), "t must be whole unix seconds"),
        (_body({"t": 1730851200000, "p": 0.5}), "t=1730851200000 looks like milliseconds"),
        (_body({"t": float("inf"), "p": 0.5}), "t must be whole unix seconds"),
        (_body({"t": float("nan"), "p": 0.5}), "t must be unix seconds"),
    ],
)
def test_malformed_bodies_name_the_file_and_the_point(payload: object, message: str) -> None:
    with pytest.raises(HistoryError) as caught:
        parse_history(payload, "data/x.history.json")
    assert str(caught.value).startswith("data/x.history.json: ")
    assert message in str(caught.value)


def test_integral_float_timestamps_are_accepted() -> None:
    series = parse_history(_body({"t": float(T0), "p": 0.5}), "h")
    assert series.start == datetime(2024, 11, 6, tzinfo=UTC)
    assert series.median_step_seconds is None  # a single point has no step


def test_load_history_reports_unreadable_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match=r"absent\.history\.json: cannot read"):
        load_history(tmp_path / "absent.history.json")
    bad = tmp_path / "bad.history.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(HistoryError, match=r"bad\.history\.json: not JSON"):
        load_history(bad)


def test_load_history_names_the_series_after_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "fed-30min.history.json", _body({"t": T0, "p": 0.5}))
    series = load_history(path)
    assert (series.name, series.source) == ("fed-30min", str(path))


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=50),
            st.decimals(min_value=0, max_value=1, places=3).map(str),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_any_valid_body_loads_sorted_unique_with_the_last_price_per_time(
    raw: list[tuple[int, str]],
) -> None:
    series = parse_history(_body(*({"t": T0 + t, "p": p} for t, p in raw)), "h")
    times = [int(point.at.timestamp()) - T0 for point in series.points]
    assert times == sorted(set(times))
    last = dict(raw)  # a dict keeps the last value per key
    assert {int(p.at.timestamp()) - T0: p.price for p in series.points} == {
        t: float(p) for t, p in last.items()
    }
    assert series.duplicates_dropped == len(raw) - len(last)


# --- names ---------------------------------------------------------------------------------


def test_series_name_and_sidecar_path() -> None:
    assert series_name("a/b/pres-nc.history.json") == "pres-nc"
    assert series_name("prices.json") == "prices"
    assert sidecar_path("a/b/pres-nc.history.json") == Path("a/b/pres-nc.market.json")


# --- market metadata -----------------------------------------------------------------------

GAMMA_TRUMP = {
    "question": "Will Donald Trump win the 2024 US Presidential Election?",
    "conditionId": TRUMP,
    "outcomes": '["Yes", "No"]',
    "clobTokenIds": '["1", "2"]',
    "category": "Politics",
    "liquidityNum": 1250000.5,
    "volume": "3500000000",
}


def test_sidecar_gamma_item_is_parsed_with_parse_market(tmp_path: Path) -> None:
    history = _write(tmp_path / "trump.history.json", _body({"t": T0, "p": 0.5}))
    _write(tmp_path / "trump.market.json", GAMMA_TRUMP)
    market = market_for(history)
    assert market.market_id == TRUMP
    assert market.question.startswith("Will Donald Trump")
    assert (market.category, market.liquidity, market.volume) == ("Politics", 1250000.5, 3.5e9)
    assert market.defaults == ()
    assert market.source == str(tmp_path / "trump.market.json")


def test_placeholder_condition_id_and_missing_figures_are_reported(tmp_path: Path) -> None:
    history = _write(tmp_path / "nc.history.json", _body({"t": T0, "p": 0.5}))
    _write(
        tmp_path / "nc.market.json",
        {"question": "NC?", "conditionId": "unknown-pres2024-nc-trump", "category": "Politics"},
    )
    market = market_for(history)
    assert market.market_id == "unknown-pres2024-nc-trump"
    assert market.defaults == ("liquidity", "volume")


def test_malformed_gamma_lists_fall_back_to_a_lenient_reading(tmp_path: Path) -> None:
    # outcomes and clobTokenIds do not pair up: parse_market refuses the item, but the
    # fields a replay needs are still there.
    item = {
        "question": "Q?",
        "conditionId": "0xabc",
        "outcomes": '["Yes", "No"]',
        "clobTokenIds": '["1"]',
        "tags": [{"label": "Economy"}, "Fed"],
        "liquidity": "5000",
        "volumeNum": -3,
    }
    market = load_market(_write(tmp_path / "m.json", item), default_id="stem")
    assert (market.market_id, market.question) == ("0xabc", "Q?")
    assert market.tags == ("Economy", "Fed")
    assert market.category == "Economy"  # the first tag stands in for a missing category
    assert market.liquidity == 5000.0
    assert market.volume is None
    assert market.defaults == ("volume",)


@pytest.mark.parametrize("outcomes", ['["Yes", "No"]', '["Yes"]'])  # strict, then lenient
def test_the_condition_alias_names_the_market(tmp_path: Path, outcomes: str) -> None:
    item = {
        "question": "Q?",
        "condition": "0xabc",
        "outcomes": outcomes,
        "clobTokenIds": '["1", "2"]',
    }
    market = load_market(_write(tmp_path / "m.json", item), default_id="stem")
    assert market.market_id == "0xabc"
    assert "market_id" not in market.defaults


def test_lenient_reading_without_a_condition_id_uses_the_file_stem(tmp_path: Path) -> None:
    market = load_market(_write(tmp_path / "m.json", {"question": "Q?"}), default_id="stem")
    assert market.market_id == "stem"
    assert market.defaults == ("market_id", "category", "liquidity", "volume")


def test_without_any_metadata_every_field_is_a_default(tmp_path: Path) -> None:
    history = _write(tmp_path / "lonely.history.json", _body({"t": T0, "p": 0.5}))
    market = market_for(history)
    assert (market.market_id, market.question, market.source) == ("lonely", "", None)
    assert market.defaults == ("market_id", "question", "category", "liquidity", "volume")


def test_explicit_market_file_wins_over_the_sidecar(tmp_path: Path) -> None:
    history = _write(tmp_path / "trump.history.json", _body({"t": T0, "p": 0.5}))
    _write(tmp_path / "trump.market.json", {"conditionId": "sidecar"})
    explicit = _write(tmp_path / "other.json", [GAMMA_TRUMP])  # a one-item /markets array
    assert market_for(history, explicit).market_id == TRUMP


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{oops", "not JSON"),
        ("[]", "expected one Gamma market object, got a list of 0"),
        ('"0xabc"', "expected a Gamma market object"),
    ],
)
def test_unusable_market_files_are_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(HistoryError, match=message):
        load_market(path, default_id="x")


def test_an_unusable_sidecar_is_an_error_not_silently_ignored(tmp_path: Path) -> None:
    history = _write(tmp_path / "x.history.json", _body({"t": T0, "p": 0.5}))
    (tmp_path / "x.market.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(HistoryError, match=r"x\.market\.json"):
        market_for(history)
    with pytest.raises(HistoryError, match="cannot read"):
        market_for(history, tmp_path / "absent.json")
