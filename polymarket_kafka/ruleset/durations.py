"""Duration strings of the rules file: `90s`, `15m`, `1h30m`, `2d`, `0s`.

A duration is one or more `<integer><unit>` parts with units `d`, `h`, `m`, `s`, in that
order, each at most once. Bare numbers are refused on purpose: `window: 15` could mean
seconds or minutes, and a rules file is read by people far more often than it is written.
"""

from __future__ import annotations

import math
import re

__all__ = ["DURATION_PATTERN", "format_duration", "parse_duration"]

#: The accepted syntax, also published in the JSON Schema (`rules/schema.json`).
DURATION_PATTERN = r"^(?=\d)(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?$"

_PARTS = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_duration(text: str) -> float:
    """Seconds of a duration string: `parse_duration("1h30m") == 5400.0`.

    Raises ValueError, with a message that says what is accepted, for anything else
    (including bare numbers, negative values, unknown units and units out of order).
    """
    match = _PARTS.fullmatch(text)
    if not text or match is None:
        if re.fullmatch(r"[+-]?\d+(?:\.\d+)?", text.strip()):
            hint = "a bare number"
        else:
            hint = "units are d, h, m, s, in that order, each at most once"
        raise ValueError(f"use a duration like 15m, 90s or 1h30m, got {text!r} ({hint})")
    return float(
        sum(
            int(part) * size for part, (_, size) in zip(match.groups(), _UNITS, strict=True) if part
        )
    )


def format_duration(seconds: float) -> str:
    """The shortest duration string for `seconds`: 5400 → `1h30m`, 0 → `0s`.

    Whole seconds round-trip through `parse_duration`; a fractional amount (only possible
    from a subscription override) is shown in seconds, e.g. `90.5s`.
    """
    if not math.isfinite(seconds) or seconds < 0:
        return f"{seconds}s"
    if seconds != int(seconds):
        return f"{seconds:g}s"
    remaining = int(seconds)
    parts: list[str] = []
    for unit, size in _UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
