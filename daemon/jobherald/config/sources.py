"""Resolving source tables: credentials, secrets from files, http-json's expressions."""

from __future__ import annotations

import errno
import re
import string
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    SecretStr,
)

from jobherald.config.model import (
    AkSkAuth,
    AuthConfig,
    BasicAuth,
    HttpJsonSettings,
    NoAuth,
    PasswordAuth,
    Source,
    TokenAuth,
)
from jobherald.config.sections import (
    _NAME,
    BasicAuthSection,
    BearerAuthSection,
    HttpJsonSource,
    HuaweiJobSource,
    HuaweiSource,
    PasswordAuthSection,
    RomaConnectSource,
    TokenAuthSection,
)
from jobherald.model import Rules

# A secret file is small: more than this is some other file named by mistake (/dev/zero).
MAX_SECRET = 64 * 1024


def read_secret(path: Path) -> SecretStr:
    """A secret file's content, without surrounding white space; OSError if unreadable."""
    with path.open("rb") as handle:
        data = handle.read(MAX_SECRET + 1)
    if len(data) > MAX_SECRET:
        raise OSError(errno.EFBIG, f"larger than {MAX_SECRET // 1024} KB (not a secret)")
    try:
        return SecretStr(data.decode("utf-8").strip())
    except UnicodeDecodeError:
        raise OSError(errno.EILSEQ, "not UTF-8 text") from None


# False while a command that needs no secret (status, history...) reads the config:
# secrets are then neither read from their files nor checked.
READ_SECRETS: ContextVar[bool] = ContextVar("read_secrets", default=True)
UNREAD = SecretStr("(not read)")
SECRET_KEYS = frozenset({"token", "password", "sk", "security_token", "heartbeat_url"})


class _Secrets:
    """Reads `key` / `key_file` pairs of one section, collecting problems."""

    def __init__(self, where: str, base: Path, problems: list[str]) -> None:
        self.where = where
        self.base = base
        self.problems = problems

    def path(self, path: Path) -> Path:
        return path if path.is_absolute() else self.base / path

    def get(
        self, key: str, inline: SecretStr | None, file: Path | None, *, required: bool = True
    ) -> SecretStr | None:
        if not READ_SECRETS.get():
            return UNREAD if inline is not None or file is not None else None
        if inline is not None and file is not None:
            self.problems.append(f"{self.where}: give one of {key} and {key}_file, not both")
            return None
        if inline is None and file is None:
            if required:
                self.problems.append(f"{self.where}: give one of {key} and {key}_file")
            return None
        secret = inline
        if file is not None:
            try:
                secret = read_secret(self.path(file))
            except OSError as exc:
                self.problems.append(
                    f"{self.where}.{key}_file: cannot read {self.path(file)}: {exc.strerror}"
                )
                return None
        assert secret is not None
        if not secret.get_secret_value():
            self.problems.append(f"{self.where}.{key}{'_file' if file else ''}: is empty")
            return None
        return secret


def _resolve_auth(
    section: HuaweiSource | HttpJsonSource, where: str, base: Path, problems: list[str]
) -> AuthConfig | None:
    auth = section.auth
    if auth is not None and (section.token is not None or section.token_file is not None):
        problems.append(f"{where}: give token/token_file or an [auth] table, not both")
        return None
    bearer = isinstance(section, HttpJsonSource)
    if auth is None:
        if bearer and section.token is None and section.token_file is None:
            return NoAuth()
        auth = TokenAuthSection(method="token", token=section.token, token_file=section.token_file)
        secrets = _Secrets(where, base, problems)
    else:
        secrets = _Secrets(f"{where}.auth", base, problems)
    if isinstance(auth, TokenAuthSection | BearerAuthSection):
        if secrets.get("token", auth.token, auth.token_file) is None:
            return None
        token_file = secrets.path(auth.token_file) if auth.token_file else None
        return TokenAuth(auth.token, token_file, "bearer" if bearer else "token", bearer)
    if isinstance(auth, BasicAuthSection):
        basic = secrets.get("password", auth.password, auth.password_file)
        return None if basic is None else BasicAuth(auth.user, basic)
    if isinstance(auth, PasswordAuthSection):
        password = secrets.get("password", auth.password, auth.password_file)
        if (auth.project is None) == (auth.project_id is None):
            problems.append(f"{where}.auth: give one of project and project_id")
            return None
        if password is None:
            return None
        return PasswordAuth(
            auth.iam_endpoint, auth.user, password, auth.domain, auth.project, auth.project_id
        )
    sk = secrets.get("sk", auth.sk, auth.sk_file)
    security_token = secrets.get(
        "security_token", auth.security_token, auth.security_token_file, required=False
    )
    if sk is None:
        return None
    return AkSkAuth(auth.ak, sk, security_token)


def _http_json_settings(
    section: HttpJsonSource, where: str, problems: list[str]
) -> HttpJsonSettings | None:
    """Check an http-json source's url, expressions and word lists; one line per problem."""
    before = len(problems)
    if not re.match(r"^https?://[^/\s{}]+", section.url):
        problems.append(f"{where}.url: {section.url!r} must start with https:// or http://host")
    placeholders = _placeholders(section.url, f"{where}.url", problems)
    _check_expressions(section, where, problems)
    _check_words(section, where, problems)
    for i, status in enumerate(section.not_found):
        if not 400 <= status <= 599:
            problems.append(f"{where}.not_found[{i}]: {status} is not an HTTP error status")
    if len(problems) > before:
        return None
    return HttpJsonSettings(
        url=section.url,
        method=section.method,
        headers=tuple(section.headers.items()),
        placeholders=frozenset(placeholders),
        status=section.status,
        succeeded=section.succeeded,
        failed=section.failed,
        running=section.running,
        progress=section.progress,
        progress_scale=section.progress_scale,
        reasons=section.reasons,
        begin_time=section.begin_time,
        end_time=section.end_time,
        link=section.link,
        not_found=frozenset(section.not_found),
    )


def _placeholders(url: str, where: str, problems: list[str]) -> set[str]:
    found: set[str] = set()
    try:
        for _, name, spec, conversion in string.Formatter().parse(url):
            if name is None:
                continue
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or spec or conversion:
                problems.append(f"{where}: bad placeholder {{{name}}}: use {{name}}")
            found.add(name)
    except ValueError as exc:
        problems.append(f"{where}: {exc} (write {{{{ and }}}} for literal braces)")
    return found


def _check_expressions(section: HttpJsonSource, where: str, problems: list[str]) -> None:
    import jmespath
    from jmespath.exceptions import JMESPathError

    for key in ("status", "progress", "reasons", "begin_time", "end_time", "link"):
        expression = getattr(section, key)
        if expression is None:
            continue
        try:
            jmespath.compile(expression)
        except JMESPathError as exc:
            detail = getattr(exc, "msg", None) or str(exc).splitlines()[0]
            problems.append(f"{where}.{key}: bad JMESPath {expression!r}: {detail}")


def _check_words(section: HttpJsonSource, where: str, problems: list[str]) -> None:
    seen: dict[str, str] = {}
    for key in ("succeeded", "failed", "running"):
        for i, word in enumerate(getattr(section, key)):
            folded = word.strip().lower()
            if not folded:
                problems.append(f"{where}.{key}[{i}]: empty word")
            elif folded in seen and seen[folded] != key:
                problems.append(f"{where}.{key}[{i}]: {word!r} is also in {seen[folded]}")
            seen.setdefault(folded, key)


def _resolve_source(
    name: str,
    section: RomaConnectSource | HuaweiJobSource | HttpJsonSource,
    base: Path,
    label: str,
    rules: Rules,
    problems: list[str],
) -> Source | None:
    where = f"{label}: sources.{name}"
    if not _NAME.match(name):
        problems.append(f"{where}: bad name (letters, digits, _.-)")
    auth = _resolve_auth(section, where, base, problems)
    if isinstance(section, HttpJsonSource):
        settings = _http_json_settings(section, where, problems)
        if auth is None or settings is None:
            return None
        parts = urlsplit(settings.url)
        return Source(
            name=name,
            endpoint=f"{parts.scheme}://{parts.netloc}",
            project_id="",
            instance_id=None,
            auth=auth,
            timeout=section.timeout,
            verify_tls=section.verify_tls,
            rules=section.over(rules),
            type=section.type,
            settings=settings,
            max_body=section.max_body,
            max_rate=section.max_rate,
            max_retry_after_source=section.max_retry_after_source,
        )
    archive_dir = None
    archive_limits: dict[str, Any] = {}
    if isinstance(section, RomaConnectSource):
        archive_limits = {
            "archive_timeout": section.archive_timeout,
            "max_archive_size": section.max_archive_size,
        }
    if isinstance(section, RomaConnectSource) and section.archive_dir is not None:
        archive_dir = section.archive_dir
        if not archive_dir.is_absolute():
            problems.append(f"{where}.archive_dir: {str(archive_dir)!r} must be an absolute path")
    if auth is None:
        return None
    return Source(
        name=name,
        endpoint=section.endpoint,
        project_id=section.project_id,
        instance_id=section.instance_id if isinstance(section, RomaConnectSource) else None,
        auth=auth,
        timeout=section.timeout,
        verify_tls=section.verify_tls,
        rules=section.over(rules),
        type=section.type,
        archive_dir=archive_dir,
        **archive_limits,
        max_body=section.max_body,
        max_rate=section.max_rate,
        max_retry_after_source=section.max_retry_after_source,
    )
