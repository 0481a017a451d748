"""HTTP for every source: one shared aiohttp session, caps on requests in flight, retries.

A request that fails in a way a retry can mend (timeout, refused connection,
429, 500, 502, 503, 504) is tried again a bounded number of times, with
exponential backoff and jitter, waiting as long as ``Retry-After`` asks when it
asks for no more than ``max_retry_after``.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_result,
    stop_after_attempt,
)
from tenacity.stop import stop_base

from jobherald import __version__
from jobherald.errors import FetchError
from jobherald.timing import backoff

log = logging.getLogger(__name__)

USER_AGENT = f"jobherald/{__version__}"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
JSON_TYPE = "application/json;charset=utf8"
# Files are read in pieces of this size; a refusal's body is read up to this limit.
STREAM_CHUNK = 256 * 1024
ERROR_BODY_LIMIT = 64 * 1024
# The most of an answer read (after decompression) unless a source says otherwise.
DEFAULT_MAX_BODY = 4 * 1024 * 1024
# Downloads in flight at once (beside the polls, which they never hold up).
DOWNLOADS = 2


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: CIMultiDictProxy[str] = field(repr=False)
    body: bytes = field(repr=False)

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date. None
    when it asks for no pause at all (0, negative, a date past) or cannot be read: the
    usual backoff applies then (a pause of nothing would send the next request at once,
    whatever the source's budget)."""
    if not value:
        return None
    value = value.strip()[:100]
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - (now or datetime.now(UTC))).total_seconds()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None  # "inf", "nan": not a wait anyone can keep; 0 or less: no wait at all
    return seconds


# Set by whoever runs a poll under a source's request budget: awaited before each retry
# within the poll, it takes a token of that budget (the first attempt took one already).
RETRY_TOKEN: contextvars.ContextVar[Callable[[], Awaitable[None]] | None] = contextvars.ContextVar(
    "jobherald_retry_token", default=None
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 2
    backoff: float = 0.5
    max_backoff: float = 5.0
    max_retry_after: float = 10.0


class Fetcher:
    """Owns the one ``aiohttp.ClientSession`` the daemon uses; use as an async context."""

    def __init__(
        self,
        concurrency: int,
        host_concurrency: int = 0,
        policy: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._limit = asyncio.Semaphore(concurrency)
        self._downloads = asyncio.Semaphore(DOWNLOADS)
        self._concurrency = concurrency
        self._host_concurrency = host_concurrency
        self.policy = policy
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        # Whether requests may go out now (a replica whose lease lapsed says no).
        self.may_send: Callable[[], bool] = lambda: True

    async def __aenter__(self) -> Fetcher:
        connector = aiohttp.TCPConnector(
            limit=self._concurrency, limit_per_host=self._host_concurrency, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=30, connect=10),
            raise_for_status=False,
        )
        return self

    def identify(self, replica: str) -> None:
        """Name this replica in the User-Agent, so the upstream's logs show who polled."""
        if self._session is not None:
            self._session.headers["User-Agent"] = f"{USER_AGENT} (replica {replica})"

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(
        self,
        url: str,
        *,
        headers: dict[str, str],
        timeout: float,
        verify_tls: bool = True,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> Response:
        """GET ``url``, retrying what can mend; transport failures become a FetchError,
        and so does an answer of more than ``max_body`` bytes (after decompression)."""

        async def call() -> Response:  # every poll comes here: no layer more than needed
            return await self._once("GET", url, headers, None, timeout, verify_tls, max_body)

        return await self._retrying(call)

    async def post_json(
        self,
        url: str,
        payload: dict[str, Any],
        *,
        timeout: float,
        headers: dict[str, str] | None = None,
        verify_tls: bool = True,
    ) -> Response:
        all_headers = {"Content-Type": JSON_TYPE, **(headers or {})}
        return await self.request(
            "POST",
            url,
            headers=all_headers,
            body=json.dumps(payload).encode(),
            timeout=timeout,
            verify_tls=verify_tls,
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        timeout: float,
        body: bytes | None = None,
        verify_tls: bool = True,
        retry: bool = True,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> Response:
        """Send one request (``body``: the exact bytes, as signed); with ``retry``, again
        while it fails in a way that can mend. A request that starts something upstream
        (a job) is sent with ``retry=False``: a timeout must not start it twice."""

        async def call() -> Response:
            return await self._once(method, url, headers, body, timeout, verify_tls, max_body)

        if not retry:
            return await call()
        return await self._retrying(call)

    async def stream(
        self,
        url: str,
        *,
        headers: dict[str, str],
        timeout: float,
        sink: Callable[[bytes], Awaitable[None]],
        verify_tls: bool = True,
        on_headers: Callable[[Mapping[str, str]], None] | None = None,
    ) -> Response:
        """GET a file: a 200 answer's body goes to ``sink`` piece by piece as it arrives
        (the Response then holds no body); any other answer is read whole, up to 64 KB.

        ``timeout`` bounds connecting and each wait for more bytes, not the whole
        transfer (the caller bounds that). ``on_headers`` sees a 200 answer's headers
        before its body is read (raising there ends the download, as raising in ``sink``
        does). Downloads take their own slots, never the polls'.
        """
        if self._session is None:
            raise RuntimeError("Fetcher used outside its context")
        limits = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
        async with self._downloads:
            if not self.may_send():
                raise FetchError("connection", "not sent: this replica may not act now")
            try:
                async with self._session.get(
                    url,
                    headers={"Accept": "application/zip, application/octet-stream, */*", **headers},
                    timeout=limits,
                    ssl=verify_tls,
                    allow_redirects=False,
                ) as response:
                    if response.status != 200:
                        body = await response.content.read(ERROR_BODY_LIMIT)
                        return Response(response.status, response.headers, body)
                    if on_headers is not None:
                        on_headers(response.headers)
                    async for chunk in response.content.iter_chunked(STREAM_CHUNK):
                        await sink(chunk)
                    return Response(response.status, response.headers, b"")
            except TimeoutError:
                raise FetchError("timeout", f"no data for {timeout:g}s", retryable=True) from None
            except aiohttp.ClientError as exc:
                raise FetchError("connection", _describe(exc), retryable=True) from None

    async def _retrying(self, call: Callable[[], Awaitable[Response]]) -> Response:
        policy = self.policy
        # The first attempt goes straight out: almost every poll needs no more, and
        # building the retry machinery for each would cost a fifth of a poll's CPU.
        try:
            first = await call()
        except FetchError as exc:
            if not exc.retryable or policy.retries == 0:
                raise
            wait, what = self._backoff(1), str(exc)
        else:
            if not _transient_response(first) or policy.retries == 0:
                return first
            asked = first.retry_after
            if asked is not None and asked > policy.max_retry_after:
                return first
            wait, what = (asked if asked is not None else self._backoff(1)), f"HTTP {first.status}"
        log.debug("attempt 1 failed (%s); trying again in %.2fs", what, wait)
        await self._sleep(wait)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.retries) | stop_when(self._asked_to_wait_long),
            wait=self._wait,
            retry=retry_if_exception(_transient) | retry_if_result(_transient_response),
            retry_error_callback=_last_outcome,
            before_sleep=_log_retry,
            sleep=self._sleep,
        )
        spend = RETRY_TOKEN.get()
        if spend is None:
            response: Response = await retrying(call)
            return response

        async def charged() -> Response:
            await spend()
            return await call()

        response = await retrying(charged)
        return response

    def _asked_to_wait_long(self, state: RetryCallState) -> bool:
        wait = _retry_after_of(state)
        return wait is not None and wait > self.policy.max_retry_after

    def _backoff(self, attempt: int) -> float:
        policy = self.policy
        return backoff(policy.backoff, policy.max_backoff, attempt) + random.uniform(
            0, policy.backoff
        )

    def _wait(self, state: RetryCallState) -> float:
        wait = _retry_after_of(state)
        if wait is not None:
            return wait
        # The machinery starts at the second attempt.
        return self._backoff(state.attempt_number + 1)

    async def _once(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
        verify_tls: bool,
        max_body: int,
    ) -> Response:
        if self._session is None:
            raise RuntimeError("Fetcher used outside its context")
        limits = self._timeouts.get(timeout)
        if limits is None:
            limits = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        async with self._limit:
            if not self.may_send():
                # Waited for a slot while this replica's lease lapsed: do not send at all.
                raise FetchError("connection", "not sent: this replica may not poll now")
            try:
                async with self._session.request(
                    method,
                    url,
                    headers=headers,
                    data=body,
                    timeout=limits,
                    ssl=verify_tls,
                    allow_redirects=False,
                ) as response:
                    length = response.content_length
                    if length is not None and length > max_body:
                        raise _too_large(max_body)
                    body = await _read_up_to(response, max_body)
                    return Response(response.status, response.headers, body)
            except TimeoutError:
                raise FetchError(
                    "timeout", f"no answer within {timeout:g}s", retryable=True
                ) from None
            except aiohttp.ClientError as exc:
                raise FetchError("connection", _describe(exc), retryable=True) from None


async def _read_up_to(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, decompressed; a FetchError as soon as it passes ``limit`` bytes
    (aiohttp inflates a compressed body piece by piece, so a small bomb stays small)."""
    pieces: list[bytes] = []
    size = 0
    while piece := await response.content.read(STREAM_CHUNK):
        size += len(piece)
        if size > limit:
            raise _too_large(limit)
        pieces.append(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _too_large(limit: int) -> FetchError:
    return FetchError("body", f"answer larger than {format_size(limit)} (the source's max_body)")


def format_size(size: int) -> str:
    """``4 MB``, ``512 KB``, ``1500 bytes``: a size as a person reads it (powers of 1024)."""
    for unit, factor in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


class stop_when(stop_base):
    def __init__(self, predicate: Callable[[RetryCallState], bool]) -> None:
        self.predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.predicate(retry_state)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, FetchError) and exc.retryable


def _transient_response(response: Response) -> bool:
    return response.status in RETRY_STATUSES


def _retry_after_of(state: RetryCallState) -> float | None:
    outcome = state.outcome
    if outcome is None or outcome.failed:
        return None
    response = outcome.result()
    return response.retry_after if isinstance(response, Response) else None


def _last_outcome(state: RetryCallState) -> Response:
    assert state.outcome is not None
    result: Response = state.outcome.result()  # raises the last FetchError
    return result


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    assert outcome is not None
    what = str(outcome.exception()) if outcome.failed else f"HTTP {outcome.result().status}"
    wait = state.next_action.sleep if state.next_action else 0.0
    log.debug("attempt %d failed (%s); trying again in %.2fs", state.attempt_number + 1, what, wait)


def _describe(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.strerror or exc.os_error}"
    text = str(exc) or type(exc).__name__
    return text[:200]
