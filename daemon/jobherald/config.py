"""The TOML configuration: read once, validated, frozen.

Every problem becomes one line naming the file, the key path and what is wrong
(``config.toml: jobs[2].source: unknown source 'roma-prd' (known: roma-prod)``).
This is the only module that reads the environment.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import re
import string
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from jobherald.errors import ConfigError
from jobherald.model import Rules

DEFAULT_CONFIG_PATH = Path("/etc/jobherald/config.toml")
Event = Literal[
    "succeeded", "failed", "started", "progress", "stalled", "lost", "error", "recovered"
]
EVENTS: tuple[Event, ...] = (
    "succeeded",
    "failed",
    "started",
    "progress",
    "stalled",
    "lost",
    "error",
    "recovered",
)
# What a notifier hears when its `on` is not given: the outcomes, and what needs a person.
DEFAULT_EVENTS: tuple[Event, ...] = ("succeeded", "failed", "stalled", "lost", "error", "recovered")
AUTH_METHODS = ("token", "password", "aksk")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def parse_duration(value: object) -> float:
    """Seconds from a number, or from text such as ``500ms``, ``30s``, ``5m``, ``1h30m``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(
                    f"bad duration {value!r}: use seconds or a text like 500ms, 30s, 5m, 1h"
                ) from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError(f"expected a duration, got {type(value).__name__}")
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be more than zero")
    return seconds


def parse_duration_or_off(value: object) -> float:
    """Like parse_duration, but 0 (or "0", "off") turns the rule off: 0.0."""
    if value in (0, "0", "off") and not isinstance(value, bool):
        return 0.0
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
DurationOrOff = Annotated[float, BeforeValidator(parse_duration_or_off)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


M = TypeVar("M", bound=_Model)


class RuleFields(_Model):
    """Watch rules: in [daemon] as defaults, overridable per source and per job."""

    error_after: Duration | None = None
    stall_after: DurationOrOff | None = None
    lost_after: int | None = Field(default=None, ge=1, le=1000)
    max_duration: DurationOrOff | None = None
    progress_steps: tuple[float, ...] | None = None

    @field_validator("progress_steps")
    @classmethod
    def _steps(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is None:
            return None
        for step in value:
            if not 0.0 < step < 1.0:
                raise ValueError(f"progress step {step!r} must be between 0 and 1 (0.5 is 50 %)")
        return tuple(sorted(set(value)))

    def over(self, base: Rules) -> Rules:
        return Rules(
            error_after=self.error_after if self.error_after is not None else base.error_after,
            stall_after=base.stall_after
            if self.stall_after is None
            else (self.stall_after or None),
            lost_after=self.lost_after if self.lost_after is not None else base.lost_after,
            max_duration=(
                base.max_duration if self.max_duration is None else (self.max_duration or None)
            ),
            progress_steps=(
                self.progress_steps if self.progress_steps is not None else base.progress_steps
            ),
        )


class DaemonSection(RuleFields):
    database: str = "sqlite:///jobherald.db"
    poll_interval: Duration = 30.0
    concurrency: int = Field(default=16, ge=1, le=1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    include: tuple[str, ...] = ()
    shutdown_timeout: Duration = 10.0
    host_concurrency: int = Field(default=8, ge=1, le=1024)
    retries: int = Field(default=2, ge=0, le=10)
    event_loop: Literal["uvloop", "asyncio"] | None = None
    # Several replicas on one PostgreSQL: this one's name, and how long a silent one keeps its jobs.
    replica: str | None = None
    lease: Duration = Field(default=15.0, ge=3.0, le=3600.0)

    @field_validator("replica")
    @classmethod
    def _replica_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}", value):
            raise ValueError(
                f"bad replica name {value!r}: up to 100 letters, digits and ._:@- "
                "(starting with a letter or digit)"
            )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


def _check_endpoint(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"endpoint {value!r} must start with https:// or http://")
    return value.rstrip("/")


Endpoint = Annotated[str, AfterValidator(_check_endpoint)]


class TokenAuthSection(_Model):
    method: Literal["token"]
    token: SecretStr | None = None
    token_file: Path | None = None


class PasswordAuthSection(_Model):
    method: Literal["password"]
    iam_endpoint: Endpoint
    user: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None
    domain: str = Field(min_length=1)
    project: str | None = None
    project_id: str | None = None


class AkSkAuthSection(_Model):
    method: Literal["aksk"]
    ak: str = Field(min_length=1)
    sk: SecretStr | None = None
    sk_file: Path | None = None
    security_token: SecretStr | None = None
    security_token_file: Path | None = None


AuthSection = Annotated[
    TokenAuthSection | PasswordAuthSection | AkSkAuthSection, Field(discriminator="method")
]


class BearerAuthSection(_Model):
    method: Literal["bearer"]
    token: SecretStr | None = None
    token_file: Path | None = None


class BasicAuthSection(_Model):
    method: Literal["basic"]
    user: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None


HttpAuthSection = Annotated[
    BearerAuthSection | BasicAuthSection | PasswordAuthSection | AkSkAuthSection,
    Field(discriminator="method"),
]
HTTP_AUTH_METHODS = ("bearer", "basic", "password", "aksk")


class HuaweiSource(RuleFields):
    """What every Huawei Cloud source has: an endpoint, a project, and one of three auths."""

    endpoint: Endpoint
    project_id: str = Field(min_length=1)
    token: SecretStr | None = None
    token_file: Path | None = None
    auth: AuthSection | None = None
    timeout: Duration = 10.0
    verify_tls: bool = True


class RomaConnectSource(HuaweiSource):
    type: Literal["roma-connect"]
    instance_id: str | None = None


class HuaweiJobSource(HuaweiSource):
    """Huawei Cloud's shared job API (ECS, EVS, IMS, BMS, VPC...)."""

    type: Literal["huawei-job"]


class HttpJsonSource(RuleFields):
    """Any job API that answers JSON: where to ask, and JMESPath expressions to read it."""

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
    timeout: Duration = 10.0
    verify_tls: bool = True


SourceSection = Annotated[
    RomaConnectSource | HuaweiJobSource | HttpJsonSource, Field(discriminator="type")
]
SOURCE_TYPES = ("roma-connect", "huawei-job", "http-json")


class NotifierSection(_Model):
    urls: tuple[str, ...] = Field(min_length=1)
    on: tuple[Event, ...] = DEFAULT_EVENTS
    jobs: tuple[str, ...] | None = None
    sources: tuple[str, ...] | None = None
    title: str | None = None
    body: str | None = None
    format: Literal["text", "markdown", "html"] = "text"
    retry_for: Duration = 86400.0
    reminder: Duration | None = None


class JobSection(RuleFields):
    id: str
    source: str
    name: str | None = None
    instance_id: str | None = None
    notify: tuple[str, ...] | None = None
    poll_interval: Duration | None = None
    params: dict[str, str] | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _JOB_ID.match(value):
            raise ValueError(f"bad job id {value!r}: letters, digits and _.:- only")
        return value


class MainFile(_Model):
    daemon: DaemonSection = DaemonSection()
    sources: dict[str, SourceSection] = {}
    notifiers: dict[str, NotifierSection] = {}
    jobs: tuple[JobSection, ...] = ()


class DropInFile(_Model):
    jobs: tuple[JobSection, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenAuth:
    """A fixed token, inline or from a file re-read whenever it changes: an IAM token
    (sent as X-Auth-Token), or for http-json sources a bearer token."""

    token: SecretStr | None
    token_file: Path | None
    method: str = "token"
    bearer: bool = False


@dataclass(frozen=True, slots=True)
class BasicAuth:
    """HTTP basic authentication."""

    user: str
    password: SecretStr
    method: str = "basic"


@dataclass(frozen=True, slots=True)
class NoAuth:
    """No credentials at all (an open API, or one reached through a local proxy)."""

    method: str = "none"


@dataclass(frozen=True, slots=True)
class PasswordAuth:
    """An IAM token fetched with a password, and fetched again before it expires."""

    iam_endpoint: str
    user: str
    password: SecretStr
    domain: str
    project: str | None
    project_id: str | None
    method: str = "password"


@dataclass(frozen=True, slots=True)
class AkSkAuth:
    """Every request signed with an access key and secret key (SDK-HMAC-SHA256)."""

    ak: str
    sk: SecretStr
    security_token: SecretStr | None
    method: str = "aksk"


AuthConfig = TokenAuth | PasswordAuth | AkSkAuth | BasicAuth | NoAuth


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


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    endpoint: str
    project_id: str
    instance_id: str | None
    auth: AuthConfig
    timeout: float
    verify_tls: bool
    rules: Rules = field(default_factory=Rules)
    type: str = "roma-connect"
    # What a type needs beyond the common keys (http-json: its HttpJsonSettings).
    settings: Any = None


@dataclass(frozen=True, slots=True)
class Notifier:
    name: str
    urls: tuple[str, ...] = field(repr=False)
    on: tuple[str, ...]
    jobs: tuple[str, ...] | None = None
    sources: tuple[str, ...] | None = None
    title: str | None = None
    body: str | None = None
    format: str = "text"
    retry_for: float = 86400.0
    reminder: float | None = None

    def hears(self, kind: str, job_id: str, job_name: str, source: str) -> bool:
        """Whether this notifier wants this event about this job."""
        if kind not in self.on:
            return False
        if self.sources is not None and source not in self.sources:
            return False
        if self.jobs is not None:
            return any(
                fnmatch.fnmatchcase(job_name, p) or fnmatch.fnmatchcase(job_id, p)
                for p in self.jobs
            )
        return True


@dataclass(frozen=True, slots=True)
class WatchedJob:
    id: str
    name: str
    source: str
    instance_id: str
    notify: tuple[str, ...]
    poll_interval: float
    origin: str
    rules: Rules = field(default_factory=Rules)
    # Values for an http-json source's url placeholders, beside {job_id}.
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    database_url: str
    poll_interval: float
    concurrency: int
    log_level: str
    shutdown_timeout: float
    host_concurrency: int
    retries: int
    rules: Rules
    sources: Mapping[str, Source]
    notifiers: Mapping[str, Notifier]
    jobs: tuple[WatchedJob, ...]
    include: tuple[str, ...] = ()
    event_loop: str = "asyncio"
    replica: str | None = None
    lease: float = 15.0


@dataclass(frozen=True, slots=True)
class SystemdEnvironment:
    """What systemd tells a service through its environment."""

    notify_socket: str | None
    watchdog_usec: int | None
    journal_stream: str | None


def systemd_environment() -> SystemdEnvironment:
    watchdog = os.environ.get("WATCHDOG_USEC")
    watchdog_pid = os.environ.get("WATCHDOG_PID")
    usec = int(watchdog) if watchdog and watchdog.isdigit() else None
    if watchdog_pid and watchdog_pid.isdigit() and int(watchdog_pid) != os.getpid():
        usec = None
    return SystemdEnvironment(
        notify_socket=os.environ.get("NOTIFY_SOCKET") or None,
        watchdog_usec=usec,
        journal_stream=os.environ.get("JOURNAL_STREAM") or None,
    )


def config_path(given: str | os.PathLike[str] | None) -> Path:
    """The config file: the one given, else ``$JOBHERALD_CONFIG``, else the system one."""
    if given:
        return Path(given)
    env = os.environ.get("JOBHERALD_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load(
    path: str | os.PathLike[str] | None = None,
    extra: Sequence[Path] = (),
    *,
    check_urls: bool = True,
) -> Config:
    """Read, expand, validate and resolve the configuration; raise ConfigError.

    ``extra`` names drop-in files to read as if an include matched them (to try
    one before it is put in place). ``check_urls`` asks apprise whether it can use
    every notifier URL (which loads apprise: commands that send nothing skip it).
    """
    main = config_path(path)
    label = str(path) if path else str(main)
    raw = _read_toml(main, label)
    problems: list[str] = []
    raw = _expand(raw, label, "", problems)
    if problems:
        raise ConfigError(problems)
    parsed = _validate(MainFile, raw, label)
    jobs: list[tuple[JobSection, str]] = [
        (job, f"{label}: jobs[{i}]") for i, job in enumerate(parsed.jobs)
    ]
    for dropin in [*_included(main.parent, parsed.daemon.include, label), *extra]:
        extra_label = _display(dropin, main.parent)
        extra_raw = _expand(_read_toml(dropin, extra_label), extra_label, "", problems)
        if problems:
            raise ConfigError(problems)
        parsed_dropin = _validate(DropInFile, extra_raw, extra_label)
        jobs.extend((job, f"{extra_label}: jobs[{i}]") for i, job in enumerate(parsed_dropin.jobs))
    config = _resolve(main, label, parsed, jobs, check_urls)
    return replace(config, include=parsed.daemon.include)


def _display(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{label}: file not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{label}: is a folder, not a file"]) from None
    except PermissionError:
        raise ConfigError([f"{label}: permission denied"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{label}: not valid TOML: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{label}: not valid UTF-8"]) from None


def _expand(value: Any, label: str, where: str, problems: list[str]) -> Any:
    """Replace ``${VAR}`` from the environment in every string (``$$`` is a dollar)."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None:
                return "$"
            if name not in os.environ:
                problems.append(f"{label}: {where}: environment variable {name} is not set")
                return ""
            return os.environ[name]

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {
            k: _expand(v, label, f"{where}.{k}" if where else k, problems) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_expand(v, label, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _key_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _validate(model: type[M], raw: dict[str, Any], label: str) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_describe(err, label) for err in exc.errors()]) from None


def _describe(err: Any, label: str) -> str:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    # A tagged union puts the tag in the path: sources.s.auth.password.user → sources.s.auth.user
    methods: tuple[str, ...] = AUTH_METHODS
    if len(loc) > 2 and loc[0] == "sources" and loc[2] == "http-json":
        methods = HTTP_AUTH_METHODS
    loc = [
        p
        for i, p in enumerate(loc)
        if not (i > 0 and loc[i - 1] == "auth" and p in (*AUTH_METHODS, *HTTP_AUTH_METHODS))
        and not (i == 2 and loc[0] == "sources" and p in SOURCE_TYPES)
    ]
    kind = err["type"]
    is_source = len(loc) == 2 and loc[0] == "sources"
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "too_short":
        message = "must not be empty"
    elif kind == "union_tag_invalid" and is_source:
        message = f"unknown source type (known: {', '.join(SOURCE_TYPES)})"
        loc = [*loc, "type"]
    elif kind == "union_tag_not_found" and is_source:
        message = f"required key 'type' is missing ({', '.join(SOURCE_TYPES)})"
    elif kind == "union_tag_invalid":
        message = f"unknown method (known: {', '.join(methods)})"
        loc = [*loc, "method"]
    elif kind == "union_tag_not_found":
        message = f"required key 'method' is missing ({', '.join(methods)})"
    else:
        message = str(err["msg"]).removeprefix("Value error, ")
        if kind == "literal_error" and loc and loc[-2:-1] == ["on"]:
            message = f"unknown event (known: {', '.join(EVENTS)})"
    return f"{label}: {_key_path(loc)}: {message}"


def _included(base: Path, patterns: Sequence[str], label: str) -> Iterator[Path]:
    seen: set[Path] = set()
    for i, pattern in enumerate(patterns):
        full = pattern if os.path.isabs(pattern) else str(base / pattern)
        for match in sorted(glob.glob(full)):
            path = Path(match)
            if path in seen or not path.is_file():
                continue
            seen.add(path)
            yield path
        if not any(ch in pattern for ch in "*?[") and not Path(full).exists():
            raise ConfigError([f"{label}: daemon.include[{i}]: file not found: {pattern}"])


def _resolve(
    main: Path,
    label: str,
    parsed: MainFile,
    jobs: Sequence[tuple[JobSection, str]],
    check_urls: bool = True,
) -> Config:
    problems: list[str] = []
    rules = parsed.daemon.over(Rules())
    sources = {
        name: src
        for name, section in parsed.sources.items()
        if (src := _resolve_source(name, section, main.parent, label, rules, problems))
    }
    notifiers = {
        name: _resolve_notifier(
            name, section, parsed, f"{label}: notifiers.{name}", problems, check_urls
        )
        for name, section in parsed.notifiers.items()
    }
    event_loop = _event_loop(parsed.daemon.event_loop, label, problems)
    watched = _resolve_jobs(parsed, jobs, sources, problems)
    database_url = _database_url(parsed.daemon.database, main.parent, label, problems)
    if problems:
        raise ConfigError(problems)
    return Config(
        path=main,
        database_url=database_url,
        poll_interval=parsed.daemon.poll_interval,
        concurrency=parsed.daemon.concurrency,
        log_level=parsed.daemon.log_level,
        shutdown_timeout=parsed.daemon.shutdown_timeout,
        host_concurrency=parsed.daemon.host_concurrency,
        retries=parsed.daemon.retries,
        event_loop=event_loop,
        replica=parsed.daemon.replica,
        lease=parsed.daemon.lease,
        rules=rules,
        sources=sources,
        notifiers=notifiers,
        jobs=tuple(watched),
    )


def _event_loop(wanted: str | None, label: str, problems: list[str]) -> str:
    """uvloop when it is installed (or asked for), else asyncio's own loop."""
    from importlib.util import find_spec

    have_uvloop = find_spec("uvloop") is not None
    if wanted == "uvloop" and not have_uvloop:
        problems.append(
            f"{label}: daemon.event_loop: uvloop is not installed "
            '(pip install uvloop, or event_loop = "asyncio")'
        )
    if wanted is None:
        return "uvloop" if have_uvloop else "asyncio"
    return wanted


def _resolve_notifier(
    name: str,
    section: NotifierSection,
    parsed: MainFile,
    where: str,
    problems: list[str],
    check_urls: bool = True,
) -> Notifier:
    if not _NAME.match(name):
        problems.append(f"{where}: bad name (letters, digits, _.-)")
    for i, url in enumerate(section.urls if check_urls else ()):
        if (why := _check_apprise_url(url)) is not None:
            problems.append(f"{where}.urls[{i}]: {why}")
    for i, source in enumerate(section.sources or ()):
        if source not in parsed.sources:
            known = ", ".join(sorted(parsed.sources)) or "none defined"
            problems.append(f"{where}.sources[{i}]: unknown source {source!r} (known: {known})")
    for key in ("title", "body"):
        text = getattr(section, key)
        if text is None:
            continue
        from jobherald import templates  # Jinja2 only when a notifier has templates

        if (why := templates.check(text)) is not None:
            problems.append(f"{where}.{key}: {why}")
    return Notifier(
        name=name,
        urls=section.urls,
        on=section.on,
        jobs=section.jobs,
        sources=section.sources,
        title=section.title,
        body=section.body,
        format=section.format,
        retry_for=section.retry_for,
        reminder=section.reminder,
    )


def read_secret(path: Path) -> SecretStr:
    """A secret file's content, without surrounding white space; OSError if unreadable."""
    return SecretStr(path.read_text(encoding="utf-8").strip())


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
        )
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
    )


def _resolve_jobs(
    parsed: MainFile,
    jobs: Sequence[tuple[JobSection, str]],
    sources: Mapping[str, Source],
    problems: list[str],
) -> list[WatchedJob]:
    seen: dict[str, str] = {}
    watched: list[WatchedJob] = []
    known_sources = ", ".join(sorted(parsed.sources)) or "none defined"
    known_notifiers = ", ".join(sorted(parsed.notifiers)) or "none defined"
    for job, where in jobs:
        if job.id in seen:
            problems.append(f"{where}.id: duplicate job id {job.id!r} (first in {seen[job.id]})")
            continue
        seen[job.id] = where
        if job.source not in parsed.sources:
            problems.append(
                f"{where}.source: unknown source {job.source!r} (known: {known_sources})"
            )
            continue
        for i, notifier in enumerate(job.notify or ()):
            if notifier not in parsed.notifiers:
                problems.append(
                    f"{where}.notify[{i}]: unknown notifier {notifier!r} (known: {known_notifiers})"
                )
        section = parsed.sources[job.source]
        params = tuple(sorted((job.params or {}).items()))
        if job.params is not None and not isinstance(section, HttpJsonSource):
            problems.append(
                f"{where}.params: only for http-json sources ({job.source!r} is {section.type})"
            )
            continue
        source_settings = getattr(sources.get(job.source), "settings", None)
        if isinstance(source_settings, HttpJsonSettings):
            missing = sorted(source_settings.placeholders - {"job_id"} - dict(params).keys())
            if missing:
                names = ", ".join(f"{{{m}}}" for m in missing)
                problems.append(
                    f"{where}.params: source {job.source!r} has {names} in its url: "
                    f"give {', '.join(missing)} in this job's params"
                )
                continue
        if not isinstance(section, RomaConnectSource):
            if job.instance_id is not None:
                problems.append(
                    f"{where}.instance_id: only for roma-connect sources "
                    f"({job.source!r} is {section.type})"
                )
                continue
            instance_id = ""
        else:
            instance_id = job.instance_id or section.instance_id or ""
        if not instance_id and isinstance(section, RomaConnectSource):
            problems.append(
                f"{where}.instance_id: required, as source {job.source!r} sets no instance_id"
            )
            continue
        source = sources.get(job.source)
        if source is None:
            continue
        watched.append(
            WatchedJob(
                id=job.id,
                name=job.name or job.id,
                source=job.source,
                instance_id=instance_id,
                notify=job.notify if job.notify is not None else tuple(parsed.notifiers),
                poll_interval=job.poll_interval or parsed.daemon.poll_interval,
                origin=where,
                rules=job.over(source.rules),
                params=params,
            )
        )
    return watched


SERVICE_CONFIG_DIR = Path("/etc/jobherald")
SERVICE_STATE_DIR = Path("/var/lib/jobherald")


def _state_folder(config_dir: Path) -> Path:
    """Where a relative SQLite path lives: systemd's StateDirectory for the service, the
    same folder for commands run by hand on the service's config, else the config's folder."""
    state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state_dir:
        return Path(state_dir)
    if config_dir.resolve() == SERVICE_CONFIG_DIR:
        return SERVICE_STATE_DIR
    return config_dir


def _database_url(url: str, config_dir: Path, label: str, problems: list[str]) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        problems.append(f"{label}: daemon.database: not a database URL: {url!r}")
        return url
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            problems.append(f"{label}: daemon.database: give a file, e.g. sqlite:///jobherald.db")
            return url
        path = Path(database)
        if not path.is_absolute():
            path = _state_folder(config_dir) / path
        return str(parsed.set(drivername="sqlite+aiosqlite", database=str(path)))
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername=f"postgresql+{driver or 'asyncpg'}").render_as_string(
            hide_password=False
        )
    problems.append(
        f"{label}: daemon.database: unsupported database {backend!r} (sqlite, postgresql)"
    )
    return url


def _check_apprise_url(url: str) -> str | None:
    """None when apprise can use the URL, else why not (never echoing the URL: it may hold a password)."""
    import apprise

    scheme = url.split("://", 1)[0] if "://" in url else None
    if scheme is None:
        return "not an apprise URL (expected scheme://...)"
    apprise_logger = logging.getLogger("apprise")
    level = apprise_logger.level
    apprise_logger.setLevel(logging.CRITICAL)
    try:
        plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    finally:
        apprise_logger.setLevel(level)
    if plugin is None:
        return f"apprise cannot use this {scheme}:// URL (unknown service or missing parts)"
    return None
