"""What every source type is, and the HTTP-and-JSON helpers they share.

A source knows HTTP and its upstream's JSON; it never touches the database or
notifications. ``poll`` returns a vendor-neutral Snapshot or raises a FetchError,
and ``advice`` says what a person can do when polling it fails.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from jobherald.config import Source, WatchedJob
from jobherald.errors import FetchError
from jobherald.fetch import Fetcher, Response
from jobherald.model import Snapshot

BODY_PREVIEW = 200


@dataclass(frozen=True, slots=True)
class Advice:
    """The words a source type gives to people when its jobs need attention."""

    # Where a person looks at a job: "the ROMA Connect console".
    console: str
    # What the endpoint should answer like: "ROMA Connect's job API".
    api: str
    # What to check after a 403, and after a 400 or 404.
    forbidden: str
    not_found: str
    # What to do when the service refuses the source's credentials (by auth method).
    credentials: Callable[[FetchError, Source], str]


def plain_credentials_advice(error: FetchError, source: Source) -> str:
    """Advice on refused credentials of the vendor-neutral methods (token, basic)."""
    where = f"source {source.name}"
    if source.auth.method == "basic":
        return f"Credentials rejected: check user and password_file of {where}."
    return f"Token rejected: put a new token in token_file (or token) of {where}."


@runtime_checkable
class ArchiveSource(Protocol):
    """A source whose jobs may leave an archive to keep (an export's file)."""

    async def download_archive(
        self,
        fetcher: Fetcher,
        job: WatchedJob,
        archive_id: str,
        sink: Callable[[bytes], Awaitable[None]],
        on_headers: Callable[[Mapping[str, str]], None] | None = None,
    ) -> Response:
        """Stream the archive into ``sink`` (``on_headers`` sees the answer's headers
        first); FetchError when it is not given."""
        ...


class JobSource(Protocol):
    """One configured source: polls its jobs."""

    config: Source
    advice: Advice

    async def poll(self, fetcher: Fetcher, job: WatchedJob) -> Snapshot: ...


SourceFactory = Callable[[Source, Callable[[], datetime] | None], JobSource]


def load_json(body: bytes) -> Any:
    """JSON from bytes; ValueError for anything that is not (bad bytes, nesting too deep)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("nested too deep") from None


def json_body(response: Response) -> Any:
    """The JSON of a 200 answer; FetchError (kind ``body``) if it is not JSON."""
    try:
        return load_json(response.body)
    except ValueError as exc:
        what = "nested too deep" if str(exc) == "nested too deep" else preview(response.body)
        raise FetchError(
            "body",
            f"answer is not JSON: {what}",
            request_id=request_id(response),
        ) from None


def request_id(response: Response) -> str | None:
    return response.headers.get("X-Request-Id") or response.headers.get("X-Openstack-Request-Id")


def http_error(
    response: Response,
    code: str | None,
    message: str | None,
    *,
    not_found: bool,
    source_wide: bool,
) -> FetchError:
    """A FetchError for an answer that is not a 200."""
    status = response.status
    return FetchError(
        "http",
        message or STATUS_TEXT.get(status, "unexpected answer"),
        status=status,
        error_code=code,
        request_id=request_id(response),
        retryable=status == 429 or status >= 500,
        source_wide=source_wide,
        not_found=not_found,
        retry_after=response.retry_after,
    )


STATUS_TEXT = {
    400: "bad request",
    401: "not authenticated",
    403: "forbidden",
    404: "no such job",
    409: "conflict",
    429: "too many requests",
    500: "server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}


def status_of(body: Any) -> tuple[dict[str, Any], str]:
    """A JSON object and its non-empty ``status`` text; ValueError if the answer has none."""
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    raw_status = body.get("status")
    if not isinstance(raw_status, str) or not raw_status.strip():
        raise ValueError("no 'status' field")
    return body, raw_status


def text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def time_of(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    return parse_time(value)


# Times a job can have: anything else (year 1, 9999) is taken as unknown.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


@lru_cache(maxsize=4096)
def parse_time(value: str) -> datetime | None:
    """An ISO 8601 time as aware UTC (a job's begin time is read again at every poll);
    None when it is not one, or lies outside 1970-2200."""
    if len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        parsed = parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return parsed if EARLIEST <= parsed < LATEST else None


def shorter(value: Any, limit: int = 40) -> str:
    """``repr`` of an upstream value, cut to ``limit`` characters (a 400-digit number)."""
    shown = repr(value) if isinstance(value, str | int | float) else type(value).__name__
    return shown if len(shown) <= limit else f"{shown[: limit - 1]}…"


def preview(body: bytes) -> str:
    shown = body[:BODY_PREVIEW].decode("utf-8", errors="replace")
    return repr(shown) if shown else "(empty)"
