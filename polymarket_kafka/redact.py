"""Secret scrubbing: the one place that decides what a secret looks like in text.

Used by the log formatter (every line, tracebacks included), the health reports, the MongoDB
store's error messages, the configuration's display of its URI and the Kafka outage lines.
Pure and stdlib-only; nothing here can raise on its input.

- `redact_uri(uri)`: a URI for display, its user info replaced by `***:***`.
- `uri_credentials(uri)`: the secrets a URI carries (its user info and password, as written
  and percent-decoded; both readings of a malformed one with an unescaped `@`).
- `hide_server_credentials(servers)`: a comma-separated server list with any `user@` hidden.
- `Redactor(secrets, uris=())`: scrubs text -- each URI in `uris` becomes its redacted form,
  each secret becomes `***` whether written as is or escaped the way `repr()` or JSON write
  it, then the user info of any URL in the text becomes `***:***` (`***` without a `:`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["Redactor", "hide_server_credentials", "redact_uri", "uri_credentials"]

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#]*)@")
_SERVER_USERINFO = re.compile(r"^(?P<scheme>\s*(?:[A-Za-z][\w+.\-]*://)?).*@")


def redact_uri(uri: str) -> str:
    """Replace the password (and user) of a URI's authority with `***`."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable uri>"
    if "@" not in parts.netloc:
        return uri
    hosts = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***:***@{hosts}"))


def uri_credentials(uri: str | None) -> set[str]:
    """The user info and password of `uri`, as written and percent-decoded (non-empty)."""
    authority = (uri or "").partition("://")[2].split("/", 1)[0]
    # A malformed URI (an unescaped "@") is ambiguous: hide both readings of its user info.
    secrets: set[str] = set()
    for userinfo in {authority.rpartition("@")[0], authority.partition("@")[0]} - {authority}:
        password = userinfo.partition(":")[2]
        secrets |= {userinfo, unquote(userinfo), password, unquote(password)}
    secrets.discard("")
    return secrets


def hide_server_credentials(servers: str) -> str:
    """`host:port,...` with any `user:password@` of an entry replaced by `***@`."""
    return ",".join(_SERVER_USERINFO.sub(r"\g<scheme>***@", entry) for entry in servers.split(","))


class Redactor:
    """Scrubs secrets from text (see the module notes). Calling it is pure and cannot raise."""

    def __init__(self, secrets: Iterable[str] = (), *, uris: Iterable[str] = ()) -> None:
        # Whole URIs first (kept readable in their redacted form), then the secrets, longest
        # first, so that no fragment survives inside a longer match.
        self._uris = [(uri, redact_uri(uri)) for uri in uris if uri and uri_credentials(uri)]
        forms = {form for secret in secrets if secret for form in _written_forms(secret)}
        values = sorted(forms, key=len, reverse=True)
        self._secrets = re.compile("|".join(map(re.escape, values))) if values else None

    def __call__(self, text: str) -> str:
        for uri, redacted in self._uris:
            text = text.replace(uri, redacted)
        if self._secrets is not None:
            text = self._secrets.sub("***", text)
        return _USERINFO.sub(_hide_userinfo, text)


def _written_forms(secret: str) -> set[str]:
    """`secret` as it may appear in a line: verbatim, inside a `repr()` and inside JSON."""
    # repr() escapes character by character, except `'`: escaped only when repr() chose `'`
    # quotes, which depends on the whole string shown, so both forms. (A character followed
    # by `"` is always shown in `'` quotes; [1:-2] drops the quotes and the `"`.)
    escaped = [repr(char + '"')[1:-2] for char in secret]
    return {
        secret,
        "".join(escaped),
        "".join("'" if char == "'" else form for char, form in zip(secret, escaped, strict=True)),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }


def _hide_userinfo(match: re.Match[str]) -> str:
    hidden = "***:***" if ":" in match["userinfo"] else "***"
    return f"{match['scheme']}{hidden}@"
