"""Every rule unit test shipped in rules/tests/ passes against the rules it names.

This is what makes `rules/default.yaml` safe to retune: a change that breaks a documented
behaviour (a glitch fires, a calm market fires, a tier stops applying) fails CI with the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from polymarket_kafka.replay.ruletest import format_case, load_rule_tests, run_case
from polymarket_kafka.ruleset import load_rules

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
TEST_FILES = sorted((RULES_DIR / "tests").glob("*.yaml"))


def test_the_rule_tests_exist_and_name_the_default_rules() -> None:
    assert len(TEST_FILES) >= 2
    for path in TEST_FILES:
        assert load_rule_tests(path).rule_file == RULES_DIR / "default.yaml", path


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda path: path.name)
def test_rule_test_file_passes(path: Path) -> None:
    test_file = load_rule_tests(path)
    assert test_file.rule_file is not None
    rules = load_rules(test_file.rule_file)
    failures = [
        line
        for case in test_file.cases
        for result in [run_case(case, rules)]
        if not result.passed
        for line in format_case(result)
    ]
    assert not failures, "\n".join([f"{path}:", *failures])
