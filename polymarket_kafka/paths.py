"""Where the service looks for its files when none is named: the `.env` file and the rules.

A module of its own, importing only `pathlib`, so the CLI's parser (`--help`, the offline
commands' help) and the `healthcheck` can name them without loading the configuration.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_ENV_FILE", "DEFAULT_RULES_PATH"]

#: Read when present; `--env-file` names another file, which must then exist.
DEFAULT_ENV_FILE = Path(".env")

#: The rules file used when `RULES_PATH` is not set and this file exists (else built-ins).
DEFAULT_RULES_PATH = Path("rules/default.yaml")
