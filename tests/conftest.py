"""Shared test configuration.

Async tests run on every backend the service claims: Trio (the default) and asyncio.
Server fixtures (a real Tansu broker, a real MongoDB wire-protocol server) live in
`tests/plugins/` and start on free loopback ports, once per session.

Hypothesis profiles, chosen by `HYPOTHESIS_PROFILE` (else hypothesis picks `ci` where the `CI`
variable is set, as `.ci/run` does, and `default` elsewhere): neither has a per-example deadline
or the "too slow" health check, so a busy machine cannot fail a property test (timings belong
in bench/). `ci` runs the same examples on every run (derandomize, no example database), so a
CI result is reproducible; `default` keeps exploring new ones. Both print the blob that
reproduces a failure (`@reproduce_failure`).

Coverage is measured on the example-based tests: property tests, and the replay of the real
histories, run with the coverage tracer stopped (`tests/plugins/untraced.py`).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.plugins.tansu", "tests.plugins.mongo_server", "tests.plugins.untraced"]

_LOAD_PROOF: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow],
    "print_blob": True,
}
_BUILT_IN_DEFAULT = settings.get_profile("default")  # a parent that never depends on `CI`
settings.register_profile("default", _BUILT_IN_DEFAULT, **_LOAD_PROOF)
settings.register_profile("ci", _BUILT_IN_DEFAULT, **_LOAD_PROOF, derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or settings.get_current_profile_name())


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
