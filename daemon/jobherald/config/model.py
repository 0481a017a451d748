"""The configuration as the daemon uses it: frozen, resolved, secrets wrapped."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import (
    SecretStr,
)

from jobherald.auth import Credentials
from jobherald.model import Rules
from jobherald.quiet import QuietHours

# A source's credentials: jobherald.auth's, or those a source type declares beside it.
AuthConfig = Credentials


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    endpoint: str
    project_id: str
    instance_id: str | None
    auth: AuthConfig
    timeout: float
    verify_tls: bool
    type: str  # its config name: which source module reads it
    rules: Rules = field(default_factory=Rules)
    # What a type needs beyond the common keys (http-json: its settings).
    settings: Any = None
    # A source offering archives (an export's): where they are kept (None: left to the user).
    archive_dir: Path | None = None
    # A download longer than this, or an archive larger than this, is given up (and tried
    # again with backoff).
    archive_timeout: float = 1800.0
    max_archive_size: int = 2 * 2**30
    # The most of one answer read, in bytes after decompression (more: a "body" error).
    max_body: int = 4 * 1024 * 1024
    # Requests per second to this source at most, all its jobs together (None: no limit;
    # replicas split it), and the longest a 429/503 Retry-After pauses the whole source.
    max_rate: float | None = None
    max_retry_after_source: float = 600.0


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
    # Messages in flight to one URL at once (1 keeps a URL's messages in event order).
    max_in_flight: int = 1
    # Seconds a send attempt may take, whatever the URL does (then: a failed attempt).
    send_timeout: float = 30.0
    # This many messages due for one URL at once go as one digest (0: never), at most
    # digest_max events in one.
    digest_after: int = 5
    digest_max: int = 200
    digest_title: str | None = None
    digest_body: str | None = None
    # Its quiet hours (None: never quiet), and whether what they held is told at their end.
    quiet: QuietHours | None = None
    on_quiet_end: str = "summary"

    def hears(self, kind: str, source: str, job: WatchedJob | None = None) -> bool:
        """Whether this notifier wants this event of this source, about this job (None:
        an event of the source itself, which every notifier of the source hears, whatever
        its ``jobs`` patterns). The one place routing is decided."""
        if kind not in self.on:
            return False
        if self.sources is not None and source not in self.sources:
            return False
        if self.jobs is not None and job is not None:
            names = {job.name, job.id, job.upstream_id}
            return any(fnmatch.fnmatchcase(n, p) for p in self.jobs for n in names)
        return True


@dataclass(frozen=True, slots=True)
class WatchedJob:
    id: str
    name: str
    source: str
    instance_id: str
    notify: tuple[str, ...]
    poll_interval: float
    # The file the job is registered in (as the config names it), and its place there.
    origin: str
    rules: Rules = field(default_factory=Rules)
    # Values for an http-json source's url placeholders, beside {job_id}.
    params: tuple[tuple[str, str], ...] = ()
    index: int | None = None
    # The id the upstream knows the job by, when ``id`` is not it: ``id`` is then the
    # job's key, "source/id" (with "@instance" and "?k=v" as needed), because another
    # configured job has the same id in another source, instance or namespace.
    remote: str | None = None
    # Once finished this long (seconds), the job is no longer watched (it is removed).
    forget_after: float | None = None

    @property
    def upstream_id(self) -> str:
        return self.remote if self.remote is not None else self.id

    @property
    def where(self) -> str:
        """Where the job is registered: ``drop-in.toml: jobs[0] (id 'backup')``."""
        if self.index is None:
            return self.origin
        return f"{self.origin}: jobs[{self.index}] (id {self.upstream_id!r})"


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Where the daemon listens for HTTP, and the token every route but health needs."""

    host: str
    port: int
    token: SecretStr | None = field(default=None, repr=False)
    header_timeout: float = 10.0
    max_connections: int = 256
    # What the API's writes need (None: it takes none).
    api_token: SecretStr | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


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
    # None: no listener.
    http: HttpConfig | None = None
    heartbeat_url: SecretStr | None = field(default=None, repr=False)
    heartbeat_every: float = 60.0
    # Where people reach the status page (links in messages); None: no links.
    public_url: str | None = None
    # Seconds history is kept after a job's end or removal (None: forever).
    keep_history: float | None = 90 * 86400.0
    forget_finished_after: float | None = None
    backup_before_migrate: bool = True
    reports: Mapping[str, Report] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Report:
    """A scheduled report: its cron (five fields) in ``zone``, the notifiers it goes to,
    its window (None: since it was last sent; else seconds), what it covers (sources,
    job name globs; None: all), its templates, and how late a missed run may still go."""

    name: str
    cron: str
    zone: Any
    notifiers: tuple[str, ...]
    window: float | None = None
    sources: tuple[str, ...] | None = None
    jobs: tuple[str, ...] | None = None
    title: str | None = None
    body: str | None = None
    skip_empty: bool = False
    misfire_grace: float = 3600.0

    def trigger(self) -> Any:
        """APScheduler's CronTrigger for it."""
        from apscheduler.triggers.cron import CronTrigger

        return CronTrigger.from_crontab(self.cron, timezone=self.zone)


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
