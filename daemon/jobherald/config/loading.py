"""Loading a config: the main file and its drop-ins read, validated and resolved (sources,
notifiers, the listener, the database, then the jobs) into one frozen Config."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from jobherald.auth import READ_SECRETS
from jobherald.config.files import _display, _included, _pop_jobs, _read
from jobherald.config.jobs import _JobTables
from jobherald.config.model import (
    Config,
    HttpConfig,
    Notifier,
    Report,
    WatchedJob,
)
from jobherald.config.problems import _validate
from jobherald.config.sections import (
    _NAME,
    DEFAULT_CONFIG_PATH,
    DropInFile,
    HttpSection,
    MainFile,
    NotifierSection,
    ReportSection,
)
from jobherald.config.sources import _resolve_source
from jobherald.errors import ConfigError
from jobherald.model import Rules
from jobherald.quiet import QuietHours


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
    check_dirs: bool | None = None,
    check_templates: bool | None = None,
    read_secrets: bool = True,
) -> Config:
    """Read, expand, validate and resolve the configuration; raise ConfigError.

    ``extra`` names drop-in files to read as if an include matched them (to try
    one before it is put in place). ``check_urls`` asks apprise whether it can use
    every notifier URL (which loads apprise: commands that send nothing skip it).
    ``check_dirs`` (by default as ``check_urls``) checks that the daemon can write
    every ``archive_dir``: the commands that run or check the daemon ask for it.
    ``check_templates`` (by default as ``check_urls``) renders every notifier template
    against sample events in the render process (commands that send nothing skip it).
    ``read_secrets`` False: tokens, passwords and keys are neither read from their files
    nor checked (the commands that send nothing need none, and may run without them).
    """
    reading = READ_SECRETS.set(read_secrets)
    try:
        return _load(path, extra, check_urls, check_dirs, check_templates)
    finally:
        READ_SECRETS.reset(reading)


def _load(
    path: str | os.PathLike[str] | None,
    extra: Sequence[Path],
    check_urls: bool,
    check_dirs: bool | None,
    check_templates: bool | None,
) -> Config:
    main = config_path(path)
    label = str(path) if path else str(main)
    problems: list[str] = []
    raw = _read(main, label, problems)
    if problems:
        raise ConfigError(problems)
    # The jobs are validated and resolved one by one, each table dropped once it is a
    # WatchedJob: 100,000 of them are never held three times over.
    tables: list[tuple[list[Any], str]] = [(_pop_jobs(raw), label)]
    invalid: list[str] = []
    parsed = _validate(MainFile, raw, label, invalid)
    broken: set[str] = set()  # "sources.NAME", "notifiers.NAME" that failed validation
    if parsed is None:
        parsed = _salvaged(raw, broken)
    unreadable: list[str] = []
    for dropin in [*_included(main.parent, parsed.daemon.include if parsed else (), label), *extra]:
        extra_label = _display(dropin, main.parent)
        try:  # each drop-in that cannot be read is a line of its own; the others are read
            extra_raw = _read(dropin, extra_label, problems)
        except ConfigError as exc:
            unreadable += exc.problems
            continue
        if problems:
            raise ConfigError(problems)
        tables.append((_pop_jobs(extra_raw), extra_label))
        _validate(DropInFile, extra_raw, extra_label, invalid)
    if unreadable:
        raise ConfigError(unreadable)
    templates = check_urls if check_templates is None else check_templates
    resolving = _Resolving(main, label, parsed, check_urls, templates) if parsed else None
    jobs = _JobTables(parsed, resolving.sources if resolving is not None else None, broken)
    for table, table_label in tables:
        jobs.read(table, table_label, invalid)
    if resolving is None:
        raise ConfigError(invalid)
    # Every problem found, in one run: the tables' first, then what resolving them found.
    config = resolving.config(jobs.keyed(), jobs.problems, invalid)
    if check_urls if check_dirs is None else check_dirs:
        _check_archive_dirs(config, main, label)
    return replace(config, include=resolving.parsed.daemon.include)


def _salvaged(raw: dict[str, Any], broken: set[str]) -> MainFile | None:
    """The main file without the tables that failed validation (their problems are said
    already), so the rest, and the jobs, are checked in the same run; None if even that
    fails. It is only ever used to find more problems."""
    import copy

    from pydantic import ValidationError

    trimmed = copy.deepcopy(raw)
    for _ in range(3):
        try:
            return MainFile.model_validate(trimmed)
        except ValidationError as exc:
            for err in exc.errors():
                loc = [str(part) for part in err["loc"]]
                table = trimmed.get(loc[0]) if loc else None
                if len(loc) >= 2 and loc[0] in ("sources", "notifiers") and isinstance(table, dict):
                    table.pop(loc[1], None)
                    broken.add(f"{loc[0]}.{loc[1]}")
                elif loc:
                    trimmed.pop(loc[0], None)
    return None


def _check_archive_dirs(config: Config, main: Path, label: str) -> None:
    """Every ``archive_dir`` writable here, and by the installed service when this is its config."""
    from jobherald.config.paths import sandbox_problem, writable_problem

    service = main.resolve() == DEFAULT_CONFIG_PATH.resolve()
    problems = []
    for name, source in config.sources.items():
        if source.archive_dir is None:
            continue
        problem = writable_problem(source.archive_dir)
        if problem is None and service:
            problem = sandbox_problem(source.archive_dir)
        if problem is not None:
            problems.append(f"{label}: sources.{name}.archive_dir: {problem}")
    if problems:
        raise ConfigError(problems)


class _Resolving:
    """The main file resolved but for its jobs: sources, notifiers, the database, http."""

    def __init__(
        self, main: Path, label: str, parsed: MainFile, check_urls: bool, check_templates: bool
    ) -> None:
        self.main, self.label, self.parsed = main, label, parsed
        self.problems: list[str] = []
        self.rules = parsed.daemon.over(Rules())
        self.sources = {
            name: src
            for name, section in parsed.sources.items()
            if (
                src := _resolve_source(name, section, main.parent, label, self.rules, self.problems)
            )
        }
        self.notifiers = {
            name: _resolve_notifier(
                name,
                section,
                parsed,
                f"{label}: notifiers.{name}",
                self.problems,
                check_urls,
                check_templates,
            )
            for name, section in parsed.notifiers.items()
        }
        self.event_loop = _event_loop(parsed.daemon.event_loop, label, self.problems)
        self.reports = {
            name: report
            for name, section in parsed.reports.items()
            if (
                report := _resolve_report(
                    name,
                    section,
                    parsed,
                    f"{label}: reports.{name}",
                    self.problems,
                    check_templates,
                )
            )
        }

    def config(
        self, jobs: Sequence[WatchedJob], job_problems: Sequence[str], invalid: Sequence[str] = ()
    ) -> Config:
        """The Config, or ConfigError with ``invalid`` (the tables' problems), then those
        of resolving, then ``job_problems``."""
        parsed, label = self.parsed, self.label
        problems = [*invalid, *self.problems, *job_problems]
        database_url = _database_url(parsed.daemon.database, self.main.parent, label, problems)
        http = _http(parsed.http, self.main.parent, label, problems)
        public_url = _public_url(parsed.http.public_url, label, problems)
        heartbeat = parsed.daemon.heartbeat_url
        if (
            heartbeat is not None
            and READ_SECRETS.get()
            and not re.match(r"^https?://[^/\s]+", heartbeat.get_secret_value())
        ):
            problems.append(f"{label}: daemon.heartbeat_url: must start with https:// or http://")
        if problems:
            raise ConfigError(problems)
        return Config(
            path=self.main,
            database_url=database_url,
            poll_interval=parsed.daemon.poll_interval,
            concurrency=parsed.daemon.concurrency,
            log_level=parsed.daemon.log_level,
            shutdown_timeout=parsed.daemon.shutdown_timeout,
            host_concurrency=parsed.daemon.host_concurrency,
            retries=parsed.daemon.retries,
            event_loop=self.event_loop,
            replica=parsed.daemon.replica,
            lease=parsed.daemon.lease,
            http=http,
            heartbeat_url=heartbeat,
            heartbeat_every=parsed.daemon.heartbeat_every,
            keep_history=parsed.daemon.keep_history,
            forget_finished_after=parsed.daemon.forget_finished_after,
            backup_before_migrate=parsed.daemon.backup_before_migrate,
            public_url=public_url,
            rules=self.rules,
            sources=self.sources,
            notifiers=self.notifiers,
            jobs=tuple(jobs),
            reports=self.reports,
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
    check_templates: bool = True,
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
    keys = ("title", "body", "digest_title", "digest_body") if check_templates else ()
    for key in keys:
        text = getattr(section, key)
        if text is None:
            continue
        from jobherald.renderer import check_template

        if (why := check_template(text, digest=key.startswith("digest_"))) is not None:
            problems.append(f"{where}.{key}: {why}")
    quiet = _quiet_hours(section, where, problems)
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
        max_in_flight=section.max_in_flight,
        send_timeout=section.send_timeout,
        digest_after=section.digest_after,
        digest_max=section.digest_max,
        digest_title=section.digest_title,
        digest_body=section.digest_body,
        quiet=quiet,
        on_quiet_end=section.on_quiet_end,
    )


def _resolve_report(
    name: str,
    section: ReportSection,
    parsed: MainFile,
    where: str,
    problems: list[str],
    check_templates: bool,
) -> Report | None:
    """A report's cron, zone, notifiers, sources, window and templates; one line each."""
    from jobherald.fields import parse_duration
    from jobherald.quiet import zone_named

    before = len(problems)
    if not _NAME.match(name):
        problems.append(f"{where}: bad name (letters, digits, _.-)")
    try:
        zone = zone_named(section.timezone)
    except ValueError as exc:
        problems.append(f"{where}.timezone: {exc}")
        zone = None
    if zone is not None:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(section.cron, timezone=zone)
        except ValueError as exc:
            problems.append(
                f"{where}.cron: {section.cron!r}: {exc} (five fields: minute hour day month "
                'weekday, e.g. "0 7 * * 1-5")'
            )
    _known(section.notifiers, parsed.notifiers, f"{where}.notifiers", "notifier", problems)
    _known(section.sources or (), parsed.sources, f"{where}.sources", "source", problems)
    window: float | None = None
    if section.window != "since-last":
        try:
            window = parse_duration(section.window)
        except ValueError as exc:
            problems.append(f'{where}.window: {exc} (or "since-last")')
    for key in ("title", "body") if check_templates else ():
        text = getattr(section, key)
        if text is None:
            continue
        from jobherald.renderer import check_template

        if (why := check_template(text, report=True)) is not None:
            problems.append(f"{where}.{key}: {why}")
    if len(problems) > before:
        return None
    return Report(
        name=name,
        cron=section.cron,
        zone=zone,
        notifiers=section.notifiers,
        window=window,
        sources=section.sources,
        jobs=section.jobs,
        title=section.title,
        body=section.body,
        skip_empty=section.skip_empty,
        misfire_grace=section.misfire_grace,
    )


def _known(
    names: Sequence[str], known: Collection[str], where: str, what: str, problems: list[str]
) -> None:
    """One line for each of ``names`` that is not ``known``."""
    for i, name in enumerate(names):
        if name not in known:
            listed = ", ".join(sorted(known)) or "none defined"
            problems.append(f"{where}[{i}]: unknown {what} {name!r} (known: {listed})")


def _quiet_hours(section: NotifierSection, where: str, problems: list[str]) -> QuietHours | None:
    """A notifier's quiet hours, its timezone and urgent kinds; one line per problem."""
    from jobherald.quiet import parse_window, zone_named

    windows = []
    for i, text in enumerate(section.quiet_hours):
        try:
            windows.append(parse_window(text))
        except ValueError as exc:
            problems.append(f"{where}.quiet_hours[{i}]: {exc}")
    try:
        zone = zone_named(section.timezone)
    except ValueError as exc:
        problems.append(f"{where}.timezone: {exc}")
        return None
    if not section.quiet_hours:
        for key in ("urgent", "timezone"):
            if key in section.model_fields_set:
                problems.append(f"{where}.{key}: only with quiet_hours")
        return None
    if len(windows) < len(section.quiet_hours):
        return None
    return QuietHours(tuple(windows), zone, frozenset(section.urgent))


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


LOOPBACK_NAMES = ("localhost",)


def _http(section: HttpSection, base: Path, label: str, problems: list[str]) -> HttpConfig | None:
    """The listener: ``host:port`` (``[v6]:port``), or None for ``listen = ""``; a token
    (inline or from a file) is required off loopback."""
    import ipaddress

    from jobherald.auth import Secrets

    where = f"{label}: http"
    if not section.listen.strip():
        return None
    match = re.fullmatch(
        r"\[(?P<v6>[^\]]+)\]:(?P<port6>\d+)|(?P<host>[^:\[\]]*):(?P<port>\d+)",
        section.listen.strip(),
    )
    if match is None:
        problems.append(f"{where}.listen: {section.listen!r}: give host:port, e.g. 127.0.0.1:9781")
        return None
    host = match["v6"] or match["host"] or "0.0.0.0"  # noqa: S104 (":9781": every address, as asked)
    port = int(match["port6"] or match["port"])
    if not 0 < port < 65536:
        problems.append(f"{where}.listen: port {port} is not between 1 and 65535")
        return None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in LOOPBACK_NAMES
    token = None
    if section.token is not None or section.token_file is not None:
        token = Secrets(where, base, problems).get("token", section.token, section.token_file)
        if token is None:
            return None
    elif not loopback:
        problems.append(
            f"{where}: listen {section.listen!r} is not a loopback address: give token "
            "or token_file (every route but /healthz and /readyz then needs it)"
        )
        return None
    api_token = None
    if section.api_token_file is not None:
        api_token = Secrets(where, base, problems).get("api_token", None, section.api_token_file)
    return HttpConfig(host, port, token, section.header_timeout, section.max_connections, api_token)


def _public_url(value: str | None, label: str, problems: list[str]) -> str | None:
    """``[http] public_url``: an absolute http(s) URL without credentials, kept without
    its trailing slash (links are made by appending ``/jobs/ID``)."""
    from urllib.parse import urlsplit

    if value is None:
        return None
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        parts = None
    if parts is not None and (parts.username is not None or parts.password is not None):
        problems.append(f"{label}: http.public_url: must not hold a user name or password")
        return None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or any(c.isspace() for c in value.strip())
    ):
        problems.append(
            f"{label}: http.public_url: {value!r} is not an absolute http(s) URL "
            "(e.g. https://jobs.example.com)"
        )
        return None
    return value.strip().rstrip("/")


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
    level, propagate = apprise_logger.level, apprise_logger.propagate
    said = _Said()
    apprise_logger.setLevel(logging.WARNING)
    apprise_logger.propagate = False
    apprise_logger.addHandler(said)
    try:
        plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    finally:
        apprise_logger.removeHandler(said)
        apprise_logger.setLevel(level)
        apprise_logger.propagate = propagate
    if plugin is None:
        known = _apprise_schemes()
        if scheme.lower() not in known:
            import difflib

            close = difflib.get_close_matches(scheme.lower(), sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}://?)" if close else ""
            return f"apprise knows no {scheme}:// service{hint}"
        if said.warnings:  # apprise named the part it refused: said without the URL's values
            return f"apprise cannot use this {scheme}:// URL: {_masked(said.warnings[0], url)}"
        return f"apprise cannot use this {scheme}:// URL (unknown service or missing parts)"
    return None


class _Said(logging.Handler):
    """apprise's warnings while it reads one URL (its errors echo the URL: left out)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.WARNING:
            self.warnings.append(record.getMessage())


def _masked(message: str, url: str) -> str:
    """``message`` with every value of ``url`` (user, password, host, path parts, query
    values: any may be a secret) shown as ``***``, on one line of at most 160 characters."""
    _, _, rest = url.partition("://")
    keys = set(re.findall(r"[?&]([^=&#]+)=", rest))
    pieces = {p for p in re.split(r"[:/@?&=#,]+", rest) if len(p) >= 2 and p not in keys}
    for piece in sorted(pieces, key=len, reverse=True):
        message = message.replace(piece, "***")
    message = " ".join(message.split()).rstrip(".: ")
    return message if len(message) <= 160 else message[:157] + "..."


def _apprise_schemes() -> set[str]:
    """Every URL scheme apprise knows (its plain and secure protocols)."""
    import apprise

    known: set[str] = set()
    for schema in apprise.Apprise().details().get("schemas", []):
        for key in ("protocols", "secure_protocols"):
            found = schema.get(key) or ()
            known.update([found] if isinstance(found, str) else found)
    return {scheme.lower() for scheme in known if scheme}
