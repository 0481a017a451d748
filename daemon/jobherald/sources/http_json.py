"""Any job API that answers JSON (``type = "http-json"``): a URL template and JMESPath.

The source's ``url`` names the job (``{job_id}`` and the job's ``params``, each
URL-quoted); ``status`` is a JMESPath expression giving the status word, which the
``succeeded``, ``failed`` and ``running`` lists map to a state (any other word:
``unknown``); optional expressions give progress, reasons, times and a link.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import jmespath
from jmespath.exceptions import JMESPathError

from jobherald.config import BasicAuth, HttpJsonSettings, NoAuth, Source, TokenAuth, WatchedJob
from jobherald.errors import FetchError
from jobherald.fetch import Fetcher, Response
from jobherald.model import Reason, Snapshot, State
from jobherald.sources.base import (
    EARLIEST,
    LATEST,
    Advice,
    http_error,
    json_body,
    plain_credentials_advice,
    request_id,
    shorter,
    text,
    time_of,
)
from jobherald.sources.huawei_auth import (
    Credentials,
    StaticToken,
    credentials_advice,
    make_credentials,
    send_with_credentials,
)


def _credentials_advice(error: FetchError, source: Source) -> str:
    # password and aksk are Huawei Cloud's IAM; bearer and basic are the service's own.
    if source.auth.method in ("password", "aksk"):
        return credentials_advice(error, source)
    return plain_credentials_advice(error, source)


ADVICE = Advice(
    console="the service's own page for the job",
    api="the JSON this source's expressions expect",
    forbidden="Check that the source's credentials may read this job.",
    not_found="Check the job's id and params, and the source's url.",
    credentials=_credentials_advice,
)


class BasicCredentials:
    """HTTP basic authentication: the same header on every request."""

    method = "basic"

    def __init__(self, config: BasicAuth) -> None:
        pair = f"{config.user}:{config.password.get_secret_value()}".encode()
        self._header = "Basic " + base64.b64encode(pair).decode()

    async def apply(
        self, fetcher: Fetcher, method: str, url: str, headers: dict[str, str], body: bytes = b""
    ) -> str | None:
        headers["Authorization"] = self._header
        return None

    def invalidate(self, used: str | None) -> bool:
        return False


class NoCredentials:
    method = "none"

    async def apply(
        self, fetcher: Fetcher, method: str, url: str, headers: dict[str, str], body: bytes = b""
    ) -> str | None:
        return None

    def invalidate(self, used: str | None) -> bool:
        return False


def _credentials(source: Source, clock: Callable[[], datetime] | None) -> Credentials:
    auth = source.auth
    if isinstance(auth, TokenAuth):
        return StaticToken(auth)
    if isinstance(auth, BasicAuth):
        return BasicCredentials(auth)
    if isinstance(auth, NoAuth):
        return NoCredentials()
    return make_credentials(auth, source.project_id, source.timeout, *([clock] if clock else []))


class HttpJson:
    """One http-json source."""

    advice = ADVICE

    def __init__(self, config: Source, clock: Callable[[], datetime] | None = None) -> None:
        settings = config.settings
        assert isinstance(settings, HttpJsonSettings)
        self.config = config
        self.settings = settings
        self.reader = Reader(settings)
        self.credentials = _credentials(config, clock)
        self._headers = dict(settings.headers)

    def url_for(self, job: WatchedJob) -> str:
        # Made for each poll (a few microseconds): kept for 100,000 jobs, 20 MB.
        values = {key: quote(value, safe="") for key, value in job.params}
        values["job_id"] = quote(job.upstream_id, safe="")
        return self.settings.url.format(**values)

    async def poll(self, fetcher: Fetcher, job: WatchedJob) -> Snapshot:
        response = await send_with_credentials(
            fetcher,
            self.credentials,
            self.url_for(job),
            self.config,
            _refused,
            method=self.settings.method,
            headers=self._headers,
        )
        return self.reader.snapshot(response)


def _refused(response: Response) -> bool:
    return response.status == 401


class Reader:
    """Reads answers with a source's compiled expressions and word lists."""

    def __init__(self, settings: HttpJsonSettings) -> None:
        self.settings = settings
        self.status = jmespath.compile(settings.status)
        self.optional = {
            key: jmespath.compile(expression)
            for key in ("progress", "reasons", "begin_time", "end_time", "link")
            if (expression := getattr(settings, key)) is not None
        }
        self.words: dict[str, State] = {}
        for words, state in (
            (settings.succeeded, State.SUCCEEDED),
            (settings.failed, State.FAILED),
            (settings.running, State.RUNNING),
        ):
            self.words.update((w.strip().lower(), state) for w in words)

    def snapshot(self, response: Response) -> Snapshot:
        if response.status in self.settings.not_found:
            raise http_error(response, None, _message(response), not_found=True, source_wide=False)
        if not 200 <= response.status < 300:
            raise http_error(
                response,
                None,
                _message(response),
                not_found=False,
                source_wide=response.status == 401,
            )
        body = json_body(response)
        try:
            return self.read(body)
        except (ValueError, TypeError, JMESPathError) as exc:
            raise FetchError(
                "body", f"unexpected answer: {exc}", request_id=request_id(response)
            ) from None

    def read(self, body: Any) -> Snapshot:
        raw = self.status.search(body)
        if isinstance(raw, bool) or raw is None or isinstance(raw, dict | list):
            raise ValueError(f"the status expression gave {raw!r}, not a word")
        word = str(raw).strip()
        if not word:
            raise ValueError("the status expression gave an empty word")
        return Snapshot(
            state=self.words.get(word.lower(), State.UNKNOWN),
            raw_status=word[:64],
            progress=self._progress(self._search("progress", body)),
            reasons=_reasons(self._search("reasons", body)),
            begin_time=_time(self._search("begin_time", body)),
            end_time=_time(self._search("end_time", body)),
            link=_link(self._search("link", body)),
        )

    def _search(self, key: str, body: Any) -> Any:
        expression = self.optional.get(key)
        return None if expression is None else expression.search(body)

    def _progress(self, value: Any) -> float | None:
        if value is None or isinstance(value, bool):
            return None
        try:
            number = float(value) / self.settings.progress_scale
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"progress {shorter(value)} is not a number") from None
        if not math.isfinite(number):  # NaN, or "1e999" (infinity): neither is a fraction
            raise ValueError(f"progress {shorter(value)} is not a number")
        return min(max(number, 0.0), 1.0)


def _reasons(value: Any) -> tuple[Reason, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        value = [value]
    out = []
    for item in value:
        if isinstance(item, Mapping):
            out.append(
                Reason(
                    resource_type=text(item.get("resource_type") or item.get("type")),
                    resource_name=text(item.get("resource_name") or item.get("name")),
                    error_code=text(item.get("error_code") or item.get("code")),
                    error_msg=text(
                        item.get("error_msg") or item.get("message") or item.get("reason")
                    ),
                )
            )
        elif item is not None and item != "":
            out.append(Reason(None, None, None, str(item)))
    return tuple(out)


def _time(value: Any) -> datetime | None:
    """An ISO 8601 text, or seconds since the epoch."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            when = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
        return when if EARLIEST <= when < LATEST else None
    return time_of(value)


def _link(value: Any) -> str | None:
    if isinstance(value, str) and value.startswith(("https://", "http://")):
        return value
    return None


def _message(response: Response) -> str | None:
    """A short reason from an error body: ``message``, ``error.message``, ``error`` or ``detail``."""
    try:
        data = json_body(response)
    except FetchError:
        return None
    if not isinstance(data, Mapping):
        return None
    nested = data.get("error")
    if isinstance(nested, Mapping):
        data = nested
    for key in ("message", "error_msg", "error", "detail", "reason"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value[:200]
    return None
