"""Scoring replayed events against labelled moments (pure), and the labels CSV reader."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from polymarket_kafka.replay.labels import (
    LabelsError,
    SeriesFacts,
    format_scorecard,
    parse_labels,
    read_labels,
    score,
    series_key,
)

HEADER = "label_id,kind,utc_time,utc_precision,what,series,observed_move,sources,source_quality\n"
T = datetime(2024, 11, 2, 23, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _labels(*rows: str) -> str:
    return HEADER + "".join(row + "\n" for row in rows)


def _facts(
    key: str,
    *events: datetime,
    step: float = 3600.0,
    start: datetime = T - 30 * 24 * HOUR,
    end: datetime = T + 30 * 24 * HOUR,
) -> SeriesFacts:
    return SeriesFacts(key, start, end, step, tuple(events))


# --- reading -------------------------------------------------------------------------------


def test_reads_the_shared_labels_shape() -> None:
    labels = parse_labels(
        _labels(
            'L06,event,2024-11-02T23:00Z,exact,Selzer poll,national;states-hourly/*,"a, b",x,news',
            "C1,calm,2024-08-23T19:00Z/2024-09-06T16:00Z,333 h,calm,national,r,n/a,derived",
        )
    )
    event, calm = labels
    assert (event.label_id, event.kind, event.at) == ("L06", "event", T)
    assert event.series == ("national", "states-hourly/*")
    assert event.what == "Selzer poll"
    assert event.until is None
    assert calm.kind == "calm"
    assert (calm.at, calm.until) == (
        datetime(2024, 8, 23, 19, tzinfo=UTC),
        datetime(2024, 9, 6, 16, tzinfo=UTC),
    )


def test_every_bad_row_is_reported_with_its_line() -> None:
    text = _labels(
        "A,event,2024-11-02T23:00Z,,,s,,,",
        "B,rumour,2024-11-02T23:00Z,,,s,,,",
        "C,event,yesterday,,,s,,,",
        "D,calm,2024-11-02T23:00Z,,,s,,,",
        "E,calm,2024-11-03T00:00Z/2024-11-02T00:00Z,,,s,,,",
        "F,negative,2024-11-02T23:00Z,,,,,,",
        "A,negative,2024-11-02T23:00Z,,,s,,,",
        ",event,2024-11-02T23:00Z,,,s,,,",
    )
    with pytest.raises(LabelsError) as caught:
        parse_labels(text, "labels.csv")
    lines = str(caught.value).splitlines()
    assert lines == [
        "labels.csv:3: label B: unknown kind 'rumour' (expected one of event, negative, "
        "spike_no_news, calm, candidate, context)",
        "labels.csv:4: label C: utc_time 'yesterday' is not an ISO-8601 time",
        "labels.csv:5: label D: a calm label needs utc_time START/END, got '2024-11-02T23:00Z'",
        "labels.csv:6: label E: calm window ends before it starts: "
        "'2024-11-03T00:00Z/2024-11-02T00:00Z'",
        "labels.csv:7: label F: empty series",
        "labels.csv:8: label A: duplicate label_id",
        "labels.csv:9: empty label_id",
    ]


def test_missing_columns_and_unreadable_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match=r"x\.csv:1: missing column\(s\): kind, series"):
        parse_labels("label_id,utc_time\nA,2024-01-01T00:00Z\n", "x.csv")
    with pytest.raises(LabelsError, match="cannot read"):
        read_labels(tmp_path / "absent.csv")


def test_read_labels_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("\ufeff" + _labels("A,event,2024-11-02T23:00Z,,,s,,,"), encoding="utf-8")
    assert [label.label_id for label in read_labels(path)] == ["A"]


def test_series_key_is_the_path_relative_to_the_labels_directory(tmp_path: Path) -> None:
    history = tmp_path / "states-hourly" / "pres2024-nc-trump-hourly.history.json"
    assert series_key(history, tmp_path) == "states-hourly/pres2024-nc-trump-hourly"
    assert series_key(tmp_path / "fed.history.json", tmp_path) == "fed"
    assert series_key(tmp_path.parent / "elsewhere.history.json", tmp_path) is None


# --- scoring -------------------------------------------------------------------------------


def _score(row: str, *facts: SeriesFacts) -> list[tuple[str, str, timedelta | None]]:
    card = score(parse_labels(_labels(row)), facts)
    return [(r.series, r.outcome, r.latency) for r in card.rows]


def test_event_hit_reports_the_latency_of_the_first_event_in_the_window() -> None:
    facts = _facts("national", T - 5 * HOUR, T + 2 * HOUR, T + 2.5 * HOUR)
    assert _score("L,event,2024-11-02T23:00Z,,,national,,,", facts) == [
        ("national", "hit", 2 * HOUR)
    ]


@pytest.mark.parametrize(
    ("offset", "outcome"),
    [
        (-HOUR, "hit"),  # the lead: one bar (news times are approximate)
        (-HOUR - timedelta(seconds=1), "miss"),
        (3 * HOUR, "hit"),  # three bars after
        (3 * HOUR + timedelta(seconds=5), "hit"),  # a bar stamped a few seconds late
        (3 * HOUR + timedelta(seconds=6), "miss"),
    ],
)
def test_event_window_bounds_on_hourly_data(offset: timedelta, outcome: str) -> None:
    facts = _facts("s", T + offset)
    assert _score("L,event,2024-11-02T23:00Z,,,s,,,", facts)[0][1] == outcome


@pytest.mark.parametrize(
    ("offset", "outcome"),
    [
        (-timedelta(minutes=30), "hit"),  # at least 30 minutes before
        (-timedelta(minutes=30, seconds=1), "miss"),
        (HOUR + timedelta(seconds=5), "hit"),  # at least an hour (and the slack) after
        (HOUR + timedelta(seconds=6), "miss"),
    ],
)
def test_event_window_on_minute_data_has_minimum_lead_and_tolerance(
    offset: timedelta, outcome: str
) -> None:
    facts = _facts("s", T + offset, step=60.0)
    assert _score("L,event,2024-11-02T23:00Z,,,s,,,", facts)[0][1] == outcome


def test_tolerance_grows_with_coarse_data() -> None:
    late = T + 30 * HOUR
    daily = _facts("daily", late, step=86400.0)
    hourly = _facts("hourly", late, step=3600.0)
    assert [
        o for _, o, _ in _score("L,event,2024-11-02T23:00Z,,,daily;hourly,,,", daily, hourly)
    ] == [
        "hit",
        "miss",
    ]


@pytest.mark.parametrize(
    ("offset", "outcome"),
    [
        (HOUR, "false alarm"),  # within one bar of the moment
        (-HOUR, "false alarm"),
        (HOUR + timedelta(seconds=1), "quiet"),
        (-HOUR - timedelta(seconds=1), "quiet"),
    ],
)
def test_negative_window_is_one_bar_either_side(offset: timedelta, outcome: str) -> None:
    facts = _facts("s", T + offset)
    assert _score("N,negative,2024-11-02T23:00Z,,,s,,,", facts)[0][1] == outcome


def test_quiet_kinds_score_false_alarms() -> None:
    noisy = _facts("noisy", T + HOUR)
    quiet = _facts("quiet", T + 2 * HOUR)
    for kind in ("negative", "spike_no_news"):
        assert [
            o for _, o, _ in _score(f"N,{kind},2024-11-02T23:00Z,,,noisy;quiet,,,", noisy, quiet)
        ] == [
            "false alarm",
            "quiet",
        ]


def test_calm_window_flags_any_event_inside() -> None:
    inside = _facts("inside", T + 20 * HOUR)
    outside = _facts("outside", T + 30 * HOUR)
    row = "C,calm,2024-11-02T23:00Z/2024-11-03T23:00Z,,,inside;outside,,,"
    card = score(parse_labels(_labels(row)), [inside, outside])
    assert [(r.series, r.outcome, len(r.events)) for r in card.rows] == [
        ("inside", "false alarm", 1),
        ("outside", "quiet", 0),
    ]
    assert card.false_alarm_events == 1


@pytest.mark.parametrize("kind", ["candidate", "context"])
def test_candidates_and_context_rows_are_listed_not_scored(kind: str) -> None:
    facts = _facts("s", T + HOUR)
    card = score(parse_labels(_labels(f"X,{kind},2024-11-02T23:00Z,,,s,,,")), [facts])
    (row,) = card.rows
    assert (row.outcome, row.events) == (kind, (T + HOUR,))
    assert card.count("hit", "miss", "false alarm", "quiet") == 0
    text = format_scorecard(card, "labels.csv")
    assert f"X      {kind}" in text
    assert "not scored" in text
    assert "hits 0/0" in text
    assert "false alarms 0/0" in text


def test_labels_outside_the_span_or_not_replayed_are_not_scored() -> None:
    early = _facts("s", T, start=T + HOUR)
    card = score(parse_labels(_labels("L,event,2024-11-02T23:00Z,,,s;missing/*,,,")), [early])
    assert [(r.series, r.outcome) for r in card.rows] == [("s", "outside")]
    assert card.not_replayed == (("L", "missing/*"),)


def test_globs_match_one_path_segment_at_a_time() -> None:
    series = [
        _facts("states-hourly/pres2024-pa-trump-hourly", T + HOUR),
        _facts("states-hourly/pres2024-ga-trump-hourly"),
        _facts("states-minute/pres2024-pa-trump-minute", T + HOUR),
        _facts("states-hourly-extra/nested/x", T + HOUR),
    ]
    assert _score("L,event,2024-11-02T23:00Z,,,states-hourly/*,,,", *series) == [
        ("states-hourly/pres2024-ga-trump-hourly", "miss", None),
        ("states-hourly/pres2024-pa-trump-hourly", "hit", HOUR),
    ]


def test_totals_cover_every_replayed_series_labelled_or_not() -> None:
    labelled = _facts("a", T + HOUR, start=T - 24 * HOUR, end=T + 24 * HOUR)
    unlabelled = _facts("b", T, T + HOUR, start=T, end=T + 24 * HOUR)
    card = score(parse_labels(_labels("L,event,2024-11-02T23:00Z,,,a,,,")), [labelled, unlabelled])
    assert card.total_events == 3
    assert card.market_days == pytest.approx(3.0)
    text = format_scorecard(card, "labels.csv")
    assert text.splitlines()[0] == "labels: labels.csv"
    assert "L      event  a       hit     +1h      1 event: 2024-11-03 00:00Z" in text
    assert text.splitlines()[-1] == (
        "total: hits 1/1 event label-series; false alarms 0/0 quiet label-series "
        "(0 events in them); 3 events over 3.0 market-days (1.00 per market-day)"
    )


def test_scorecard_lists_unscored_labels_on_their_own_lines() -> None:
    early = _facts("s", start=T + HOUR)
    card = score(parse_labels(_labels("L,event,2024-11-02T23:00Z,,,s;gone,,,")), [early])
    text = format_scorecard(card, "labels.csv")
    assert "not replayed (not scored): L (gone)" in text
    assert "outside the recorded span (not scored): L (s)" in text
    assert "hits 0/0" in text
