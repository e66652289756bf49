"""The environment the configuration is read from: the process environment over an optional
`.env` file (python-dotenv, imported only when the file exists).

Standard library otherwise, so `healthcheck` can read HTTP_HOST/HTTP_PORT without loading the
configuration (bench/cli_startup.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from polymarket_kafka.env_reader import ConfigError

__all__ = ["check_env_file", "merged_env"]


def merged_env(environ: Mapping[str, str] | None, env_file: Path | None) -> dict[str, str]:
    """`.env` values first, then `environ` (default: `os.environ`) on top: the environment
    wins. A missing `env_file` is skipped (`check_env_file` refuses one named explicitly)."""
    merged: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        from dotenv import dotenv_values  # only with a file: the healthcheck rarely has one

        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ if environ is None else environ)
    return merged


def check_env_file(path: Path) -> None:
    """Raise `ConfigError` unless `path` is a readable file (for an explicit `--env-file`)."""
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "no such file"
        raise ConfigError("--env-file", f"{problem}: {path}")
