"""The Polymarket HTTP client: batched midpoints (CLOB) and market metadata (Gamma).

Why this file is over 400 lines: one client class whose two endpoints share the pooled
connection, the rate limiter, the retry policy and the bisection of bad batches; the pure
parts are in `parsing`, `retry`, `ratelimit` and `results`.

One pooled `httpx.AsyncClient` serves both hosts; `open_polymarket_client` owns it. Every
request goes through the same path: the rate limiter, the request, the retry policy.

Batching follows what the live API accepts (shared/polymarket-api.md §1.5, §2.1):

- `POST /midpoints` with `[{"token_id": ...}]`, at most 500 items. The documented GET plural
  forms answer `400 Invalid payload` live. One token without an order book can fail a whole
  chunk with 400/404, so such a chunk is bisected until the bad tokens are isolated (bounded
  by `max_bisect_requests` per call, so a 400 for *every* request cannot fan out into ~1000).
  Tokens isolated that way are remembered and sent alone in later calls, so a market with a
  dead book costs one extra request per cycle instead of a fresh bisection (~18 requests).
- Gamma `GET /markets?condition_ids=a&condition_ids=b&limit=N`, at most 100 ids. Gamma
  silently drops closed markets unless `closed=true` is sent, so ids the first pass did not
  return are asked again with `closed=true`; ids found in neither pass are failures.

Errors: a per-id problem lands in the batch's `failures`, never in an exception. A chunk that
fails as a whole (unavailable, malformed) marks its ids failed; only when *no* chunk of a call
succeeded does the call raise that error, so the caller sees "the API is down" as one
exception and "three markets are broken" as three failures. `PolymarketBlockedError` (HTML
403) always raises at once.

Chunks run concurrently (`max_concurrency`, default 4) because the rate limiter, not the
connection, should be the bottleneck: the limiter spaces request *starts*, and concurrency
lets their latencies overlap.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TypeVar

import anyio
import httpx

from polymarket_kafka.config import PolymarketConfig
from polymarket_kafka.polymarket.errors import (
    MalformedPayloadError,
    PolymarketBlockedError,
    PolymarketError,
    PolymarketHTTPError,
    PolymarketUnavailableError,
    excerpt,
)
from polymarket_kafka.polymarket.parsing import (
    load_json,
    parse_markets,
    parse_midpoints,
)
from polymarket_kafka.polymarket.ratelimit import Clock, RateLimiter, Sleep
from polymarket_kafka.polymarket.results import ClientStats, MetadataBatch, PriceBatch
from polymarket_kafka.polymarket.retry import (
    RetryPolicy,
    error_message,
    is_retryable_status,
    non_retryable_error,
)

__all__ = [
    "ClientStats",
    "MetadataBatch",
    "PolymarketClient",
    "PriceBatch",
    "open_polymarket_client",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

MIDPOINTS_ENDPOINT = "POST /midpoints"
GAMMA_MARKETS_ENDPOINT = "GET /markets"
MAX_MIDPOINTS_PER_REQUEST = 500
MAX_GAMMA_IDS_PER_REQUEST = 100
_BISECTABLE_STATUSES = (400, 404)
_CLOSE_GRACE_SECONDS = 5.0
_MAX_ISOLATED = 10_000
_USER_AGENT = "polymarket-kafka/0.1 (+httpx)"


@dataclass
class _BisectBudget:
    remaining: int

    def take(self, requests: int) -> bool:
        if self.remaining < requests:
            return False
        self.remaining -= requests
        return True


def _chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(i for i in ids if i))


ChunkFailures = list[tuple[list[str], PolymarketError]]


class PolymarketClient:
    """Read-only Polymarket market data. Build it with `open_polymarket_client`.

    Methods are safe to call concurrently; each call is bounded by the retry policy (no call
    waits forever, given the configured request timeout).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        config: PolymarketConfig,
        *,
        limiter: RateLimiter,
        retry_policy: RetryPolicy,
        stats: ClientStats,
        sleep: Sleep,
        max_concurrency: int = 4,
        midpoints_per_request: int = MAX_MIDPOINTS_PER_REQUEST,
        gamma_ids_per_request: int = MAX_GAMMA_IDS_PER_REQUEST,
        max_bisect_requests: int = 64,
    ) -> None:
        if not 1 <= midpoints_per_request <= MAX_MIDPOINTS_PER_REQUEST:
            raise ValueError(f"midpoints_per_request must be in 1..{MAX_MIDPOINTS_PER_REQUEST}")
        if not 1 <= gamma_ids_per_request <= MAX_GAMMA_IDS_PER_REQUEST:
            raise ValueError(f"gamma_ids_per_request must be in 1..{MAX_GAMMA_IDS_PER_REQUEST}")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self._http = http
        self._midpoints_url = f"{config.base_url.rstrip('/')}/midpoints"
        self._gamma_markets_url = f"{config.gamma_url.rstrip('/')}/markets"
        self._limiter = limiter
        self._policy = retry_policy
        self._sleep = sleep
        self._max_concurrency = max_concurrency
        self._midpoints_per_request = midpoints_per_request
        self._gamma_ids_per_request = gamma_ids_per_request
        self._max_bisect_requests = max_bisect_requests
        # Tokens that failed alone with 400/404; bounded so it cannot grow without limit.
        self._isolated: set[str] = set()
        self.stats = stats

    # --- public API ------------------------------------------------------------------------

    async def fetch_midpoints(self, token_ids: Sequence[str]) -> PriceBatch:
        """Midpoint of every token, via `POST /midpoints` in chunks of <= 500.

        Duplicates and empty ids are dropped; request bodies keep the caller's order. Raises
        `PolymarketBlockedError`, or the chunk error when every chunk failed as a whole.
        """
        tokens = _unique(token_ids)
        batch = PriceBatch()
        if not tokens:
            return batch
        budget = _BisectBudget(self._max_bisect_requests)

        async def one_chunk(chunk: list[str]) -> None:
            await self._midpoints_chunk(chunk, batch, budget)

        healthy = [t for t in tokens if t not in self._isolated]
        chunks = _chunks(healthy, self._midpoints_per_request)
        chunks += [[t] for t in tokens if t in self._isolated]
        failed = await self._for_each_chunk(chunks, one_chunk)
        self._fail_chunks(failed, batch.failures, total=len(tokens))
        return batch

    async def fetch_markets(self, condition_ids: Sequence[str]) -> MetadataBatch:
        """Gamma metadata for every condition id, open or closed (chunks of <= 100 ids).

        Raises `PolymarketBlockedError`, or the chunk error when every first-pass chunk
        failed as a whole. Ids Gamma knows nothing about fail with "not found".
        """
        ids = _unique(condition_ids)
        batch = MetadataBatch()
        if not ids:
            return batch

        async def open_pass(chunk: list[str]) -> None:
            await self._gamma_chunk(chunk, batch, closed=False)

        async def closed_pass(chunk: list[str]) -> None:
            await self._gamma_chunk(chunk, batch, closed=True)

        size = self._gamma_ids_per_request
        failed = await self._for_each_chunk(_chunks(ids, size), open_pass)
        self._fail_chunks(failed, batch.failures, total=len(ids))
        missing = [i for i in ids if i not in batch.markets and i not in batch.failures]
        if missing:
            failed = await self._for_each_chunk(_chunks(missing, size), closed_pass)
            self._fail_chunks(failed, batch.failures, total=None)
        for market_id in ids:
            if market_id not in batch.markets and market_id not in batch.failures:
                batch.failures[market_id] = "not found on Gamma (neither open nor closed)"
        return batch

    # --- chunks ----------------------------------------------------------------------------

    async def _midpoints_chunk(
        self, chunk: list[str], batch: PriceBatch, budget: _BisectBudget
    ) -> None:
        """Fill `batch` for `chunk`; raises `PolymarketError` if the chunk failed as a whole."""
        body = [{"token_id": token_id} for token_id in chunk]
        try:
            parsed = await self._fetch(
                MIDPOINTS_ENDPOINT,
                "POST",
                self._midpoints_url,
                lambda payload: parse_midpoints(payload, chunk),
                json_body=body,
            )
        except PolymarketHTTPError as exc:
            if exc.status not in _BISECTABLE_STATUSES:
                raise
            if len(chunk) == 1:
                batch.failures[chunk[0]] = f"HTTP {exc.status}: {exc.body_excerpt}"
                if len(self._isolated) >= _MAX_ISOLATED:
                    self._isolated.clear()
                self._isolated.add(chunk[0])
                return
            if not budget.take(2):
                raise
            self.stats.bisections += 1
            logger.info(
                "POST /midpoints: HTTP %d for %d tokens, bisecting",
                exc.status,
                len(chunk),
                extra={"endpoint": MIDPOINTS_ENDPOINT},
            )
            half = len(chunk) // 2
            for part in (chunk[:half], chunk[half:]):
                try:
                    await self._midpoints_chunk(part, batch, budget)
                except PolymarketBlockedError:
                    raise
                except PolymarketError as part_exc:
                    for token_id in part:
                        batch.failures[token_id] = str(part_exc)
            return
        self._isolated.difference_update(parsed.prices)
        batch.prices.update(parsed.prices)
        batch.failures.update(parsed.failures)
        malformed = [t for t, why in parsed.failures.items() if why.startswith("malformed")]
        if malformed:
            self.stats.malformed_items += len(malformed)
            logger.warning(
                "POST /midpoints: %d malformed price(s), e.g. %s: %s",
                len(malformed),
                malformed[0],
                parsed.failures[malformed[0]],
                extra={"endpoint": MIDPOINTS_ENDPOINT},
            )

    async def _gamma_chunk(self, chunk: list[str], batch: MetadataBatch, *, closed: bool) -> None:
        params: list[tuple[str, str]] = [("condition_ids", market_id) for market_id in chunk]
        params.append(("limit", str(len(chunk))))
        if closed:
            params.append(("closed", "true"))
        parsed = await self._fetch(
            GAMMA_MARKETS_ENDPOINT, "GET", self._gamma_markets_url, parse_markets, params=params
        )
        # Gamma ids are lower-case hex; map back to the caller's spelling of each id, and
        # ignore rows nobody asked for (a mistyped filter makes Gamma return arbitrary rows).
        wanted = {market_id.lower(): market_id for market_id in chunk}
        for returned_id, market in parsed.markets.items():
            requested = wanted.get(returned_id.lower())
            if requested is None:
                logger.debug(
                    "Gamma /markets returned an unrequested market %s",
                    returned_id,
                    extra={"endpoint": GAMMA_MARKETS_ENDPOINT, "market_id": returned_id},
                )
                continue
            batch.markets[requested] = replace(market, market_id=requested)
            batch.failures.pop(requested, None)
        for key, reason in parsed.failures.items():
            self.stats.malformed_items += 1
            logger.warning(
                "Gamma /markets: %s: %s", key, reason, extra={"endpoint": GAMMA_MARKETS_ENDPOINT}
            )
            requested = wanted.get(key.lower())
            if requested is not None and requested not in batch.markets:
                batch.failures[requested] = reason

    async def _for_each_chunk(
        self, chunks: list[list[str]], work: Callable[[list[str]], Awaitable[None]]
    ) -> ChunkFailures:
        """Run `work` on every chunk, at most `max_concurrency` at once.

        Returns the chunks whose work raised a `PolymarketError` (other than blocked), with
        the error. A blocked error or an unexpected exception cancels the rest and is
        re-raised as itself (not wrapped in an exception group).
        """
        failed: ChunkFailures = []
        if self._max_concurrency == 1 or len(chunks) == 1:
            # Sequential keeps the request order deterministic (Trio shuffles task starts).
            for chunk in chunks:
                try:
                    await work(chunk)
                except PolymarketBlockedError:
                    raise
                except PolymarketError as exc:
                    failed.append((chunk, exc))
            return failed

        fatal: list[Exception] = []
        slots = anyio.CapacityLimiter(self._max_concurrency)

        async def run(chunk: list[str], scope: anyio.CancelScope) -> None:
            async with slots:
                try:
                    await work(chunk)
                except PolymarketBlockedError as exc:
                    fatal.append(exc)
                    scope.cancel()
                except PolymarketError as exc:
                    failed.append((chunk, exc))
                except Exception as exc:  # noqa: BLE001 - re-raised unwrapped below
                    fatal.append(exc)
                    scope.cancel()

        async with anyio.create_task_group() as group:
            for chunk in chunks:
                group.start_soon(run, chunk, group.cancel_scope)
        if fatal:
            raise fatal[0]
        return failed

    @staticmethod
    def _fail_chunks(failed: ChunkFailures, failures: dict[str, str], *, total: int | None) -> None:
        """Mark failed chunks' ids; raise the first error if they cover all `total` ids."""
        if not failed:
            return
        if total is not None and sum(len(chunk) for chunk, _ in failed) == total:
            raise failed[0][1]
        for chunk, exc in failed:
            for item_id in chunk:
                failures[item_id] = str(exc)

    # --- one request -----------------------------------------------------------------------

    async def _fetch(
        self,
        endpoint: str,
        method: str,
        url: str,
        parse: Callable[[object], T],
        *,
        params: list[tuple[str, str]] | None = None,
        json_body: object = None,
    ) -> T:
        """Send, decode JSON and `parse` it; a whole-payload problem is counted and raised."""
        response = await self._send(endpoint, method, url, params=params, json_body=json_body)
        try:
            return parse(load_json(response.content, endpoint))
        except MalformedPayloadError:
            self.stats.malformed_payloads += 1
            raise

    async def _send(
        self,
        endpoint: str,
        method: str,
        url: str,
        *,
        params: list[tuple[str, str]] | None,
        json_body: object,
    ) -> httpx.Response:
        """One logical request: rate limit, send, retry; returns a 2xx response or raises."""
        attempts = self._policy.max_retries + 1
        query = httpx.QueryParams(tuple(params)) if params is not None else None
        last_problem = "no attempt made"
        for attempt in range(attempts):
            waited = await self._limiter.wait()
            if waited > 0:
                self.stats.rate_limit_waits += 1
                self.stats.rate_limit_wait_seconds += waited
            response: httpx.Response | None = None
            # The event loop's clock, not the limiter's (tests may fake that one).
            started = anyio.current_time()
            try:
                response = await self._http.request(method, url, params=query, json=json_body)
            except httpx.TimeoutException as exc:
                self.stats.record(endpoint, "timeout", anyio.current_time() - started)
                last_problem = f"timeout ({type(exc).__name__})"
            except httpx.TransportError as exc:
                self.stats.record(endpoint, "transport_error", anyio.current_time() - started)
                last_problem = f"transport error ({type(exc).__name__}: {exc})"
            except httpx.DecodingError as exc:
                self.stats.record(endpoint, "decoding_error", anyio.current_time() - started)
                self.stats.malformed_payloads += 1
                raise MalformedPayloadError(f"{endpoint}: undecodable body: {exc}") from exc
            else:
                elapsed = anyio.current_time() - started
                self.stats.record(endpoint, str(response.status_code), elapsed)
                if response.is_success:
                    return response
                if not is_retryable_status(response.status_code):
                    raise non_retryable_error(response)
                last_problem = f"HTTP {response.status_code}: {excerpt(error_message(response))}"
            if attempt + 1 < attempts:
                delay = self._policy.delay(attempt, response)
                self.stats.retries += 1
                logger.warning(
                    "%s: %s; retry %d/%d in %.2fs",
                    endpoint,
                    last_problem,
                    attempt + 1,
                    self._policy.max_retries,
                    delay,
                    extra={"endpoint": endpoint, "attempt": attempt + 1},
                )
                await self._sleep(delay)
        raise PolymarketUnavailableError(url, attempts, last_problem)


@asynccontextmanager
async def open_polymarket_client(
    config: PolymarketConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    stats: ClientStats | None = None,
    retry_policy: RetryPolicy | None = None,
    sleep: Sleep | None = None,
    clock: Clock | None = None,
    max_concurrency: int = 4,
) -> AsyncIterator[PolymarketClient]:
    """Open the pooled HTTP client and yield a `PolymarketClient`; close it on exit.

    `transport` replaces the network (tests: `httpx.MockTransport`; demo: `CassetteTransport`).
    `retry_policy` defaults to `RetryPolicy(max_retries=config.max_retries)`; when given, its
    own `max_retries` wins. `sleep` (default `anyio.sleep`) is used for both the rate limiter
    and retry backoff, and `clock` (default `anyio.current_time`) drives the rate limiter, so
    tests can run without waiting. Closing is shielded and bounded.
    """
    do_sleep: Sleep = sleep or anyio.sleep
    http = httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(config.request_timeout_seconds),
        limits=httpx.Limits(
            max_connections=max(2 * max_concurrency, 4),
            max_keepalive_connections=max(2 * max_concurrency, 4),
        ),
        headers={"Accept": "application/json", "User-Agent": _USER_AGENT},
    )
    try:
        yield PolymarketClient(
            http,
            config,
            limiter=RateLimiter.from_delay_ms(
                config.rate_limit_delay_ms, clock=clock, sleep=do_sleep
            ),
            retry_policy=retry_policy or RetryPolicy(max_retries=config.max_retries),
            stats=stats if stats is not None else ClientStats(),
            sleep=do_sleep,
            max_concurrency=max_concurrency,
        )
    finally:
        with anyio.move_on_after(_CLOSE_GRACE_SECONDS, shield=True):
            await http.aclose()
