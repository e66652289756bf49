"""Logging set-up for the command line (text for terminals; JSON arrives with the ops work)."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Send log records to stderr in a readable single-line format.

    Leaves an already configured root logger alone (an embedding application, pytest).
    """
    logging.basicConfig(level=level.upper(), format=_FORMAT)
    # librdkafka and httpx are chatty at INFO about every request/connection.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
