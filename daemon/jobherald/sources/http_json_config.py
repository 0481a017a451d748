"""The http-json source in the config file: its table, checked (url placeholders,
JMESPath expressions, word lists), and the settings the source reads its answers by.
Nothing of jobherald's config package is imported here: the config imports this."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr

from jobherald.fields import SourceFields
from jobherald.sources.huawei_config import HttpAuthSection


@dataclass(frozen=True, slots=True)
class HttpJsonSettings:
    """An http-json source's request and how to read its answer (JMESPath texts, each
    compiled once at load to check it, and again by the source)."""

    url: str
    method: str
    headers: tuple[tuple[str, str], ...]
    placeholders: frozenset[str]
    status: str
    succeeded: tuple[str, ...]
    failed: tuple[str, ...]
    running: tuple[str, ...]
    progress: str | None
    progress_scale: float
    reasons: str | None
    begin_time: str | None
    end_time: str | None
    link: str | None
    not_found: frozenset[int]


class HttpJsonSource(SourceFields):
    """Any job API that answers JSON: where to ask, and JMESPath expressions to read it."""

    params: ClassVar[bool] = True
    bearer: ClassVar[bool] = True

    type: Literal["http-json"]
    url: str
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, str] = {}
    token: SecretStr | None = None
    token_file: Path | None = None
    auth: HttpAuthSection | None = None
    status: str
    succeeded: tuple[str, ...] = Field(min_length=1)
    failed: tuple[str, ...] = Field(min_length=1)
    running: tuple[str, ...] = ()
    progress: str | None = None
    progress_scale: float = Field(default=1.0, gt=0)
    reasons: str | None = None
    begin_time: str | None = None
    end_time: str | None = None
    link: str | None = None
    not_found: tuple[int, ...] = (404,)

    def source_fields(self, where: str, problems: list[str]) -> dict[str, Any] | None:
        """What the resolved source holds beyond the common keys (None: a problem)."""
        settings = _http_json_settings(self, where, problems)
        if settings is None:
            return None
        parts = urlsplit(settings.url)
        return {
            "endpoint": f"{parts.scheme}://{parts.netloc}",
            "project_id": "",
            "instance_id": None,
            "settings": settings,
        }


def _http_json_settings(
    section: HttpJsonSource, where: str, problems: list[str]
) -> HttpJsonSettings | None:
    """Check an http-json source's url, expressions and word lists; one line per problem."""
    before = len(problems)
    shown = _without_userinfo(section.url)
    if shown != section.url:
        # A password there would reach messages (advice names the url), logs and the
        # database: refused, never echoed.
        problems.append(
            f"{where}.url: {shown!r} holds a user name or password: give them in "
            f'[{where.rpartition(": ")[2]}.auth] with method = "basic", user and '
            "password_file instead"
        )
    elif not re.match(r"^https?://[^/\s{}]+", section.url):
        problems.append(f"{where}.url: {section.url!r} must start with https:// or http://host")
    placeholders = url_placeholders(section.url, f"{where}.url", problems)
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


def _without_userinfo(url: str) -> str:
    """``url`` with any user name and password before its host shown as ``***``."""
    scheme, sep, rest = url.partition("://")
    host_part, slash, path = rest.partition("/")
    if not sep or "@" not in host_part:
        return url
    return f"{scheme}://***@{host_part.rpartition('@')[2]}{slash}{path}"


def url_placeholders(url: str, where: str, problems: list[str]) -> set[str]:
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
