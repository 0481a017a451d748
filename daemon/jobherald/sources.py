"""Job sources: how to ask an upstream about a job, and how to read its answer.

A source knows HTTP and the upstream's JSON; it never touches the database or
notifications. It returns a Snapshot or raises a FetchError.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from jobherald.config import Source, WatchedJob
from jobherald.errors import FetchError
from jobherald.fetch import Fetcher, Response
from jobherald.model import Reason, Snapshot, state_from_status

_BODY_PREVIEW = 200


# Answers that say the credentials are bad (not that they lack a permission).
AUTH_CODES = frozenset({"APIG.1002", "ROMA.1000", "ROMA.1002"})
# Answers that say the job does not exist.
NOT_FOUND_CODES = frozenset({"ROMA.00110006"})


class RomaConnect:
    """Huawei Cloud ROMA Connect asset jobs (``check_asset_job_status``)."""

    def __init__(self, config: Source, clock: Callable[[], datetime] | None = None) -> None:
        from jobherald.auth import make_credentials

        self.config = config
        self.credentials = make_credentials(
            config.auth, config.project_id, config.timeout, *([clock] if clock else [])
        )
        self._urls: dict[tuple[str, str], str] = {}

    def url_for(self, job: WatchedJob) -> str:
        key = (job.instance_id, job.id)
        url = self._urls.get(key)
        if url is None:
            c = self.config
            url = self._urls[key] = (
                f"{c.endpoint}/v2/{quote(c.project_id, safe='')}/instances/"
                f"{quote(job.instance_id, safe='')}/assets/jobs/{quote(job.id, safe='')}"
            )
        return url

    def forget(self, job_id: str, instance_id: str) -> None:
        """Drop what is kept for a job that left the config."""
        self._urls.pop((instance_id, job_id), None)

    async def poll(self, fetcher: Fetcher, job: WatchedJob) -> Snapshot:
        """One job's snapshot; with fresh credentials once more if the service rejected them."""
        url = self.url_for(job)
        for attempt in range(2):
            headers: dict[str, str] = {}
            used = await self.credentials.apply(fetcher, "GET", url, headers)
            response = await fetcher.get(
                url, headers=headers, timeout=self.config.timeout, verify_tls=self.config.verify_tls
            )
            if (
                attempt == 0
                and _rejects_credentials(response)
                and self.credentials.invalidate(used)
            ):
                continue
            return parse_response(response)
        raise AssertionError("unreachable")


def _rejects_credentials(response: Response) -> bool:
    if response.status == 401:
        return True
    if response.status == 403:
        code, _ = error_fields(response.body)
        return code in AUTH_CODES
    return False


def parse_response(response: Response) -> Snapshot:
    if response.status != 200:
        raise _http_error(response, response.headers.get("X-Request-Id"))
    try:
        body = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        raise FetchError(
            "body",
            f"answer is not JSON: {_preview(response.body)}",
            request_id=response.headers.get("X-Request-Id"),
        ) from None
    try:
        return parse_job(body)
    except (ValueError, TypeError) as exc:
        raise FetchError(
            "body", f"unexpected answer: {exc}", request_id=response.headers.get("X-Request-Id")
        ) from None


def parse_job(body: Any) -> Snapshot:
    """Read a 200 body of "Obtaining Job Progress" into a Snapshot; ValueError if it is not one."""
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    raw_status = body.get("status")
    if not isinstance(raw_status, str) or not raw_status.strip():
        raise ValueError("no 'status' field")
    reasons_raw = body.get("reasons")
    if reasons_raw is None:
        reasons_raw = body.get("reason")
    return Snapshot(
        state=state_from_status(raw_status),
        raw_status=raw_status.strip(),
        progress=_progress(body.get("progress_percent")),
        type=_text(body.get("type")),
        archive_id=_text(body.get("archive_id")),
        reasons=_reasons(reasons_raw),
        begin_time=_time(body.get("begin_time")),
        end_time=_time(body.get("end_time")),
    )


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _progress(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"progress_percent {value!r} is not a number") from None
    if math.isnan(number) or number < 0:
        raise ValueError(f"progress_percent {value!r} is out of range")
    if number > 1.0:
        # Some answers give a percentage (35 for 35 %); the schema says 0..1.
        number = number / 100.0 if number <= 100.0 else 1.0
    return number


def _reasons(value: Any) -> tuple[Reason, ...]:
    if value is None:
        return ()
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ValueError("'reasons' is not a list")
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(Reason(None, None, None, item))
        elif isinstance(item, dict):
            out.append(
                Reason(
                    resource_type=_text(item.get("resource_type")),
                    resource_name=_text(item.get("resource_name")),
                    error_code=_text(item.get("error_code")),
                    error_msg=_text(item.get("error_msg")),
                )
            )
    return tuple(out)


def _time(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    return _parse_time(value)


@lru_cache(maxsize=4096)
def _parse_time(value: str) -> datetime | None:
    """An ISO 8601 time as aware UTC (a job's begin time is read again at every poll)."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _http_error(response: Response, request_id: str | None) -> FetchError:
    code, message = error_fields(response.body)
    status = response.status
    retryable = status == 429 or status >= 500
    if message is None:
        message = _STATUS_TEXT.get(status, "unexpected answer")
    return FetchError(
        "http",
        message,
        status=status,
        error_code=code,
        request_id=request_id or response.headers.get("X-Openstack-Request-Id"),
        retryable=retryable,
        source_wide=_rejects_credentials(response),
        not_found=status == 404 or code in NOT_FOUND_CODES,
        retry_after=response.retry_after,
    )


_STATUS_TEXT = {
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


def error_fields(body: bytes) -> tuple[str | None, str | None]:
    """``error_code`` and ``error_msg`` of ROMA's error shape, or of APIG/IAM's ``{"error": {...}}``."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(data, Mapping):
        return None, None
    nested = data.get("error")
    if isinstance(nested, Mapping):
        data = nested
    code = data.get("error_code", data.get("code"))
    if isinstance(code, int):  # IAM repeats the HTTP status as its "code"
        code = None
    message = data.get("error_msg", data.get("message"))
    return (
        str(code) if code is not None else None,
        str(message)[:_BODY_PREVIEW] if message else None,
    )


def _preview(body: bytes) -> str:
    text = body[:_BODY_PREVIEW].decode("utf-8", errors="replace")
    return repr(text) if text else "(empty)"


def make_source(config: Source, clock: Callable[[], datetime] | None = None) -> RomaConnect:
    return RomaConnect(config, clock)
