"""What `replay --plot` draws, decided without matplotlib: marks, styles, ids, y-range,
titles and the figure's layout (pure functions of the replay and the scorecard)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from polymarket_kafka.replay.engine import ReplayResult, replay
from polymarket_kafka.replay.history import PricePoint, PriceSeries, ReplayMarket
from polymarket_kafka.replay.labels import LabelScore, SeriesFacts, parse_labels, score
from polymarket_kafka.replay.plotdata import (
    CHART_WIDTH,
    LEGEND_HEIGHT,
    MIN_YSPAN,
    NOTES_WIDTH,
    PANEL_HEIGHT,
    SCALE_WIDTH,
    STYLES,
    TEXT_GAP,
    TITLE_LINES,
    figure_layout,
    fit_ylim,
    label_marks,
    note_lines,
    panel_title,
    panels,
    spread,
    style_of,
)
from polymarket_kafka.ruleset import load_rules_text
from tests.factories import REPLAY_RULES_YAML

T = datetime(2024, 11, 2, 23, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
START, END = T - 48 * HOUR, T + 48 * HOUR
HEADER = "label_id,kind,utc_time,series,what\n"
RULES = load_rules_text(REPLAY_RULES_YAML, "plot-rules.yaml")


def _rows(*lines: str, events: tuple[datetime, ...] = (), key: str = "s") -> list[LabelScore]:
    labels = parse_labels(HEADER + "".join(line + "\n" for line in lines))
    facts = SeriesFacts(key, START, END, 3600.0, events)
    return list(score(labels, [facts]).rows)


# --- styles --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "events", "style"),
    [
        ("L,event,2024-11-02T23:00Z,s,", (T + HOUR,), "hit"),
        ("L,event,2024-11-02T23:00Z,s,", (), "miss"),
        ("L,event,2024-11-02T23:00Z,s,", (T + 10 * HOUR,), "miss"),
        ("N,negative,2024-11-02T23:00Z,s,", (T + HOUR,), "false alarm"),
        ("N,spike_no_news,2024-11-02T23:00Z,s,", (T + HOUR,), "false alarm"),
        ("N,negative,2024-11-02T23:00Z,s,", (), "quiet"),
        ("N,spike_no_news,2024-11-02T23:00Z,s,", (), "quiet"),
        ("X,context,2024-11-02T23:00Z,s,", (T + HOUR,), "not scored"),
        ("X,candidate,2024-11-02T23:00Z,s,", (), "not scored"),
        ("C,calm,2024-11-02T00:00Z/2024-11-03T00:00Z,s,", (), "calm"),
        ("C,calm,2024-11-02T00:00Z/2024-11-03T00:00Z,s,", (T,), "calm with events"),
    ],
)
def test_each_outcome_of_the_scorer_has_its_style(
    row: str, events: tuple[datetime, ...], style: str
) -> None:
    (scored,) = _rows(row, events=events)
    assert style_of(scored) == style
    assert style in STYLES


def test_labels_outside_the_series_are_not_drawn() -> None:
    (scored,) = _rows("L,event,2024-12-25T00:00Z,s,")
    assert scored.outcome == "outside"
    assert style_of(scored) is None
    assert label_marks([scored], START, END) == ()


def test_every_style_has_a_distinct_legend_and_calm_windows_are_spans() -> None:
    assert len({style.legend for style in STYLES.values()}) == len(STYLES)
    assert {key for key, style in STYLES.items() if style.span} == {"calm", "calm with events"}
    # A miss and a false alarm must not look alike: different colour and line.
    miss, alarm = STYLES["miss"], STYLES["false alarm"]
    assert (miss.colour, miss.linestyle) != (alarm.colour, alarm.linestyle)
    assert STYLES["hit"].linestyle != STYLES["quiet"].linestyle


# --- marks ---------------------------------------------------------------------------------


def test_rings_mark_credited_events_and_false_alarms_only() -> None:
    hit_events = (T + HOUR, T + 2 * HOUR)
    rows = _rows(
        "L,event,2024-11-02T23:00Z,s,",
        "X,context,2024-11-02T23:00Z,s,",
        events=hit_events,
    )
    marks = {mark.label_id: mark for mark in label_marks(rows, START, END)}
    assert marks["L"].ringed == hit_events
    assert marks["X"].ringed == ()  # a context row credits and blames nothing
    alarm = label_marks(_rows("N,negative,2024-11-02T23:00Z,s,", events=(T,)), START, END)
    assert alarm[0].ringed == (T,)
    calm = label_marks(
        _rows("C,calm,2024-11-02T00:00Z/2024-11-03T00:00Z,s,", events=(T, T + 30 * HOUR)),
        START,
        END,
    )
    assert calm[0].ringed == (T,)  # only the event inside the window
    assert label_marks(_rows("N,negative,2024-11-02T23:00Z,s,"), START, END)[0].ringed == ()


def test_marks_keep_the_scored_window_and_calm_ids_point_at_the_visible_middle() -> None:
    rows = _rows(
        "C,calm,2024-10-01T00:00Z/2024-11-02T23:00Z,s,",  # starts long before the series
        "L,event,2024-11-03T01:00Z,s,",
    )
    calm, move = label_marks(rows, START, END)
    assert (calm.label_id, calm.until) == ("C", T)
    assert calm.window == (datetime(2024, 10, 1, tzinfo=UTC), T)
    assert calm.anchor == START + (T - START) / 2
    assert move.anchor == move.at == T + 2 * HOUR
    # One bar before, three bars (and the 5 s stamp slack) after, on hourly data.
    assert move.window == (move.at - HOUR, move.at + 3 * HOUR + timedelta(seconds=5))


def test_notes_say_what_happened_and_what_the_label_is() -> None:
    rows = _rows(
        "L,event,2024-11-02T23:00Z,s,Selzer poll published - NOT SCORED elsewhere",
        "N,negative,2024-11-03T05:00Z,s,Debate",
        "C,calm,2024-11-03T10:00Z/2024-11-04T10:00Z,s,",
        events=(T + 2 * HOUR, T + 6 * HOUR + timedelta(minutes=5), T + 12 * HOUR, T + 13 * HOUR),
    )
    notes = [mark.note for mark in label_marks(rows, START, END)]
    assert notes == [
        "L Nov 02 23:00 hit +2h · Selzer poll published",
        "N Nov 03 05:00 false alarm · Debate",
        "C Nov 03 10:00 → Nov 04 10:00 false alarm: 2 events",
    ]
    (quiet,) = label_marks(_rows("Q,calm,2024-11-03T10:00Z/2024-11-04T10:00Z,s,"), START, END)
    assert quiet.note == "Q Nov 03 10:00 → Nov 04 10:00 calm, quiet"


def test_a_long_note_is_shortened_on_a_word() -> None:
    what = "word " * 40
    (mark,) = label_marks(_rows(f"L,event,2024-11-02T23:00Z,s,{what}"), START, END)
    assert len(mark.note) <= 64
    assert mark.note.endswith("word…")


def test_crowded_ids_are_spread_and_ordered_by_time() -> None:
    rows = _rows(
        *(f"L{k},context,2024-11-02T23:0{k}Z,s," for k in range(5)),
        "E,event,2024-11-01T00:00Z,s,",
    )
    marks = label_marks(rows, START, END)
    assert [m.label_id for m in marks] == ["E", "L0", "L1", "L2", "L3", "L4"]
    assert marks[0].text_at == marks[0].anchor  # alone: written where it points
    span = END - START
    positions = [(m.text_at - START) / span for m in marks[1:]]
    assert all(b - a >= TEXT_GAP - 1e-9 for a, b in itertools.pairwise(positions))


def test_the_notes_column_lists_each_mark_under_a_heading() -> None:
    marks = label_marks(
        _rows("L,event,2024-11-02T23:00Z,s,Poll", "N,negative,2024-11-03T05:00Z,s,"), START, END
    )
    lines = note_lines(marks)
    assert [text for text, _ in lines] == [
        "labels (UTC)",
        "L Nov 02 23:00 miss · Poll",
        "N Nov 03 05:00 quiet",
    ]
    assert [colour for _, colour in lines[1:]] == [STYLES["miss"].colour, STYLES["quiet"].colour]
    assert note_lines(()) == []


def test_a_crowded_notes_column_says_how_many_more() -> None:
    rows = _rows(*(f"X{k},context,2024-11-02T{k:02}:00Z,s," for k in range(6)))
    marks = label_marks(rows, START, END)
    assert len(note_lines(marks, limit=6)) == 7  # heading + 6: all fit
    lines = note_lines(marks, limit=4)
    assert [text.split()[0] for text, _ in lines[1:-1]] == ["X0", "X1", "X2"]
    assert lines[-1][0] == "+3 more (see the scorecard)"


# --- spreading ids -------------------------------------------------------------------------


def test_spread_keeps_ids_that_do_not_collide() -> None:
    assert spread([0.1, 0.5, 0.9]) == [0.1, 0.5, 0.9]
    assert spread([]) == []


def test_spread_centres_a_crowd_on_its_wishes() -> None:
    placed = spread([0.5, 0.5, 0.5], gap=0.1)
    assert placed == pytest.approx([0.4, 0.5, 0.6])


def test_spread_slides_a_crowd_inside_the_axis() -> None:
    assert spread([0.99, 1.0, 1.0], gap=0.1) == pytest.approx([0.8, 0.9, 1.0])
    assert spread([0.0, 0.0], gap=0.1) == pytest.approx([0.0, 0.1])


def test_spread_merges_crowds_that_collide_after_centring() -> None:
    placed = spread([0.30, 0.30, 0.42, 0.42], gap=0.1)
    assert placed == pytest.approx([0.21, 0.31, 0.41, 0.51])


def test_spread_shares_the_width_when_the_ids_cannot_all_fit() -> None:
    placed = spread([0.5] * 41, gap=0.1)
    assert placed[0] == 0.0
    assert placed[-1] == pytest.approx(1.0)
    assert all(0.0 <= x <= 1.0 for x in placed)
    steps = [b - a for a, b in itertools.pairwise(placed)]
    assert min(steps) == pytest.approx(1 / 40)


# --- y-range -------------------------------------------------------------------------------


def test_the_y_range_fits_the_data_with_a_margin() -> None:
    bottom, top = fit_ylim([0.46, 0.50, 0.54])
    assert (bottom, top) == pytest.approx((0.452, 0.548))


def test_a_flat_series_gets_the_smallest_range_around_it() -> None:
    bottom, top = fit_ylim([0.3, 0.3])
    assert top - bottom == pytest.approx(MIN_YSPAN * 1.2)
    assert (bottom + top) / 2 == pytest.approx(0.3)


def test_the_y_range_slides_inside_zero_and_one() -> None:
    near_one = fit_ylim([0.97, 0.998])
    assert near_one[1] == 1.0
    assert near_one[0] == pytest.approx(1.0 - 1.2 * MIN_YSPAN)
    near_zero = fit_ylim([0.0, 0.01])
    assert near_zero == pytest.approx((0.0, 1.2 * MIN_YSPAN))
    assert fit_ylim([0.0, 1.0]) == (0.0, 1.0)
    assert fit_ylim([0.01, 0.99]) == (0.0, 1.0)
    assert fit_ylim([]) == (0.0, 1.0)


# --- titles --------------------------------------------------------------------------------


def test_the_title_is_the_question_then_the_series() -> None:
    assert panel_title("Will  it\nrain?", "rain-hourly", "1h steps") == (
        "Will it rain?\nrain-hourly — 1h steps"
    )
    assert panel_title("", "rain-hourly") == "rain-hourly"


def test_a_long_question_is_wrapped_then_cut() -> None:
    question = " ".join(f"word{k}" for k in range(60))
    title = panel_title(question, "s", width=40)
    lines = title.splitlines()
    assert len(lines) == TITLE_LINES + 1
    assert all(len(line) <= 40 for line in lines)
    assert lines[TITLE_LINES - 1].endswith("…")
    assert lines[-1] == "s"
    assert panel_title("short question?", "s", width=40).splitlines()[0] == "short question?"


# --- panels and layout ---------------------------------------------------------------------


def _result(name: str, question: str, *prices: float) -> ReplayResult:
    points = tuple(PricePoint(T + i * HOUR, price) for i, price in enumerate(prices))
    series = PriceSeries(name=name, source=f"{name}.history.json", points=points)
    market = ReplayMarket(market_id=name, question=question, liquidity=5000.0)
    return replay(series, market, RULES)


def test_panels_show_the_rows_of_their_own_series() -> None:
    up = _result("up", "Will it go up?", 0.40, 0.40, 0.55, 0.55, 0.55)
    flat = _result("flat", "", 0.60, 0.61, 0.60)
    assert up.events  # the move fires
    labels = parse_labels(
        HEADER + "E,event,2024-11-03T00:30Z,up;flat,Move\nC,calm,2024-11-02T23:00Z/"
        "2024-11-03T02:00Z,flat,\n"
    )
    facts = [
        SeriesFacts(r.series.name, r.series.start, r.series.end, 3600.0, r.event_times())
        for r in (up, flat)
    ]
    card = score(labels, facts)
    first, second = panels([up, flat], card, ["up", "flat"])
    assert [m.label_id for m in first.marks] == ["E"]
    assert first.marks[0].style == "hit"
    assert [(m.label_id, m.style) for m in second.marks] == [("C", "calm"), ("E", "miss")]
    assert first.title == "Will it go up?\nup — 1h steps; 1 event; labels: 1 hit"
    assert second.title == "flat — 1h steps; 0 events; labels: 1 miss, 1 calm"
    assert first.data_range == (0.40, 0.55)
    assert first.ylim == pytest.approx(fit_ylim([0.40, 0.55]))


def test_panels_without_labels_and_bad_keys() -> None:
    up = _result("up", "Q?", 0.40, 0.40, 0.55, 0.55, 0.55)
    (panel,) = panels([up])
    assert panel.marks == ()
    assert panel.title == "Q?\nup — 1h steps; 1 event"
    card = score([], [])
    with pytest.raises(ValueError, match="one series key per result"):
        panels([up], card)
    with pytest.raises(ValueError, match="one series key per result"):
        panels([up], card, ["up", "extra"])


def test_the_y_range_contains_every_event_and_its_baseline() -> None:
    up = _result("up", "Q?", 0.40, 0.40, 0.55, 0.55, 0.55)
    (panel,) = panels([up])
    (event,) = up.events
    bottom, top = panel.ylim
    assert bottom < event.baseline_yes_price < event.yes_price < top
    assert bottom > 0.0 and top < 1.0


@pytest.mark.parametrize(
    ("count", "rows", "columns"),
    [(0, 1, 1), (1, 1, 1), (6, 6, 1), (7, 4, 2), (21, 11, 2)],
)
def test_the_layout_stays_readable_for_many_panels(count: int, rows: int, columns: int) -> None:
    layout = figure_layout(count)
    assert (layout.rows, layout.columns) == (rows, columns)
    assert layout.ratios == (CHART_WIDTH, SCALE_WIDTH, NOTES_WIDTH)
    assert layout.width == pytest.approx((CHART_WIDTH + SCALE_WIDTH + NOTES_WIDTH) * columns)
    assert layout.height == pytest.approx(PANEL_HEIGHT * rows + LEGEND_HEIGHT)


def test_without_labels_the_layout_has_no_notes_column() -> None:
    layout = figure_layout(2, notes=False)
    assert layout.ratios == (CHART_WIDTH, SCALE_WIDTH)
    assert layout.width == pytest.approx(CHART_WIDTH + SCALE_WIDTH)
