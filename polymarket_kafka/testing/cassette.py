"""Replay recorded Polymarket responses from a vcrpy cassette, without vcrpy or a network.

The embedded demo and some tests feed `open_polymarket_client(transport=CassetteTransport(...))`
from the YAML files in `cassettes/`. The file format is the one vcrpy writes:

```yaml
interactions:
- request: {method: POST, uri: "https://clob.polymarket.com/midpoints", body: "[...]",
            headers: {...}}
  response: {status: {code: 200, message: OK}, headers: {Content-Type: [application/json]},
             body: {string: "{...}"}}
version: 1
```

Matching: method, URL path, query (as a multiset of pairs, so parameter order does not
matter) and body (parsed JSON compared for equality when both sides are JSON, so whitespace
does not matter; otherwise raw bytes). The host is deliberately not matched, so a cassette
recorded against the real hosts also serves a client configured with other base URLs.

Repeats: identical requests are answered by their recorded interactions in recorded order,
like vcrpy with `allow_playback_repeats=False`. Once a request's interactions are used up,
`repeat_last=True` keeps replaying the last one (the demo polls a fixed number of cycles and
then stops; a slower or longer run sees a flat price instead of a crash), and
`repeat_last=False` raises `CassetteExhaustedError`. A request no interaction matches raises
`CassetteMismatchError` naming the request. Both are `CassetteError`, deliberately *not*
`httpx.TransportError`, so the client does not retry them: a cassette that does not fit the
code is a bug to see, not an outage to ride out.

No I/O happens after construction (a file path is read once, in the constructor), so
the transport works unchanged under Trio and asyncio. `respond` gives the same answers to a
synchronous caller: `polymarket_kafka.testing.cassette_server` serves them over loopback HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import yaml

from polymarket_kafka.polymarket.errors import excerpt

__all__ = [
    "CassetteError",
    "CassetteExhaustedError",
    "CassetteMismatchError",
    "CassetteTransport",
]

_NOT_JSON = object()


class CassetteError(LookupError):
    """A request the cassette cannot answer."""


class CassetteMismatchError(CassetteError):
    """No recorded interaction matches the request."""


class CassetteExhaustedError(CassetteError):
    """Every interaction recorded for this request was already played (`repeat_last=False`)."""


@dataclass(frozen=True)
class _Key:
    method: str
    path: str
    query: tuple[tuple[str, str], ...]


@dataclass
class _Interaction:
    key: _Key
    body: bytes
    json_body: object
    status: int
    reason: str | None
    headers: list[tuple[str, str]]
    content: bytes
    plays: int = 0


def _as_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise CassetteError(f"unsupported body type in cassette: {type(value).__name__}")


def _parse_json(body: bytes) -> object:
    if not body.strip():
        return _NOT_JSON
    try:
        return json.loads(body)
    except ValueError:
        return _NOT_JSON


def _key(method: str, url: str) -> _Key:
    parts = urlsplit(url)
    query = tuple(sorted(parse_qsl(parts.query, keep_blank_values=True)))
    return _Key(method.upper(), parts.path or "/", query)


def _headers(raw: object) -> list[tuple[str, str]]:
    if not isinstance(raw, Mapping):
        return []
    pairs: list[tuple[str, str]] = []
    for name, values in raw.items():
        # vcrpy stores every header as a list of values; accept a bare string too.
        for value in values if isinstance(values, list) else [values]:
            pairs.append((str(name), str(value)))
    return pairs


def _interaction(raw: object, index: int) -> _Interaction:
    if not isinstance(raw, Mapping):
        raise CassetteError(f"interaction #{index} is not a mapping")
    try:
        request, response = raw["request"], raw["response"]
        body = _as_bytes(request.get("body"))
        status = response["status"]
        return _Interaction(
            key=_key(str(request["method"]), str(request["uri"])),
            body=body,
            json_body=_parse_json(body),
            status=int(status["code"]),
            reason=status.get("message"),
            headers=_headers(response.get("headers")),
            content=_as_bytes((response.get("body") or {}).get("string")),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise CassetteError(f"interaction #{index} is malformed: {exc!r}") from exc


def _load(path: str | PathLike[str]) -> Mapping[str, object]:
    """Read a cassette YAML file (plain YAML only: no Python-object tags)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, Mapping):
        raise CassetteError(f"{path}: not a vcrpy cassette (top level is not a mapping)")
    return data


class CassetteTransport(httpx.AsyncBaseTransport):
    """An httpx transport answering from recorded interactions (see the module docstring)."""

    def __init__(
        self, cassette: str | PathLike[str] | Mapping[str, object], *, repeat_last: bool = False
    ) -> None:
        """`cassette` is a YAML file path (read here, once) or an already loaded mapping."""
        if not isinstance(cassette, Mapping):
            cassette = _load(cassette)
        interactions = cassette.get("interactions")
        if not isinstance(interactions, list):
            raise CassetteError("cassette has no 'interactions' list")
        self._interactions = [_interaction(raw, i) for i, raw in enumerate(interactions)]
        self.repeat_last = repeat_last
        self.requests: list[httpx.Request] = []

    @property
    def play_count(self) -> int:
        """How many responses were served (repeats of the last one included)."""
        return len(self.requests)

    @property
    def all_played(self) -> bool:
        """True once every recorded interaction was served at least once."""
        return all(interaction.plays for interaction in self._interactions)

    def _matches(self, interaction: _Interaction, key: _Key, body: bytes) -> bool:
        if interaction.key != key:
            return False
        parsed = _parse_json(body)
        if parsed is not _NOT_JSON and interaction.json_body is not _NOT_JSON:
            return parsed == interaction.json_body
        return body.strip() == interaction.body.strip()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        return self.respond(request)

    def respond(self, request: httpx.Request) -> httpx.Response:
        """The recorded answer to `request`, whose body must be read (`request.content`).

        Synchronous and free of I/O, for callers outside an event loop (the loopback
        `CassetteServer`); not thread-safe: serialise concurrent callers.
        """
        body = request.content
        key = _key(request.method, str(request.url))
        candidates = [i for i in self._interactions if self._matches(i, key, body)]
        if not candidates:
            raise CassetteMismatchError(
                f"no cassette interaction for {request.method} {request.url} "
                f"body={excerpt(body.decode('utf-8', errors='replace'), 120)!r}"
            )
        fresh = [i for i in candidates if i.plays == 0]
        if fresh:
            chosen = fresh[0]
        elif self.repeat_last:
            chosen = candidates[-1]
        else:
            raise CassetteExhaustedError(
                f"all {len(candidates)} interaction(s) for {request.method} {request.url} "
                "were already played (construct with repeat_last=True to replay the last one)"
            )
        chosen.plays += 1
        self.requests.append(request)
        extensions = {"reason_phrase": chosen.reason.encode("ascii")} if chosen.reason else {}
        return httpx.Response(
            chosen.status,
            headers=chosen.headers,
            content=chosen.content,
            request=request,
            extensions=extensions,
        )
