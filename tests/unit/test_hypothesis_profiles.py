"""The hypothesis profiles of tests/conftest.py: a busy machine cannot fail a property test."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SLOWER_THAN_HYPOTHESIS_DEFAULT_DEADLINE = 0.3  # seconds; its default deadline is 200 ms


@pytest.mark.parametrize("name", ["default", "ci"])
def test_no_profile_has_a_deadline_or_a_too_slow_check(name: str) -> None:
    profile = settings.get_profile(name)
    assert profile.deadline is None
    assert HealthCheck.too_slow in profile.suppress_health_check


def test_the_ci_profile_replays_the_same_examples_every_run() -> None:
    assert settings.get_profile("ci").derandomize
    assert settings.get_profile("ci").database is None
    assert not settings.get_profile("default").derandomize  # a developer's run explores


def test_the_loaded_profile_is_one_of_them() -> None:
    loaded = settings.default
    assert loaded is not None
    assert loaded.deadline is None
    assert HealthCheck.too_slow in loaded.suppress_health_check


@settings(max_examples=2)
@given(st.integers(0, 1))
def test_a_slow_example_is_not_a_failure(n: int) -> None:
    # As a loaded 2-core machine makes any example: slower than the default deadline.
    time.sleep(SLOWER_THAN_HYPOTHESIS_DEFAULT_DEADLINE)
    assert n in (0, 1)
