"""HTTP for every source: one shared aiohttp session and a global cap on requests in flight."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from multidict import CIMultiDictProxy

from jobherald import __version__
from jobherald.errors import FetchError

log = logging.getLogger(__name__)

USER_AGENT = f"jobherald/{__version__}"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class Fetcher:
    """Owns the one ``aiohttp.ClientSession`` the daemon uses; use as an async context."""

    def __init__(self, concurrency: int) -> None:
        self._limit = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fetcher:
        connector = aiohttp.TCPConnector(limit=self._concurrency, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=30, connect=10),
            raise_for_status=False,
        )
        return self

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
        self, url: str, *, headers: dict[str, str], timeout: float, verify_tls: bool = True
    ) -> Response:
        """GET ``url``; transport failures become a retryable FetchError."""
        if self._session is None:
            raise RuntimeError("Fetcher used outside its context")
        async with self._limit:
            try:
                async with self._session.get(
                    url,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    ssl=verify_tls,
                    allow_redirects=False,
                ) as response:
                    body = await response.read()
                    return Response(response.status, response.headers, body)
            except TimeoutError:
                raise FetchError(
                    "timeout", f"no answer within {timeout:g}s", retryable=True
                ) from None
            except aiohttp.ClientError as exc:
                raise FetchError("connection", _describe(exc), retryable=True) from None


def _describe(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.strerror or exc.os_error}"
    text = str(exc) or type(exc).__name__
    return text[:200]
