"""Rules files that must be refused: every issue, with its file, line, column and dotted key.

Each case writes a real file under tmp_path and loads it; the expected lines are exactly what
`rules check` prints (with the file path shortened to F).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from polymarket_kafka.ruleset import RuleIssue, RulesError, load_rules, load_rules_text


def issues(tmp_path: Path, text: str) -> list[str]:
    """The issues of a rules file, one `F:LINE:COL: key: message` string each."""
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    assert str(caught.value) == "\n".join(str(i) for i in caught.value.issues)
    return [str(issue).replace(str(path), "F", 1) for issue in caught.value.issues]


# --- unknown keys -------------------------------------------------------------------------


def test_unknown_top_level_key_suggests_the_close_one(tmp_path: Path) -> None:
    assert issues(tmp_path, "version: 1\ndefault:\n  window: 1h\n") == [
        "F:2:1: default: unknown key 'default' (did you mean 'defaults'?); "
        "allowed here: version, defaults, tiers, categories, markets"
    ]


def test_unknown_keys_at_every_depth_are_all_reported(tmp_path: Path) -> None:
    text = """\
version: 1
defaults:
  windw: 1h
  move:
    abss: 0.1
  severity:
    minor: {}
    major: {absolute: 0.1}
tiers:
  bands:
    thin:
      below: 100
      confirm:
        pols: 3
categories:
  crypto:
    move: {abs: 0.1, x: 1}
"""
    assert issues(tmp_path, text) == [
        "F:3:3: defaults.windw: unknown key 'windw' (did you mean 'window'?); allowed here: "
        "name, enabled, window, move, cooldown, hysteresis, confirm, volatility, watch, catch_up, "
        "severity",
        "F:5:5: defaults.move.abss: unknown key 'abss' (did you mean 'abs'?); "
        "allowed here: abs, log_odds, combine, floor",
        "F:8:13: defaults.severity.major.absolute: unknown key 'absolute'; "
        "allowed here: abs, log_odds",
        "F:14:9: tiers.bands.thin.confirm.pols: unknown key 'pols' (did you mean 'polls'?); "
        "allowed here: polls, for, retain, ramp",
        "F:17:22: categories.crypto.move.x: unknown key 'x'; "
        "allowed here: abs, log_odds, combine, floor",
    ]


def test_tier_bands_also_accept_their_bounds(tmp_path: Path) -> None:
    [issue] = issues(tmp_path, "version: 1\ntiers:\n  bands:\n    a: {from: 1, upto: 2}\n")
    assert issue.startswith("F:4:18: tiers.bands.a.upto: unknown key 'upto'; allowed here: ")
    assert issue.endswith("severity, from, below")


# --- types and ranges ---------------------------------------------------------------------


def test_wrong_types(tmp_path: Path) -> None:
    text = """\
version: 1
defaults:
  name: 3
  enabled: 1
  move: 3
  confirm: {polls: 2.5}
  watch: {max_spread: high}
categories: [a]
markets:
  1: {}
tiers: {by: price, bands: {a: {from: 0}}}
"""
    assert issues(tmp_path, text) == [
        "F:3:9: defaults.name: expected text, got 3",
        "F:4:12: defaults.enabled: expected true or false, got 1",
        "F:5:9: defaults.move: expected a mapping, got 3",
        "F:6:20: defaults.confirm.polls: expected a whole number, got 2.5",
        "F:7:23: defaults.watch.max_spread: expected a number, got text 'high'",
        "F:8:1: categories: expected a mapping, got a list",
        "F:10:3: markets.1: expected text, got 1",
        "F:11:13: tiers.by: must be 'liquidity' or 'volume', got text 'price'",
    ]


def test_numbers_in_quotes_are_not_coerced(tmp_path: Path) -> None:
    assert issues(tmp_path, "version: 1\ndefaults: {move: {abs: '0.05'}}\n") == [
        "F:2:24: defaults.move.abs: expected a number, got text '0.05'"
    ]


def test_out_of_range_values_and_durations(tmp_path: Path) -> None:
    text = """\
version: 1
defaults:
  move: {abs: 0, log_odds: -1, floor: 1}
  hysteresis: 1.5
  window: 0s
  cooldown: 15
  confirm: {for: 1w, polls: 0, retain: 2}
  watch: {max_data_age: 0s, min_volume: -1}
markets:
  "0xab": {move: {abs: 1.5}, name: ""}
"""
    assert issues(tmp_path, text) == [
        "F:3:15: defaults.move.abs: must be > 0, got 0",
        "F:3:28: defaults.move.log_odds: must be > 0, got -1",
        "F:3:39: defaults.move.floor: must be < 1, got 1",
        "F:4:15: defaults.hysteresis: must be < 1, got 1.5",
        "F:5:11: defaults.window: must be longer than 0s",
        "F:6:13: defaults.cooldown: use a duration like 15m, 90s or 1h30m, not a bare number (15)",
        "F:7:18: defaults.confirm.for: use a duration like 15m, 90s or 1h30m, got '1w' "
        "(units are d, h, m, s, in that order, each at most once)",
        "F:7:29: defaults.confirm.polls: must be >= 1, got 0",
        "F:7:40: defaults.confirm.retain: must be <= 1, got 2",
        "F:8:25: defaults.watch.max_data_age: must be longer than 0s",
        "F:8:41: defaults.watch.min_volume: must be >= 0, got -1",
        "F:10:24: markets.0xab.move.abs: must be <= 1, got 1.5",
        "F:10:36: markets.0xab.name: must not be empty",
    ]


@pytest.mark.parametrize(("key", "value"), [("abs", "0"), ("abs", "-0.01"), ("log_odds", "0")])
def test_thresholds_must_be_positive_in_any_layer(tmp_path: Path, key: str, value: str) -> None:
    text = f"version: 1\ncategories:\n  crypto:\n    move:\n      {key}: {value}\n"
    column = 9 + len(key)
    assert issues(tmp_path, text) == [
        f"F:5:{column}: categories.crypto.move.{key}: must be > 0, got {value}"
    ]


def test_a_duration_that_is_not_a_string_nor_a_number(tmp_path: Path) -> None:
    assert issues(tmp_path, "version: 1\ndefaults: {window: true}\n") == [
        "F:2:20: defaults.window: expected a duration like 15m, 90s or 1h30m, got True"
    ]


def test_empty_values_are_refused(tmp_path: Path) -> None:
    assert issues(tmp_path, "version: 1\ndefaults:\n  move:\ncategories:\n  x:\n") == [
        "F:3:8: defaults.move: empty value: give a value, or remove the key to inherit it",
        "F:5:5: categories.x: expected a mapping, got an empty value",
    ]


# --- tiers --------------------------------------------------------------------------------


def test_overlapping_tiers_name_both_bands(tmp_path: Path) -> None:
    text = """\
version: 1
tiers:
  by: volume
  bands:
    thin: {below: 20000}
    standard:
      from: 10000
      below: 250000
    deep: {from: 200000}
"""
    assert issues(tmp_path, text) == [
        "F:6:5: tiers.bands.standard: band 'standard' [10000, 250000) overlaps band 'thin' "
        "[0, 20000)",
        "F:9:5: tiers.bands.deep: band 'deep' [200000, inf) overlaps band 'standard' "
        "[10000, 250000)",
    ]


def test_touching_tiers_do_not_overlap(tmp_path: Path) -> None:
    text = "version: 1\ntiers:\n  bands:\n    a: {below: 10}\n    b: {from: 10}\n"
    assert load_rules_text(text).tiers_by == "liquidity"


def test_tier_bounds(tmp_path: Path) -> None:
    text = """\
version: 1
tiers:
  bands:
    a: {from: 500, below: 100}
    b:
      window: 1h
    c: {from: 7, below: 7}
"""
    assert issues(tmp_path, text) == [
        "F:4:9: tiers.bands.a.from: `from` (500) must be less than `below` (100)",
        "F:5:5: tiers.bands.b: a tier band needs `from`, `below` or both",
        "F:7:9: tiers.bands.c.from: `from` (7) must be less than `below` (7)",
    ]


def test_tiers_need_bands(tmp_path: Path) -> None:
    assert issues(tmp_path, "version: 1\ntiers:\n  by: volume\n") == [
        "F:2:1: tiers.bands: required key is missing"
    ]
    assert issues(tmp_path, "version: 1\ntiers:\n  bands: {}\n") == [
        "F:3:3: tiers.bands: must not be empty"
    ]


# --- severity -----------------------------------------------------------------------------


def test_severity_rules(tmp_path: Path) -> None:
    text = """\
version: 1
defaults:
  severity:
    minor: {abs: 0.01}
    major: {abs: 0.2, log_odds: 1}
    extreme: {abs: 0.1, log_odds: 1}
    odd: {}
categories:
  x:
    severity: {}
"""
    assert issues(tmp_path, text) == [
        "F:4:13: defaults.severity.minor.abs: the first band ('minor') is the base band: "
        "it must have no thresholds",
        "F:6:15: defaults.severity.extreme.abs: bands must be strictly ascending: "
        "extreme.abs = 0.1 is not above major.abs = 0.2",
        "F:6:25: defaults.severity.extreme.log_odds: bands must be strictly ascending: "
        "extreme.log_odds = 1 is not above major.log_odds = 1",
        "F:7:5: defaults.severity.odd: band 'odd' has no thresholds; "
        "only the first band may have none",
        "F:10:5: categories.x.severity: must not be empty",
    ]


def test_severity_ascends_per_threshold_skipping_bands_without_it(tmp_path: Path) -> None:
    text = """\
version: 1
defaults:
  severity:
    low: {}
    mid: {log_odds: 0.5}
    high: {abs: 0.1}
    top: {abs: 0.3, log_odds: 0.4}
"""
    assert issues(tmp_path, text) == [
        "F:7:21: defaults.severity.top.log_odds: bands must be strictly ascending: "
        "top.log_odds = 0.4 is not above mid.log_odds = 0.5"
    ]


def test_severity_band_names_must_not_be_blank(tmp_path: Path) -> None:
    assert issues(tmp_path, "version: 1\ndefaults:\n  severity: {' ': {}, b: {abs: 0.1}}\n") == [
        "F:3:3: defaults.severity: band names must not be empty"
    ]


# --- keys, version, YAML ------------------------------------------------------------------


def test_version_must_be_1(tmp_path: Path) -> None:
    assert issues(tmp_path, "version: 2\n") == ["F:1:10: version: must be 1, got 2"]
    assert issues(tmp_path, "defaults: {}\n") == ["F:1:1: version: required key is missing"]


def test_duplicate_keys_at_any_depth(tmp_path: Path) -> None:
    text = "version: 1\ndefaults:\n  window: 1h\n  window: 2h\nversion: 1\n"
    assert issues(tmp_path, text) == [
        "F:4:3: defaults.window: duplicate key",
        "F:5:1: version: duplicate key",
    ]


def test_keys_equal_up_to_case_are_refused(tmp_path: Path) -> None:
    text = """\
version: 1
categories:
  Politics: {}
  politics: {}
markets:
  '0xAB': {}
  '0xab': {}
  ' ': {}
"""
    assert issues(tmp_path, text) == [
        "F:4:3: categories.politics: category 'politics' repeats 'Politics' "
        "(keys are case-insensitive)",
        "F:7:3: markets.0xab: market '0xab' repeats '0xAB' (keys are case-insensitive)",
        "F:8:3: markets. : market keys must not be empty",
    ]


# PyYAML's words for a syntax error change with its releases: checked are where it stopped,
# where the construct it was reading began (` at LINE:COL)`) and our prefix, not its text.


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    (unclosed,) = issues(tmp_path, "version: 1\ndefaults:\n  move: {abs: 0.1\n")
    assert unclosed.startswith("F:4:1: YAML syntax: ")
    assert unclosed.endswith(" at 3:9)")  # the flow mapping left open
    (indented,) = issues(tmp_path, "version: 1\n  bad: 2\n")
    assert indented.startswith("F:2:6: YAML syntax: ")


def test_other_yaml_problems(tmp_path: Path) -> None:
    (second,) = issues(tmp_path, "version: 1\n---\nversion: 1\n")
    assert second.startswith("F:2:1: YAML syntax: ")
    assert second.endswith(" at 1:1)")  # the stream that should hold one document
    (tag,) = issues(tmp_path, "version: 1\ndefaults: !!python/object:os.system {}\n")
    assert tag.startswith("F:2:11: YAML syntax: ")  # the safe loader builds no object
    assert "python/object:os.system" in tag
    (control,) = issues(tmp_path, "version: 1\x07\n")
    assert control.startswith("F:1:11: YAML syntax: ")
    assert control.endswith(" (#x0007)")
    assert issues(tmp_path, "version: 1\n? [a, b]\n: 1\n") == ["F:2:3: a key must be a plain value"]
    assert issues(tmp_path, "version: 1\ndefaults: &a\n  move: *a\n") == [
        "F:2:11: defaults.move: an alias refers to its own ancestor"
    ]
    assert issues(tmp_path, "version: 1\ndefaults: !!set {a}\n") == [
        "F:2:1: defaults: expected a mapping, got {'a'}"
    ]


def test_empty_file(tmp_path: Path) -> None:
    assert issues(tmp_path, "# nothing yet\n") == [
        "F:1:1: the file is empty; it needs `version: 1`"
    ]
    assert issues(tmp_path, "- version\n") == ["F:1:1: expected a mapping, got a list"]


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    for path, reason in [
        (tmp_path / "absent.yaml", os.strerror(errno.ENOENT)),
        (tmp_path, os.strerror(errno.EISDIR)),
    ]:
        with pytest.raises(RulesError) as caught:
            load_rules(path)
        assert caught.value.issues == (
            RuleIssue(str(path), None, None, "", f"cannot read: {reason}"),
        )
        assert str(caught.value) == f"{path}: cannot read: {reason}"
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"version: 1\nname: caf\xe9\n")
    with pytest.raises(RulesError) as caught:
        load_rules(latin1)
    assert str(caught.value).startswith(f"{latin1}: cannot read: ")
    assert isinstance(caught.value.__cause__, UnicodeDecodeError)


def test_all_issues_are_collected_in_file_order(tmp_path: Path) -> None:
    text = """\
version: 3
categories:
  crypto: {}
  crypto: {window: 15}
defaults:
  move: {abs: 2}
tiers: {bands: {a: {}}}
"""
    assert issues(tmp_path, text) == [
        "F:1:10: version: must be 1, got 3",
        "F:4:3: categories.crypto: duplicate key",
        "F:4:20: categories.crypto.window: use a duration like 15m, 90s or 1h30m, "
        "not a bare number (15)",
        "F:6:15: defaults.move.abs: must be <= 1, got 2",
        "F:7:17: tiers.bands.a: a tier band needs `from`, `below` or both",
    ]


def test_issue_without_a_key_or_column() -> None:
    assert str(RuleIssue("f.yaml", 3, None, "", "boom")) == "f.yaml:3: boom"
    assert str(RuleIssue("f.yaml", 3, 4, "a.b", "boom")) == "f.yaml:3:4: a.b: boom"
    assert isinstance(RulesError([]), ValueError)


def test_load_rules_text_names_its_source() -> None:
    with pytest.raises(RulesError) as caught:
        load_rules_text("version: 0\n")
    assert str(caught.value) == "<string>:1:10: version: must be 1, got 0"


def test_numbers_must_be_finite(tmp_path: Path) -> None:
    text = """\
version: 1
defaults:
  move: {log_odds: .inf, abs: .nan}
  watch: {min_volume: .inf}
  name: {a: 1}
  enabled: [true]
  hysteresis: true
"""
    assert issues(tmp_path, text) == [
        "F:3:20: defaults.move.log_odds: must be a finite number, got inf",
        "F:3:31: defaults.move.abs: must be a finite number, got nan",
        "F:4:23: defaults.watch.min_volume: must be a finite number, got inf",
        "F:5:3: defaults.name: expected text, got a mapping",
        "F:6:3: defaults.enabled: expected true or false, got a list",
        "F:7:15: defaults.hysteresis: expected a number, got true",
    ]


def test_keys_must_be_text_where_names_are_expected(tmp_path: Path) -> None:
    text = "version: 1\ndefaults:\n  severity: {minor: {}, 1: {abs: 0.1}}\n"
    assert issues(tmp_path, text) == ["F:3:25: defaults.severity.1: expected text, got 1"]


def test_helpers_degrade_gracefully_off_the_schema() -> None:
    """Paths no schema error produces, and YAML errors without a position, still read well."""
    import yaml

    from polymarket_kafka.ruleset.loader import _allowed_keys, _syntax_issue, _unknown_key

    assert _allowed_keys(("nope",)) == []
    assert _allowed_keys(("version", "deeper")) == []
    assert _allowed_keys(("categories", "x", "move")) == ["abs", "log_odds", "combine", "floor"]
    assert _unknown_key(("version", "x")) == "unknown key 'x'"
    issue = _syntax_issue(yaml.YAMLError("bad\n  thing"), "", "F")
    assert str(issue) == "F: YAML syntax: bad thing"
