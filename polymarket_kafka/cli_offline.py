"""The offline commands: `rules check|explain|test` and `replay`.

They read files and print; they never read the service's environment (no Kafka, MongoDB or
Polymarket settings are needed), so they run anywhere: in CI, on a laptop, before a deploy.

Rules, when `--rules` is not given: `rules/default.yaml` of the current directory if it
exists, else the built-in defaults; every command says which it used.

Exit status: 0 success; 1 bad input (an invalid rules, history, market, labels or test
file, or a failing rule test); 2 usage (bad arguments, missing optional dependency).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from polymarket_kafka.paths import DEFAULT_RULES_PATH

if TYPE_CHECKING:
    from polymarket_kafka.replay.engine import ReplayResult
    from polymarket_kafka.replay.labels import Label, Scorecard
    from polymarket_kafka.replay.ruletest import RuleTestFile
    from polymarket_kafka.ruleset import RuleSet

__all__ = ["OFFLINE_COMMANDS", "add_offline_commands", "run_offline"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

#: Top-level commands that must not load the service configuration.
OFFLINE_COMMANDS = frozenset({"rules", "replay"})


def add_offline_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `rules ...` and `replay` on the main parser's subcommands."""
    rules_help = f"rules file (default: {DEFAULT_RULES_PATH} if present, else built-in defaults)"
    rules = commands.add_parser("rules", help="check, explain and unit-test detection rules")
    actions = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")

    check = actions.add_parser("check", help="validate rules files (exit 1 on any error)")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")

    explain = actions.add_parser(
        "explain", help="show the parameters a market gets, and which layer set each"
    )
    explain.add_argument("market_id", metavar="MARKET_ID", help="condition id of the market")
    explain.add_argument("--rules", type=Path, default=None, help=rules_help)
    explain.add_argument(
        "--market",
        type=Path,
        default=None,
        metavar="MARKET.json",
        help="Gamma /markets item: category, tags, liquidity and volume of the market",
    )

    test = actions.add_parser("test", help="run rule unit tests (YAML, see rules/tests/)")
    test.add_argument("files", nargs="+", type=Path, metavar="FILE")
    test.add_argument(
        "--rules", type=Path, default=None, help=f"{rules_help}; overrides rule_files"
    )

    replay = commands.add_parser(
        "replay",
        help="replay recorded price histories through the detector (events as JSON lines)",
    )
    replay.add_argument(
        "histories",
        nargs="+",
        type=Path,
        metavar="HISTORY.json",
        help='CLOB /prices-history body {"history": [{"t": ..., "p": ...}]}',
    )
    replay.add_argument("--rules", type=Path, default=None, help=rules_help)
    replay.add_argument(
        "--market",
        type=Path,
        default=None,
        metavar="MARKET.json",
        help="Gamma /markets item of the market (one history only; default: the sidecar "
        "NAME.market.json next to NAME.history.json)",
    )
    replay.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="write DIR/<name>.jsonl per input"
    )
    replay.add_argument(
        "--plot", type=Path, default=None, metavar="PNG", help="draw prices and events"
    )
    replay.add_argument(
        "--labels",
        type=Path,
        default=None,
        metavar="CSV",
        help="score the events against labelled moments (table on stderr)",
    )


def run_offline(args: argparse.Namespace) -> int:
    """Run an offline command (see `OFFLINE_COMMANDS`)."""
    if args.command == "replay":
        return _replay(args)
    action: str = args.rules_command
    if action == "check":
        return _check(args.files)
    if action == "explain":
        return _explain(args)
    return _test(args)


def _error(message: str) -> None:
    print(f"polymarket-kafka: {message}", file=sys.stderr)


def _load_rules(path: Path | None) -> tuple[RuleSet, str]:
    """The rules to use and a note saying which (raises RulesError)."""
    from polymarket_kafka.ruleset import RuleSet, default_rules_path, load_rules

    if path is not None:
        rules = load_rules(path)
        return rules, f"rules {path} (version {rules.version})"
    default = default_rules_path(None)
    if default is not None:
        rules = load_rules(default)
        return rules, f"rules {default} (default; version {rules.version})"
    rules = RuleSet.builtin()
    return rules, (
        f"rules: built-in defaults (no --rules and no {DEFAULT_RULES_PATH}; "
        f"version {rules.version})"
    )


# --- rules check / explain -----------------------------------------------------------------


def _check(files: Sequence[Path]) -> int:
    from polymarket_kafka.ruleset import RulesError, format_ruleset, load_rules

    failed = 0
    for path in files:
        try:
            rules = load_rules(path)
        except RulesError as exc:
            print(str(exc), file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: OK, version {rules.version}")
        print(format_ruleset(rules))
    if failed:
        _error(f"{failed} of {len(files)} rules files invalid")
    return EXIT_FAILURE if failed else EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from polymarket_kafka.models import MarketSnapshot
    from polymarket_kafka.replay.history import HistoryError, ReplayMarket, load_market
    from polymarket_kafka.ruleset import RulesError, format_explain

    market_id: str = args.market_id
    try:
        rules, note = _load_rules(args.rules)
        market = (
            load_market(args.market, default_id=market_id)
            if args.market is not None
            else ReplayMarket(market_id=market_id)
        )
    except (RulesError, HistoryError) as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    if args.market is not None and market.market_id != market_id:
        print(
            f"note: {args.market} describes {market.market_id}; its category, tags, liquidity "
            f"and volume are applied to {market_id}",
            file=sys.stderr,
        )
    snapshot = MarketSnapshot(
        market_id=market_id,
        question=market.question,
        yes_price=0.5,  # resolution never depends on the price
        taken_at=datetime(2000, 1, 1, tzinfo=UTC),
        category=market.category,
        tags=market.tags,
        liquidity=market.liquidity,
        volume=market.volume,
    )
    print(note)
    print(format_explain(rules.resolve(snapshot), market_id))
    return EXIT_OK


# --- rules test ----------------------------------------------------------------------------


def _test(args: argparse.Namespace) -> int:
    from polymarket_kafka.replay.ruletest import (
        RuleTestError,
        format_case,
        load_rule_tests,
        run_case,
    )
    from polymarket_kafka.ruleset import RulesError

    passed = failed = invalid = 0
    for path in args.files:
        try:
            test_file = load_rule_tests(path)
            rules, note = _rules_for_test(test_file, args.rules)
        except (RuleTestError, RulesError) as exc:
            print(str(exc), file=sys.stderr)
            invalid += 1
            continue
        print(f"{path}: {len(test_file.cases)} tests, {note}")
        for case in test_file.cases:
            result = run_case(case, rules)
            passed += result.passed
            failed += not result.passed
            for line in format_case(result):
                print(line)
    verdict = "OK" if not failed and not invalid else "FAILED"
    summary = f"rules test {verdict}: {passed} passed, {failed} failing"
    if invalid:
        summary += f", {invalid} invalid test files"
    print(summary)
    return EXIT_OK if verdict == "OK" else EXIT_FAILURE


def _rules_for_test(test_file: RuleTestFile, override: Path | None) -> tuple[RuleSet, str]:
    if override is not None:
        rules, note = _load_rules(override)
        if test_file.rule_file is not None:
            note += f"; --rules overrides rule_files {test_file.rule_file}"
        return rules, note
    if test_file.rule_file is not None:
        from polymarket_kafka.ruleset import load_rules

        rules = load_rules(test_file.rule_file)
        return rules, f"rules {test_file.rule_file} (rule_files; version {rules.version})"
    return _load_rules(None)


# --- replay --------------------------------------------------------------------------------


def _replay(args: argparse.Namespace) -> int:
    from polymarket_kafka.replay.engine import replay
    from polymarket_kafka.replay.history import HistoryError, load_history, market_for
    from polymarket_kafka.replay.labels import LabelsError, format_scorecard, read_labels
    from polymarket_kafka.replay.summary import format_summary
    from polymarket_kafka.ruleset import RulesError

    histories: list[Path] = args.histories
    usage = _replay_usage(args)
    if usage is not None:
        _error(usage)
        return EXIT_USAGE
    try:
        rules, note = _load_rules(args.rules)
        labels = read_labels(args.labels) if args.labels is not None else None
        loaded = [(load_history(path), market_for(path, args.market)) for path in histories]
    except (RulesError, HistoryError, LabelsError) as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    results = [replay(series, market, rules) for series, market in loaded]
    try:
        written = _write_events(results, args.out)
    except OSError as exc:
        _error(f"cannot write events: {exc}")
        return EXIT_FAILURE
    print(format_summary(results, note), file=sys.stderr)
    scored = _score_labels(results, labels, args.labels) if labels is not None else None
    if scored is not None:
        print(format_scorecard(scored[0], str(args.labels)), file=sys.stderr)
    for line in written:
        print(line, file=sys.stderr)
    if args.plot is not None:
        from polymarket_kafka.replay.plot import PlotUnavailableError, plot_replays

        try:
            card, keys = scored if scored is not None else (None, None)
            plot_replays(results, args.plot, card, keys)
        except PlotUnavailableError as exc:
            _error(str(exc))
            return EXIT_USAGE
        except OSError as exc:
            _error(f"cannot write the plot: {exc}")
            return EXIT_FAILURE
        print(f"plot: {args.plot}", file=sys.stderr)
    return EXIT_OK


def _replay_usage(args: argparse.Namespace) -> str | None:
    """A usage error of `replay`, found before any file is read, or None."""
    histories: list[Path] = args.histories
    if args.market is not None and len(histories) > 1:
        return "--market describes one market: give a single HISTORY.json with it"
    resolved = [path.resolve() for path in histories]
    if len(set(resolved)) != len(resolved):
        return "a history file is given twice"
    if args.out is not None:
        from polymarket_kafka.replay.history import series_name

        names = [series_name(path) for path in histories]
        clash = sorted({name for name in names if names.count(name) > 1})
        if clash:
            return f"--out: several inputs would write {args.out / (clash[0] + '.jsonl')}"
        if args.out.exists() and not args.out.is_dir():
            return f"--out {args.out} exists and is not a directory"
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        return "--plot needs matplotlib: install polymarket-kafka[plot]"
    return None


def _write_events(results: Sequence[ReplayResult], out: Path | None) -> list[str]:
    """Events as JSON lines (exactly the Kafka values), to stdout or one file per input;
    returns what was written, for the end of the report."""
    if out is None:
        for result in results:
            for event in result.events:
                sys.stdout.write(event.to_kafka_value().decode("utf-8") + "\n")
        sys.stdout.flush()
        return []
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for result in results:
        target = out / f"{result.series.name}.jsonl"
        with target.open("wb") as handle:
            for event in result.events:
                handle.write(event.to_kafka_value() + b"\n")
        count = len(result.events)
        written.append(f"wrote {count} event{'' if count == 1 else 's'} to {target}")
    return written


def _score_labels(
    results: Sequence[ReplayResult], labels: Sequence[Label], labels_path: Path
) -> tuple[Scorecard, list[str]]:
    """The scorecard, and the name labels use for each result (for the plot)."""
    from polymarket_kafka.replay.labels import SeriesFacts, score, series_key

    facts = []
    for result in results:
        key = series_key(result.series.source, labels_path.parent)
        series = result.series
        facts.append(
            SeriesFacts(
                key=key if key is not None else f"(outside {labels_path.parent})/{series.name}",
                start=series.start,
                end=series.end,
                median_step_seconds=series.median_step_seconds,
                event_times=result.event_times(),
            )
        )
    return score(labels, facts), [f.key for f in facts]
