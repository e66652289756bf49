"""The offline commands in process: `rules check|explain|test` and `replay`.

None of them may need the service's configuration: every test runs with an environment that
`load_config` would reject, from a directory without `.env`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from polymarket_kafka.cli import main
from polymarket_kafka.models import PolymarketEvent

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RULES = ROOT / "rules" / "default.yaml"
TRUMP = "0xdd22472e552920b8438158ea7238bfadfa4f736aa4cee91a6b86c39ead110917"
T0 = 1730851200  # 2024-11-06T00:00:00Z

Capture = pytest.CaptureFixture[str]

RULES = """\
version: 1
defaults:
  window: 2h
  move: {abs: 0.05, log_odds: 2.0}
  confirm: {polls: 2}
  volatility: {z: 0}
categories:
  politics: {cooldown: 15m}
"""


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A working directory without rules/ or .env, and a configuration that cannot load."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MONGODB_URI", "not-a-mongodb-uri")
    return tmp_path


def _write(path: Path, payload: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload), "utf-8")
    return path


def _history(path: Path, *prices: float, step: int = 3600) -> Path:
    return _write(path, {"history": [{"t": T0 + i * step, "p": p} for i, p in enumerate(prices)]})


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    return _write(tmp_path / "rules.yaml", RULES)


# --- rules check ---------------------------------------------------------------------------


def test_check_prints_the_table_of_each_valid_file(rules: Path, capsys: Capture) -> None:
    assert main(["rules", "check", str(rules), str(DEFAULT_RULES)]) == 0
    out = capsys.readouterr().out
    assert f"{rules}: OK, version " in out
    assert f"{DEFAULT_RULES}: OK, version " in out
    assert "category:politics" in out


def test_check_lists_every_issue_and_fails(rules: Path, tmp_path: Path, capsys: Capture) -> None:
    bad = _write(tmp_path / "bad.yaml", "version: 1\ndefaults:\n  window: 15\n  move: {abs: 2}\n")
    assert main(["rules", "check", str(rules), str(bad), str(tmp_path / "absent.yaml")]) == 1
    captured = capsys.readouterr()
    assert f"{rules}: OK" in captured.out
    errors = captured.err.splitlines()
    assert any(line.startswith(f"{bad}:3:") and "defaults.window" in line for line in errors)
    assert any(line.startswith(f"{bad}:4:") and "defaults.move.abs" in line for line in errors)
    assert any(line.startswith(f"{tmp_path / 'absent.yaml'}: cannot read") for line in errors)
    assert errors[-1] == "polymarket-kafka: 2 of 3 rules files invalid"


# --- rules explain -------------------------------------------------------------------------


def test_explain_uses_the_market_file_for_category_and_liquidity(
    rules: Path, tmp_path: Path, capsys: Capture
) -> None:
    market = _write(
        tmp_path / "m.json", {"conditionId": TRUMP, "category": "Politics", "liquidity": "5000"}
    )
    assert main(["rules", "explain", TRUMP, "--rules", str(rules), "--market", str(market)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"rules {rules} (version ")
    assert TRUMP in captured.out
    assert "category:politics" in captured.out
    assert captured.err == ""


def test_explain_without_rules_uses_the_builtin_defaults(capsys: Capture) -> None:
    assert main(["rules", "explain", TRUMP]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rules: built-in defaults (no --rules and no rules/default.yaml;")
    assert "category:" not in out


def test_explain_prefers_rules_default_yaml_of_the_current_directory(
    offline: Path, capsys: Capture
) -> None:
    shutil.copy(DEFAULT_RULES, _write(offline / "rules" / "default.yaml", "").parent)
    assert main(["rules", "explain", TRUMP]) == 0
    assert capsys.readouterr().out.startswith("rules rules/default.yaml (default; version ")


def test_explain_notes_a_market_file_of_another_market(
    rules: Path, tmp_path: Path, capsys: Capture
) -> None:
    market = _write(tmp_path / "m.json", {"conditionId": "0xother", "category": "Politics"})
    assert main(["rules", "explain", TRUMP, "--rules", str(rules), "--market", str(market)]) == 0
    assert "describes 0xother" in capsys.readouterr().err


def test_explain_with_bad_inputs_fails(rules: Path, tmp_path: Path, capsys: Capture) -> None:
    assert main(["rules", "explain", TRUMP, "--rules", str(tmp_path / "absent.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err
    bad_market = _write(tmp_path / "m.json", "[1, 2]")
    assert main(["rules", "explain", TRUMP, "--market", str(bad_market)]) == 1
    assert f"{bad_market}: expected one Gamma market object" in capsys.readouterr().err


# --- rules test ----------------------------------------------------------------------------

PASSING = """\
rule_files: [rules.yaml]
tests:
  - name: fires
    markets: {m: {series: 0.40x5 0.50x5}}
    expected_events: [{market: m, at: 7m, direction: toward_yes}]
"""


def test_rule_tests_pass_with_their_rule_files(
    rules: Path, tmp_path: Path, capsys: Capture
) -> None:
    suite = _write(tmp_path / "suite.yaml", PASSING)
    assert main(["rules", "test", str(suite)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{suite}: 1 tests, rules {rules} (rule_files; version ")
    assert out[1:] == ["  PASS fires", "rules test OK: 1 passed, 0 failing"]


def test_rule_test_failures_print_the_diff_and_exit_1(
    rules: Path, tmp_path: Path, capsys: Capture
) -> None:
    suite = _write(tmp_path / "suite.yaml", PASSING.replace("at: 7m", "at: 8m"))
    assert main(["rules", "test", str(suite)]) == 1
    out = capsys.readouterr().out
    assert "  FAIL fires" in out
    assert "    missing:    m at +8m (2024-01-01T00:08:00Z) toward_yes" in out
    assert "    unexpected: m at +7m (2024-01-01T00:07:00Z) toward_yes" in out
    assert out.splitlines()[-1] == "rules test FAILED: 0 passed, 1 failing"


def test_rules_option_overrides_rule_files(rules: Path, tmp_path: Path, capsys: Capture) -> None:
    strict = _write(
        tmp_path / "strict.yaml", "version: 1\ndefaults: {move: {abs: 0.5, log_odds: 5}}\n"
    )
    suite = _write(tmp_path / "suite.yaml", PASSING)
    assert main(["rules", "test", str(suite), "--rules", str(strict)]) == 1
    out = capsys.readouterr().out
    assert f"--rules overrides rule_files {rules}" in out
    assert "  FAIL fires" in out


def test_invalid_test_files_are_reported_and_the_others_still_run(
    rules: Path, tmp_path: Path, capsys: Capture
) -> None:
    good = _write(tmp_path / "good.yaml", PASSING)
    bad = _write(tmp_path / "bad.yaml", PASSING.replace("direction: toward_yes", "direction: up"))
    missing_rules = _write(tmp_path / "norules.yaml", PASSING.replace("rules.yaml", "nope.yaml"))
    assert main(["rules", "test", str(bad), str(good), str(missing_rules)]) == 1
    captured = capsys.readouterr()
    assert f"{bad}: test 'fires': expected_events.0.direction:" in captured.err
    assert f"{tmp_path / 'nope.yaml'}: cannot read" in captured.err
    assert "  PASS fires" in captured.out
    assert captured.out.splitlines()[-1] == (
        "rules test FAILED: 1 passed, 0 failing, 2 invalid test files"
    )


def test_the_shipped_rule_tests_pass_from_the_repository_root(
    monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    monkeypatch.chdir(ROOT)
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "rules" / "tests").glob("*.yaml"))
    assert main(["rules", "test", *files]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("rules test OK: ")


# --- replay --------------------------------------------------------------------------------


def test_replay_prints_kafka_values_and_a_summary(
    rules: Path, tmp_path: Path, capsys: Capture
) -> None:
    history = _history(tmp_path / "data" / "trump.history.json", 0.40, 0.41, 0.55, 0.56, 0.56)
    _write(tmp_path / "data" / "trump.market.json", {"conditionId": TRUMP, "question": "Trump?"})
    assert main(["replay", str(history), "--rules", str(rules)]) == 0
    captured = capsys.readouterr()
    (line,) = captured.out.splitlines()
    event = PolymarketEvent.model_validate_json(line)
    assert event.to_kafka_value().decode("utf-8") == line
    assert (event.market_id, event.question, event.yes_price) == (TRUMP, "Trump?", 0.56)
    assert captured.err.startswith(f"replay: rules {rules} (version ")
    assert "trump: market " + TRUMP in captured.err
    assert "defaults used: category, liquidity, volume" in captured.err


def test_replay_out_writes_one_jsonl_per_input(
    rules: Path, tmp_path: Path, capsys: Capture
) -> None:
    moving = _history(tmp_path / "a.history.json", 0.40, 0.55, 0.55)
    calm = _history(tmp_path / "sub" / "b.history.json", 0.40, 0.41, 0.40)
    out = tmp_path / "out" / "nested"
    assert main(["replay", str(moving), str(calm), "--rules", str(rules), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert sorted(p.name for p in out.iterdir()) == ["a.jsonl", "b.jsonl"]
    (line,) = (out / "a.jsonl").read_text("utf-8").splitlines()
    assert PolymarketEvent.model_validate_json(line).market_id == "a"  # no sidecar: the stem
    assert (out / "b.jsonl").read_text("utf-8") == ""
    assert f"wrote 1 event to {out / 'a.jsonl'}" in captured.err
    assert "defaults used: market_id, question, category, liquidity, volume" in captured.err


def test_replay_uses_an_explicit_market_file(rules: Path, tmp_path: Path, capsys: Capture) -> None:
    history = _history(tmp_path / "x.history.json", 0.40, 0.55, 0.55)
    market = _write(tmp_path / "gamma.json", [{"conditionId": TRUMP, "category": "Politics"}])
    assert main(["replay", str(history), "--rules", str(rules), "--market", str(market)]) == 0
    assert PolymarketEvent.model_validate_json(capsys.readouterr().out).market_id == TRUMP


def test_replay_bad_history_is_exit_1_with_file_and_index(
    rules: Path, tmp_path: Path, capsys: Capture
) -> None:
    good = _history(tmp_path / "good.history.json", 0.4, 0.5)
    bad = _write(tmp_path / "bad.history.json", {"history": [{"t": T0, "p": 0.5}, {"t": T0}]})
    assert main(["replay", str(good), str(bad), "--rules", str(rules)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing is printed before every input is known good
    assert captured.err.strip() == f"{bad}: history[1]: missing key 'p'"
    assert main(["replay", str(tmp_path / "absent.history.json")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_replay_bad_rules_or_labels_are_exit_1(tmp_path: Path, capsys: Capture) -> None:
    history = _history(tmp_path / "h.history.json", 0.4, 0.5)
    bad_rules = _write(tmp_path / "r.yaml", "version: 2\n")
    assert main(["replay", str(history), "--rules", str(bad_rules)]) == 1
    assert f"{bad_rules}:1:" in capsys.readouterr().err
    bad_labels = _write(tmp_path / "l.csv", "label_id,kind\n")
    assert main(["replay", str(history), "--labels", str(bad_labels)]) == 1
    assert "missing column(s): utc_time, series" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--market", "m.json"], "--market describes one market"),
        (["SAME"], "a history file is given twice"),
        (["--out", "OUT_FILE"], "exists and is not a directory"),
        (["OTHER_DIR_SAME_NAME", "--out", "o"], "several inputs would write"),
    ],
)
def test_replay_usage_errors_are_exit_2(
    tmp_path: Path, capsys: Capture, extra: list[str], message: str
) -> None:
    first = _history(tmp_path / "h.history.json", 0.4)
    second = _history(tmp_path / "other" / "h.history.json", 0.4)
    out_file = _write(tmp_path / "out.txt", "")
    replacements = {
        "SAME": str(first),
        "OUT_FILE": str(out_file),
        "OTHER_DIR_SAME_NAME": str(second),
    }
    args = ["replay", str(first), *[replacements.get(a, a) for a in extra]]
    if extra[0] == "--market":
        args.insert(2, str(second))
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_replay_without_arguments_is_a_usage_error(capsys: Capture) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["replay"])
    assert caught.value.code == 2
    assert "HISTORY.json" in capsys.readouterr().err


def test_replay_scores_labels_after_the_summary(
    rules: Path, tmp_path: Path, capsys: Capture
) -> None:
    data = tmp_path / "data"
    _history(data / "hourly" / "up.history.json", 0.40, 0.40, 0.55, 0.55, 0.55)
    labels = _write(
        data / "labels.csv",
        "label_id,kind,utc_time,series\n"
        "E1,event,2024-11-06T01:30Z,hourly/*\n"
        "Q1,negative,2024-11-06T02:00Z,hourly/up\n"
        "D1,event,2024-11-06T01:30Z,daily\n",
    )
    history = data / "hourly" / "up.history.json"
    assert main(["replay", str(history), "--rules", str(rules), "--labels", str(labels)]) == 0
    err = capsys.readouterr().err
    assert err.index("total: 1 series") < err.index(f"labels: {labels}")
    assert "E1     event     hourly/up  hit" in err
    assert "Q1     negative  hourly/up  false alarm" in err
    assert "not replayed (not scored): D1 (daily)" in err
    assert "total: hits 1/1 event label-series; false alarms 1/1 quiet label-series" in err


def test_replay_plot_writes_a_png(rules: Path, tmp_path: Path, capsys: Capture) -> None:
    pytest.importorskip("matplotlib")
    history = _history(tmp_path / "h.history.json", 0.40, 0.55, 0.55)
    png = tmp_path / "plot.png"
    assert main(["replay", str(history), "--rules", str(rules), "--plot", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    assert f"plot: {png}" in capsys.readouterr().err


def test_replay_plot_draws_the_scored_labels_of_each_series(
    rules: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    pytest.importorskip("matplotlib")
    from polymarket_kafka.replay import plot

    drawn: list[Figure] = []
    real = plot.build_figure

    def keep(*args: Any) -> Figure:  # the real drawing, kept for inspection
        drawn.append(real(*args))
        return drawn[-1]

    monkeypatch.setattr(plot, "build_figure", keep)
    data = tmp_path / "data"
    up = _history(data / "hourly" / "up.history.json", 0.40, 0.40, 0.55, 0.55, 0.55)
    flat = _history(data / "flat.history.json", 0.60, 0.60, 0.60)
    unlabelled = _history(data / "other.history.json", 0.30, 0.30)
    _write(data / "hourly" / "up.market.json", {"question": "Will it go up?"})
    labels = _write(
        data / "labels.csv",
        "label_id,kind,utc_time,series\n"
        "E1,event,2024-11-06T01:30Z,hourly/*\n"
        "Q1,negative,2024-11-06T02:00Z,hourly/up;flat\n",
    )
    png = tmp_path / "plot.png"
    args = ["replay", str(up), str(flat), str(unlabelled), "--rules", str(rules)]
    args += ["--plot", str(png)]
    assert main([*args, "--labels", str(labels)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    assert f"plot: {png}" in capsys.readouterr().err
    charts = [ax for ax in drawn[-1].axes if ax.get_gid() == "chart"]
    titles = [ax.get_title(loc="left") for ax in charts]
    assert titles[0].startswith("Will it go up?\nup — ")
    assert titles[1].startswith("flat — ")  # no market file: the file name
    gids = [sorted(str(a.get_gid()) for a in ax.get_children() if a.get_gid()) for ax in charts]
    assert [g for g in gids[0] if g.startswith("label ")] == ["label E1", "label Q1"]
    assert [g for g in gids[1] if g.startswith("label ")] == ["label Q1"]
    assert "ring E1" in gids[0]  # the event that scored the hit
    assert "ring Q1" in gids[0]  # ... is also a false alarm of the negative label
    assert not [g for g in gids[2] if g.startswith("label ")]
    notes = [ax for ax in drawn[-1].axes if ax.get_gid() == "notes"]
    assert len(notes) == 3
    assert [len(ax.texts) for ax in notes] == [3, 2, 0]  # heading + one line per label
    assert main(args) == 0  # without --labels: the prices and events only
    assert not [a for ax in drawn[-1].axes for a in ax.get_children() if a.get_gid()]
    assert [ax.get_gid() for ax in drawn[-1].axes] == ["chart", "scale"] * 3  # no notes


def test_replay_plot_without_matplotlib_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    history = _history(tmp_path / "h.history.json", 0.40, 0.55, 0.55)
    assert main(["replay", str(history), "--plot", str(tmp_path / "p.png")]) == 2
    captured = capsys.readouterr()
    assert "install polymarket-kafka[plot]" in captured.err
    assert captured.out == ""


def test_rule_tests_without_rule_files_use_the_builtin_defaults(
    tmp_path: Path, capsys: Capture
) -> None:
    suite = _write(tmp_path / "suite.yaml", PASSING.replace("rule_files: [rules.yaml]\n", ""))
    assert main(["rules", "test", str(suite)]) == 0
    assert "rules: built-in defaults" in capsys.readouterr().out.splitlines()[0]


def test_replay_output_that_cannot_be_written_is_exit_1(
    rules: Path, tmp_path: Path, capsys: Capture
) -> None:
    history = _history(tmp_path / "h.history.json", 0.40, 0.55, 0.55)
    blocker = _write(tmp_path / "blocker", "")
    assert main(["replay", str(history), "--rules", str(rules), "--out", str(blocker / "x")]) == 1
    assert "cannot write events" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    png = tmp_path / "no-such-dir" / "p.png"
    assert main(["replay", str(history), "--rules", str(rules), "--plot", str(png)]) == 1
    assert "cannot write the plot" in capsys.readouterr().err
