"""The TOML file's shape: pydantic models of every table (each source type declares its
own, in ``sources/``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, field_validator

from jobherald.fields import Duration, Keep, PathSegment, RuleFields
from jobherald.fields import Section as _Model
from jobherald.model import EventKind
from jobherald.sources.sections import SourceSection

DEFAULT_CONFIG_PATH = Path("/etc/jobherald/config.toml")
# The events a notifier may hear: the kinds the model raises, spelled once (EventKind).
Event = EventKind
EVENTS: tuple[EventKind, ...] = tuple(EventKind)
# What a notifier hears when its `on` is not given: the outcomes, and what needs a person.
DEFAULT_EVENTS: tuple[EventKind, ...] = tuple(
    k for k in EventKind if k not in (EventKind.STARTED, EventKind.PROGRESS)
)

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


M = TypeVar("M", bound=_Model)


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
    # Finished and removed jobs' history is pruned this long after their end or removal.
    keep_history: Keep = 90 * 86400.0
    # What `watch` and `roma` write into a drop-in when --forget-after is not given.
    forget_finished_after: Duration | None = None
    # A SQLite file is copied aside before a migration (False: not, said in the log).
    backup_before_migrate: bool = True

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
    # Every send attempt ends by then (a failure, retried as any other).
    send_timeout: Duration = Field(default=30.0, le=3600.0)
    # Hours when only the urgent kinds go out; what is held meanwhile is told in one
    # message when they end ("summary"), or not at all ("drop").
    quiet_hours: tuple[str, ...] = ()
    timezone: str | None = None
    urgent: tuple[Event, ...] = ()
    on_quiet_end: Literal["summary", "drop"] = "summary"


class JobSection(RuleFields):
    id: str
    source: str
    name: str | None = None
    instance_id: PathSegment | None = None
    notify: tuple[str, ...] | None = None
    poll_interval: Duration | None = None
    params: dict[str, str] | None = None
    # Once the job has been finished this long, it is no longer watched (removed).
    forget_after: Duration | None = None

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
    # The token the API's writes (silences) need, as "Authorization: Bearer"; none: the
    # API takes no writes.
    api_token_file: Path | None = None


class ReportSection(_Model):
    """A scheduled summary: when (five-field cron in its timezone), to whom, of what."""

    cron: str
    timezone: str | None = None
    notifiers: tuple[str, ...] = Field(min_length=1)
    window: str = "since-last"
    sources: tuple[str, ...] | None = None
    jobs: tuple[str, ...] | None = None
    title: str | None = None
    body: str | None = None
    skip_empty: bool = False
    misfire_grace: Duration = Field(default=3600.0, le=7 * 86400.0)


class MainFile(_Model):
    daemon: DaemonSection = DaemonSection()
    http: HttpSection = HttpSection()
    sources: dict[str, SourceSection] = {}
    notifiers: dict[str, NotifierSection] = {}
    reports: dict[str, ReportSection] = {}
    jobs: tuple[JobSection, ...] = ()


class DropInFile(_Model):
    jobs: tuple[JobSection, ...] = ()
