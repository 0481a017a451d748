"""The TOML file's shape: pydantic models of every table, and durations."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
)

from jobherald.model import EventKind, Rules

DEFAULT_CONFIG_PATH = Path("/etc/jobherald/config.toml")
# The events a notifier may hear: the kinds the model raises, spelled once (EventKind).
Event = EventKind
EVENTS: tuple[EventKind, ...] = tuple(EventKind)
# What a notifier hears when its `on` is not given: the outcomes, and what needs a person.
DEFAULT_EVENTS: tuple[EventKind, ...] = tuple(
    k for k in EventKind if k not in (EventKind.STARTED, EventKind.PROGRESS)
)
AUTH_METHODS = ("token", "password", "aksk")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
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
    if not math.isfinite(seconds):
        raise ValueError(f"duration {value!r} is not a number of seconds")
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be more than zero")
    if seconds > 10 * 365 * 86400:
        raise ValueError(f"duration {value!r} is longer than ten years")
    return seconds


def parse_duration_or_off(value: object) -> float:
    """Like parse_duration, but 0 (or "0", "off") turns the rule off: 0.0."""
    if value in (0, "0", "off") and not isinstance(value, bool):
        return 0.0
    return parse_duration(value)


_SIZE = re.compile(r"^(\d+)\s*(|b|bytes|kb|kib|mb|mib|gb|gib|tb|tib)$", re.IGNORECASE)
_UNIT_BYTES = {"": 1, "b": 1, "bytes": 1, "kb": 2**10, "mb": 2**20, "gb": 2**30, "tb": 2**40}
MIN_BODY = 1024
MAX_BODY = 2**30


def parse_size(value: object, low: int = MIN_BODY, high: int = MAX_BODY) -> int:
    """Bytes from a whole number, or from text such as ``512KB``, ``4 MB``, ``1GiB``."""
    if isinstance(value, bool):
        raise ValueError("expected a size, got a boolean")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.match(value.strip())
        if match is None:
            raise ValueError(f"bad size {value!r}: use bytes or a text like 512KB, 4MB")
        unit = match[2].lower().replace("ib", "b")
        size = int(match[1][:16]) * _UNIT_BYTES[unit]
    else:
        raise ValueError(f"expected a size, got {type(value).__name__}")
    if not low <= size <= high:
        raise ValueError(f"size {value!r} must be between {_shown(low)} and {_shown(high)}")
    return size


def _shown(size: int) -> str:
    for unit in ("TB", "GB", "MB", "KB"):
        if size >= _UNIT_BYTES[unit.lower()] and size % _UNIT_BYTES[unit.lower()] == 0:
            return f"{size // _UNIT_BYTES[unit.lower()]}{unit}"
    return f"{size} bytes"


def parse_archive_size(value: object) -> int:
    return parse_size(value, 2**20, 2**44)


Size = Annotated[int, BeforeValidator(parse_size)]
# An export archive: from 1MB up to 16TB.
ArchiveSize = Annotated[int, BeforeValidator(parse_archive_size)]
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
    # A running job past this many times its typical duration: "stalled" (0: off).
    slow_after: float | None = None

    @field_validator("slow_after", mode="before")
    @classmethod
    def _slow(cls, value: object) -> object:
        if isinstance(value, str) and value.strip() in ("0", "off"):
            return 0.0
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ValueError(
                    f"slow_after {value!r}: give a multiple such as 2.0, or 0 (off)"
                ) from None
        return value

    @field_validator("slow_after")
    @classmethod
    def _slow_range(cls, value: float | None) -> float | None:
        if value is not None and value != 0 and not 1.0 < value <= 1000.0:
            raise ValueError(
                f"slow_after {value!r} must be more than 1 (2.0: twice as long as usual), or 0 (off)"
            )
        return value

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
            slow_after=base.slow_after if self.slow_after is None else (self.slow_after or None),
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
    # A dead man's switch: a GET of this URL every heartbeat_every while the daemon is healthy.
    heartbeat_url: SecretStr | None = None
    heartbeat_every: Duration = Field(default=60.0, ge=1.0, le=86400.0)

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


def _check_segment(value: str) -> str:
    """An id that becomes one segment of a URL path: "." and ".." would change the path."""
    if value.strip() in (".", ".."):
        raise ValueError(f"{value!r} is not an id (it would change the request's path)")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


PathSegment = Annotated[str, AfterValidator(_check_segment)]


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
    project_id: PathSegment
    token: SecretStr | None = None
    token_file: Path | None = None
    auth: AuthSection | None = None
    timeout: Duration = 10.0
    verify_tls: bool = True
    max_body: Size = 4 * 1024 * 1024
    max_rate: float | None = Field(default=None, gt=0, le=100000)
    max_retry_after_source: Duration = Field(default=600.0, le=86400.0)


class RomaConnectSource(HuaweiSource):
    type: Literal["roma-connect"]
    instance_id: PathSegment | None = None
    # Where the archives of this source's export jobs are kept (none: not downloaded).
    archive_dir: Path | None = None
    # The longest one download may take, and the largest archive kept.
    archive_timeout: Duration = Field(default=1800.0, ge=1.0)
    max_archive_size: ArchiveSize = 2 * 2**30


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
    max_body: Size = 4 * 1024 * 1024
    max_rate: float | None = Field(default=None, gt=0, le=100000)
    max_retry_after_source: Duration = Field(default=600.0, le=86400.0)


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
    max_in_flight: int = Field(default=1, ge=1, le=64)
    digest_after: int = Field(default=5, ge=0, le=100000)
    digest_max: int = Field(default=200, ge=2, le=10000)
    digest_title: str | None = None
    digest_body: str | None = None


class JobSection(RuleFields):
    id: str
    source: str
    name: str | None = None
    instance_id: PathSegment | None = None
    notify: tuple[str, ...] | None = None
    poll_interval: Duration | None = None
    params: dict[str, str] | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not JOB_ID_PATTERN.match(value):
            raise ValueError(f"bad job id {value!r}: letters, digits and _.:- only")
        return value


class HttpSection(_Model):
    """The daemon's HTTP listener: metrics, health, the status page, the JSON API."""

    listen: str = "127.0.0.1:9781"
    token: SecretStr | None = None
    token_file: Path | None = None
    public_url: str | None = None
    # A connection must send a whole request head this long after it opened (or after
    # its last answer), and at most this many are open at once (more: closed at once).
    header_timeout: Duration = Field(default=10.0, le=3600.0)
    max_connections: int = Field(default=256, ge=1, le=65536)


class MainFile(_Model):
    daemon: DaemonSection = DaemonSection()
    http: HttpSection = HttpSection()
    sources: dict[str, SourceSection] = {}
    notifiers: dict[str, NotifierSection] = {}
    jobs: tuple[JobSection, ...] = ()


class DropInFile(_Model):
    jobs: tuple[JobSection, ...] = ()
