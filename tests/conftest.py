"""Shared test configuration.

Async tests run on every backend the service claims: Trio (the default) and asyncio.
Server fixtures (a real Tansu broker, a real MongoDB wire-protocol server) live in
`tests/plugins/` and start on free loopback ports, once per session.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.plugins.tansu", "tests.plugins.mongo_server"]


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
