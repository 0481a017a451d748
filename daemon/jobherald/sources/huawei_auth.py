"""Credentials for Huawei Cloud APIs: a fixed token, an IAM password token, or AK/SK signing.

Each kind adds its headers to a request (``apply``) and says whether trying again
with fresh credentials can help after the service rejected them (``invalidate``).
No secret ever goes into an exception, a log line or a repr.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote, unquote

from yarl import URL

from jobherald.auth import TokenAuth, read_secret
from jobherald.config import AuthConfig, Source
from jobherald.errors import FetchError
from jobherald.fetch import JSON_TYPE, Fetcher, Response
from jobherald.sources.base import BODY_PREVIEW, load_json, parse_time
from jobherald.sources.huawei_config import AkSkAuth, PasswordAuth
from jobherald.timing import utcnow

log = logging.getLogger(__name__)

# Refresh an IAM token this long before IAM says it expires.
TOKEN_MARGIN = timedelta(minutes=10)
# After a failed token fetch, polls waiting for a token share that failure this long.
FAILURE_HOLD = timedelta(seconds=30)
SIGNING_ALGORITHM = "SDK-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class Credentials(Protocol):
    method: str

    async def apply(
        self, fetcher: Fetcher, method: str, url: str, headers: dict[str, str], body: bytes = b""
    ) -> str | None:
        """Add the credential headers (a signature covers ``body``, the exact bytes sent);
        return a marker of what was used (for ``invalidate``)."""

    def invalidate(self, used: str | None) -> bool:
        """The service rejected ``used``: forget it, and say whether a retry can help."""


class StaticToken:
    """A token given inline, or read from a file again whenever the file changes."""

    method = "token"

    def __init__(self, config: TokenAuth) -> None:
        # An IAM token goes in X-Auth-Token; an http-json source's token is a bearer token.
        self._header, self._prefix = (
            ("Authorization", "Bearer ") if config.bearer else ("X-Auth-Token", "")
        )
        self._file = config.token_file
        self._token = config.token.get_secret_value() if config.token else None
        self._stamp: tuple[int, int] | None = None
        self._marks: dict[str, str] = {}  # token -> its fingerprint, worked out once

    def _current(self) -> str:
        if self._file is None:
            assert self._token is not None
            return self._token
        try:
            stat = os.stat(self._file)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp or self._token is None:
                token = read_secret(self._file).get_secret_value()
                if not token:
                    raise FetchError("auth", f"token_file {self._file} is empty", source_wide=True)
                if self._stamp is not None:
                    log.info("token_file %s changed: using the new token", self._file)
                self._token, self._stamp = token, stamp
        except OSError as exc:
            raise FetchError(
                "auth", f"cannot read token_file {self._file}: {exc.strerror}", source_wide=True
            ) from None
        return self._token

    async def apply(
        self, fetcher: Fetcher, method: str, url: str, headers: dict[str, str], body: bytes = b""
    ) -> str | None:
        token = self._current()
        headers[self._header] = self._prefix + token
        return self._mark(token)

    def _mark(self, token: str) -> str:
        mark = self._marks.get(token)
        if mark is None:
            self._marks = {token: (mark := _fingerprint(token))}
        return mark

    def invalidate(self, used: str | None) -> bool:
        # Only a token file can change under us; a retry helps if it has.
        return self._file is not None and self._mark(self._current()) != used


class IamPassword:
    """An IAM token fetched with a password, cached until shortly before it expires.

    However many polls need a token at once, one request is made; after a
    rejection the token is fetched again once.
    """

    method = "password"

    def __init__(
        self, config: PasswordAuth, *, timeout: float, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.config = config
        self.timeout = timeout
        self.clock = clock
        self.fetches = 0
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._expires_at: datetime | None = None
        self._failure: tuple[FetchError, datetime] | None = None

    def _fresh(self) -> str | None:
        if self._token is None or self._expires_at is None:
            return None
        if self.clock() >= self._expires_at - TOKEN_MARGIN:
            return None
        return self._token

    async def apply(
        self, fetcher: Fetcher, method: str, url: str, headers: dict[str, str], body: bytes = b""
    ) -> str | None:
        token = self._fresh()
        if token is None:
            async with self._lock:
                token = self._fresh()
                if token is None:
                    token = await self._fetch(fetcher)
        headers["X-Auth-Token"] = token
        return _fingerprint(token)

    def invalidate(self, used: str | None) -> bool:
        if self._token is not None and _fingerprint(self._token) == used:
            log.info("IAM token rejected by the service: fetching a new one")
            self._token = self._expires_at = None
        return True

    def _body(self) -> dict[str, Any]:
        c = self.config
        scope = {"id": c.project_id} if c.project_id else {"name": c.project}
        return {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": c.user,
                            "password": c.password.get_secret_value(),
                            "domain": {"name": c.domain},
                        }
                    },
                },
                "scope": {"project": scope},
            }
        }

    async def _fetch(self, fetcher: Fetcher) -> str:
        now = self.clock()
        if self._failure is not None and now < self._failure[1]:
            raise self._failure[0]
        self.fetches += 1
        try:
            response = await fetcher.post_json(
                f"{self.config.iam_endpoint}/v3/auth/tokens",
                self._body(),
                timeout=self.timeout,
            )
        except FetchError as exc:
            error = FetchError(
                "auth", f"cannot reach IAM: {exc.message}", retryable=True, source_wide=True
            )
            self._failure = (error, now + FAILURE_HOLD)
            raise error from None
        token = response.headers.get("X-Subject-Token")
        if response.status not in (200, 201) or not token:
            code, message = error_fields(response.body)
            error = FetchError(
                "auth",
                f"IAM refused the token request: {message or 'no token in the answer'}",
                status=response.status,
                error_code=code,
                request_id=response.headers.get("X-Request-Id"),
                source_wide=True,
            )
            self._failure = (error, now + FAILURE_HOLD)
            raise error
        self._failure = None
        self._token = token
        self._expires_at = _expiry(response.body, now)
        log.info(
            "fetched an IAM token for %s, valid until %s",
            self.config.user,
            self._expires_at.isoformat(timespec="seconds"),
        )
        return token


def _expiry(body: bytes, now: datetime) -> datetime:
    try:
        expires = parse_time(load_json(body)["token"]["expires_at"])
    except (ValueError, KeyError, TypeError, AttributeError):
        expires = None
    return expires if expires is not None else now + timedelta(hours=23)


class AkSkSigner:
    """Signs every request with SDK-HMAC-SHA256."""

    method = "aksk"

    def __init__(
        self, config: AkSkAuth, project_id: str, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.config = config
        self.project_id = project_id
        self.clock = clock

    async def apply(
        self, fetcher: Fetcher, method: str, url: str, headers: dict[str, str], body: bytes = b""
    ) -> str | None:
        headers["X-Project-Id"] = self.project_id
        if self.config.security_token is not None:
            headers["X-Security-Token"] = self.config.security_token.get_secret_value()
        headers.update(
            sign(
                self.config.ak,
                self.config.sk.get_secret_value(),
                method,
                url,
                headers,
                body,
                self.clock(),
            )
        )
        return None

    def invalidate(self, used: str | None) -> bool:
        return False


def _encode(text: str) -> str:
    return quote(text, safe="~")


def canonical_request(
    method: str, url: URL, headers: Mapping[str, str], signed: list[str], body: bytes
) -> str:
    segments = unquote(url.raw_path).split("/")
    path = "/".join(_encode(s) for s in segments)
    if not path.endswith("/"):
        path += "/"
    query = "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(url.query.items()))
    lowered = {k.lower(): v.strip() for k, v in headers.items()}
    canonical_headers = "".join(f"{name}:{lowered[name]}\n" for name in signed)
    payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
    return "\n".join([method.upper(), path, query, canonical_headers, ";".join(signed), payload])


def sign(
    ak: str,
    sk: str,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
) -> dict[str, str]:
    """The headers that sign a request: ``X-Sdk-Date``, ``Host`` and ``Authorization``."""
    parsed = URL(url)
    host = parsed.raw_host or ""
    if parsed.port is not None and not parsed.is_default_port():
        host = f"{host}:{parsed.port}"
    date = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    added = {"X-Sdk-Date": date, "Host": host}
    every = {**headers, **added}
    signed = sorted(k.lower() for k in every if "_" not in k)
    request = canonical_request(method, parsed, every, signed, body)
    to_sign = f"{SIGNING_ALGORITHM}\n{date}\n{hashlib.sha256(request.encode()).hexdigest()}"
    signature = hmac.new(sk.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    added["Authorization"] = (
        f"{SIGNING_ALGORITHM} Access={ak}, SignedHeaders={';'.join(signed)}, Signature={signature}"
    )
    return added


def _fingerprint(token: str) -> str:
    """A stand-in for a token that can be compared but not used."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def make_credentials(
    config: AuthConfig, project_id: str, timeout: float, clock: Callable[[], datetime] = utcnow
) -> Credentials:
    if isinstance(config, TokenAuth):
        return StaticToken(config)
    if isinstance(config, PasswordAuth):
        return IamPassword(config, timeout=timeout, clock=clock)
    if isinstance(config, AkSkAuth):
        return AkSkSigner(config, project_id, clock)
    raise TypeError(f"{config.method} is not a Huawei Cloud credential")


# Answers of Huawei Cloud's API gateway that say the credentials are bad (not that they
# lack a permission); each service adds its own.
GATEWAY_AUTH_CODES = frozenset({"APIG.1002"})


def rejects_credentials(response: Response, codes: frozenset[str] = GATEWAY_AUTH_CODES) -> bool:
    """Whether an answer says the credentials were refused (so fresh ones may help)."""
    if response.status == 401:
        return True
    if response.status == 403:
        code, _ = error_fields(response.body)
        return code in codes
    return False


async def send_with_credentials(
    fetcher: Fetcher,
    credentials: Credentials,
    url: str,
    source: Source,
    refused: Callable[[Response], bool],
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    retry: bool = True,
    sink: Callable[[bytes], Awaitable[None]] | None = None,
    on_headers: Callable[[Mapping[str, str]], None] | None = None,
) -> Response:
    """Send a request with these credentials (a POST without ``body`` sends ``{}``); once
    more with fresh ones if ``refused`` says the service refused them. With ``sink``, a GET
    whose 200 body is streamed there (a file; ``on_headers`` sees its headers first)."""
    if method == "POST" and body is None:
        body = b"{}"
    base = dict(headers or {})
    if body is not None:
        base.setdefault("Content-Type", JSON_TYPE)
    for attempt in range(2):
        sent = dict(base)
        used = await credentials.apply(fetcher, method, url, sent, body or b"")
        if sink is not None:
            response = await fetcher.stream(
                url,
                headers=sent,
                timeout=source.timeout,
                sink=sink,
                verify_tls=source.verify_tls,
                on_headers=on_headers,
            )
        elif method == "GET":
            response = await fetcher.get(
                url,
                headers=sent,
                timeout=source.timeout,
                verify_tls=source.verify_tls,
                max_body=source.max_body,
            )
        else:
            response = await fetcher.request(
                method,
                url,
                headers=sent,
                body=body,
                timeout=source.timeout,
                verify_tls=source.verify_tls,
                retry=retry,
                max_body=source.max_body,
            )
        if attempt == 0 and refused(response) and credentials.invalidate(used):
            continue
        return response
    raise AssertionError("unreachable")


def error_fields(body: bytes) -> tuple[str | None, str | None]:
    """``error_code`` and ``error_msg`` of Huawei Cloud's error shape, or of the gateway's
    and IAM's ``{"error": {...}}``."""
    try:
        data = load_json(body)
    except ValueError:
        return None, None
    if not isinstance(data, Mapping):
        return None, None
    nested = data.get("error")
    if isinstance(nested, Mapping):
        data = nested
    code = data.get("error_code", data.get("code"))
    if not isinstance(code, str) or not code:  # IAM repeats the HTTP status as its "code"
        code = None
    message = data.get("error_msg", data.get("message"))
    if not isinstance(message, str | int | float) or isinstance(message, bool):
        message = None  # a list or an object is no message
    return (
        code[:BODY_PREVIEW] if code is not None else None,
        str(message)[:BODY_PREVIEW] if message else None,
    )


def credentials_advice(error: FetchError, source: Source) -> str:
    """What to do when Huawei Cloud refuses a source's credentials, by auth method."""
    where = f"source {source.name}"
    method = source.auth.method
    if method == "password":
        if error.kind == "auth" and error.retryable:
            return f"Check that iam_endpoint of {where} is reachable from this machine."
        return f"Token rejected by IAM: check user, password_file, domain and project of {where}."
    if method == "aksk":
        return f"Signature rejected: check ak and sk_file of {where}, and this machine's clock."
    return (
        f"Token rejected: put a new token in token_file (or token) of {where}; "
        "IAM tokens expire after 24 hours."
    )
