"""Reading the files: TOML, drop-ins, ${VAR}, validation, one line per problem."""

from __future__ import annotations

import glob
import logging
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import tomli
from pydantic import BaseModel, ValidationError

from jobherald.auth import READ_SECRETS, SECRET_KEYS
from jobherald.config.model import (
    Config,
    HttpConfig,
    Notifier,
    WatchedJob,
)
from jobherald.config.sections import (
    _NAME,
    _VAR,
    DEFAULT_CONFIG_PATH,
    EVENTS,
    DropInFile,
    HttpSection,
    JobSection,
    M,
    MainFile,
    NotifierSection,
)
from jobherald.config.sources import _resolve_source
from jobherald.errors import ConfigError
from jobherald.fields import RuleFields
from jobherald.model import Rules
from jobherald.sources.http_json_config import HttpJsonSettings
from jobherald.sources.sections import (
    AUTH_METHODS,
    HTTP_AUTH_METHODS,
    SOURCE_TYPES,
    WITH_INSTANCES,
    WITH_PARAMS,
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
    raw, dollars = _read_toml(main, label)
    problems: list[str] = []
    if dollars:  # a file without a "$" has no ${VAR}: its 100,000 jobs are not walked
        raw = _expand(raw, label, "", problems)
    if problems:
        raise ConfigError(problems)
    # The jobs are validated and resolved one by one, each table dropped once it is a
    # WatchedJob: 100,000 of them are never held three times over.
    tables: list[tuple[list[Any], str]] = [(_pop_jobs(raw), label)]
    invalid: list[str] = []
    parsed = _validate(MainFile, raw, label, invalid)
    unreadable: list[str] = []
    for dropin in [*_included(main.parent, parsed.daemon.include if parsed else (), label), *extra]:
        extra_label = _display(dropin, main.parent)
        try:  # each drop-in that cannot be read is a line of its own; the others are read
            read, dollars = _read_toml(dropin, extra_label)
        except ConfigError as exc:
            unreadable += exc.problems
            continue
        extra_raw = _expand(read, extra_label, "", problems) if dollars else read
        if problems:
            raise ConfigError(problems)
        tables.append((_pop_jobs(extra_raw), extra_label))
        _validate(DropInFile, extra_raw, extra_label, invalid)
    if unreadable:
        raise ConfigError(unreadable)
    templates = check_urls if check_templates is None else check_templates
    resolving = _Resolving(main, label, parsed, check_urls, templates) if parsed else None
    jobs = _JobTables(parsed, resolving)
    for table, table_label in tables:
        jobs.read(table, table_label, invalid)
    if invalid or resolving is None:
        raise ConfigError(invalid)
    config = resolving.config(jobs.keyed(), jobs.problems)
    if check_urls if check_dirs is None else check_dirs:
        _check_archive_dirs(config, main, label)
    return replace(config, include=resolving.parsed.daemon.include)


def _pop_jobs(raw: dict[str, Any]) -> list[Any]:
    """The file's ``[[jobs]]`` tables, taken out of it (left in when not an array of them,
    for the file's validation to say so)."""
    jobs = raw.get("jobs")
    if isinstance(jobs, list):
        del raw["jobs"]
        return jobs
    return []


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


def _display(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


# A config file larger than this is not one (and /dev/zero would never end).
MAX_CONFIG_BYTES = 16 * 1024 * 1024


def _read_toml(path: Path, label: str) -> tuple[dict[str, Any], bool]:
    """The file's tables, and whether it holds a "$" anywhere."""
    try:
        # Opened without blocking: a FIFO would wait for a writer for ever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError
            if not stat.S_ISREG(mode):
                raise ConfigError([f"{label}: not a regular file (a FIFO, a device...)"])
            data = handle.read(MAX_CONFIG_BYTES + 1)
            if len(data) > MAX_CONFIG_BYTES:
                raise ConfigError([f"{label}: larger than {MAX_CONFIG_BYTES // 2**20} MB"])
            text = data.decode("utf-8")
            return tomli.loads(text), "$" in text
    except FileNotFoundError:
        raise ConfigError([f"{label}: file not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{label}: is a folder, not a file"]) from None
    except PermissionError:
        raise ConfigError([f"{label}: permission denied"]) from None
    except tomli.TOMLDecodeError as exc:
        raise ConfigError([f"{label}: not valid TOML: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{label}: not valid UTF-8"]) from None
    except RecursionError:
        raise ConfigError([f"{label}: not valid TOML: nested too deeply"]) from None
    except OSError as exc:  # a symbolic link loop, a file that cannot be read...
        raise ConfigError([f"{label}: cannot read it: {exc.strerror or exc}"]) from None


_CREDENTIAL = re.compile(r"\$\{CREDENTIALS_DIRECTORY\}/([^/$]+)")


def _expand(value: Any, label: str, where: str, problems: list[str]) -> Any:
    """Replace ``${VAR}`` from the environment in every string (``$$`` is a dollar).

    Outside the service, ``${CREDENTIALS_DIRECTORY}/ID`` is the file the installed unit
    loads as credential ID (its ``LoadCredential=ID:PATH``), so that commands run by hand
    read what the service would. Tables and arrays are changed in place (a config of
    100,000 jobs is not copied), and only strings holding a ``$`` are looked at."""
    if isinstance(value, str):
        return _expand_text(value, label, where, problems) if "$" in value else value
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str | dict | list) and _has_dollar(item):
                value[key] = _expand(item, label, f"{where}.{key}" if where else key, problems)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str | dict | list) and _has_dollar(item):
                value[i] = _expand(item, label, f"{where}[{i}]", problems)
    return value


def _has_dollar(value: str | dict[str, Any] | list[Any]) -> bool:
    if isinstance(value, str):
        return "$" in value
    items = value.values() if isinstance(value, dict) else value
    return any(isinstance(v, dict | list) or (isinstance(v, str) and "$" in v) for v in items)


def _expand_text(value: str, label: str, where: str, problems: list[str]) -> str:
    if not READ_SECRETS.get() and (
        where.rsplit(".", 1)[-1].removesuffix("_file") in SECRET_KEYS or ".headers." in where
    ):
        return ""  # a secret this command does not read: its variables need not be set
    if "CREDENTIALS_DIRECTORY" not in os.environ and (found := _CREDENTIAL.fullmatch(value)):
        from jobherald.config.paths import UNIT, unit_credentials

        source = unit_credentials().get(found[1])
        if source is not None:
            return str(source)
        problems.append(
            f"{label}: {where}: environment variable CREDENTIALS_DIRECTORY is not set, "
            f"and the installed {UNIT} loads no credential {found[1]!r} (LoadCredential=)"
        )
        return ""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        if name not in os.environ:
            problems.append(f"{label}: {where}: environment variable {name} is not set")
            return ""
        return os.environ[name]

    return _VAR.sub(substitute, value)


def _key_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _validate(model: type[M], raw: dict[str, Any], label: str, invalid: list[str]) -> M | None:
    """The validated model, or None with one line per problem added to ``invalid``."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        invalid.extend(_describe(err, label, raw) for err in exc.errors())
        return None


# Keys whose values are never echoed in a problem line (they may be secrets).
_SECRET_KEYS = frozenset(
    {"token", "password", "sk", "security_token", "heartbeat_url", "urls", "url", "headers"}
)


def _known_keys() -> list[str]:
    """Every key any section takes: what an unknown key is compared with."""
    from jobherald.config import sections
    from jobherald.sources.sections import tables

    names: set[str] = set()
    for model in [*vars(sections).values(), *tables()]:
        if isinstance(model, type) and issubclass(model, BaseModel):
            names.update(model.model_fields)
    return sorted(names)


def _job_named(loc: Sequence[int | str], raw: dict[str, Any] | None) -> str:
    """`` (id 'backup')`` after ``jobs[5]`` when the job gives an id."""
    if raw is None or len(loc) < 2 or loc[0] != "jobs" or not isinstance(loc[1], int):
        return ""
    jobs = raw.get("jobs")
    if not isinstance(jobs, list) or not 0 <= loc[1] < len(jobs):
        return ""
    job_id = jobs[loc[1]].get("id") if isinstance(jobs[loc[1]], dict) else None
    return f" (id {job_id!r})" if isinstance(job_id, str) and len(job_id) <= 128 else ""


def _given(err: Any, loc: Sequence[int | str]) -> str:
    """`` (given 'x')``: the value a wrong type was given as, unless it may be a secret."""
    if any(isinstance(p, str) and p in _SECRET_KEYS for p in loc) or "input" not in err:
        return ""
    value = err["input"]
    if isinstance(value, dict | list):
        return ""
    shown = repr(value)
    return f" (given {shown[:60]}{'…' if len(shown) > 60 else ''})"


def _describe(err: Any, label: str, raw: dict[str, Any] | None = None) -> str:
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
    tag = (err.get("ctx") or {}).get("tag")
    given_tag = f" {tag!r}" if isinstance(tag, str) and len(tag) <= 60 else ""
    if kind == "extra_forbidden":
        import difflib

        message = "unknown key"
        key = loc[-1] if loc else None
        known = [k for k in _known_keys() if k != key]
        close = (
            difflib.get_close_matches(key, known, n=1, cutoff=0.8) if isinstance(key, str) else []
        )
        if close:
            message += f" (did you mean {close[0]}?)"
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "too_short":
        message = "must not be empty"
    elif kind == "union_tag_invalid" and is_source:
        message = f"unknown source type{given_tag} (known: {', '.join(SOURCE_TYPES)})"
        loc = [*loc, "type"]
    elif kind == "union_tag_not_found" and is_source:
        message = f"required key 'type' is missing ({', '.join(SOURCE_TYPES)})"
    elif kind == "union_tag_invalid":
        message = f"unknown method{given_tag} (known: {', '.join(methods)})"
        loc = [*loc, "method"]
    elif kind == "union_tag_not_found":
        message = f"required key 'method' is missing ({', '.join(methods)})"
    else:
        message = str(err["msg"]).removeprefix("Value error, ")
        if kind in ("literal_error", "enum") and loc and loc[-2:-1] == ["on"]:
            message = f"unknown event {err.get('input')!r} (known: {', '.join(EVENTS)})"
        elif kind.endswith(("_type", "_parsing")) or kind == "literal_error":
            message += _given(err, loc)
    place = _key_path(loc)
    if named := _job_named(loc, raw):
        place = place.replace(f"jobs[{loc[1]}]", f"jobs[{loc[1]}]{named}", 1)
    return f"{label}: {place}: {message}"


def _included(base: Path, patterns: Sequence[str], label: str) -> Iterator[Path]:
    seen: set[Path] = set()
    for i, pattern in enumerate(patterns):
        full = pattern if os.path.isabs(pattern) else str(base / pattern)
        for match in sorted(glob.glob(full)):
            path = Path(match)
            # Anything matched is read, or said in a line why not: a FIFO, a device, a
            # symlink loop or an unreadable file is never skipped in silence.
            if path in seen:
                continue
            seen.add(path)
            yield path
        if not any(ch in pattern for ch in "*?[") and not Path(full).exists():
            raise ConfigError([f"{label}: daemon.include[{i}]: file not found: {pattern}"])
        if Path(full).is_dir():
            raise ConfigError(
                [
                    f"{label}: daemon.include[{i}]: {pattern} is a folder: name its files, "
                    f"e.g. {pattern.rstrip('/')}/*.toml"
                ]
            )


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

    def config(self, jobs: Sequence[WatchedJob], job_problems: Sequence[str]) -> Config:
        parsed, label = self.parsed, self.label
        problems = [*self.problems, *job_problems]
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
            public_url=public_url,
            rules=self.rules,
            sources=self.sources,
            notifiers=self.notifiers,
            jobs=tuple(jobs),
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
        digest_after=section.digest_after,
        digest_max=section.digest_max,
        digest_title=section.digest_title,
        digest_body=section.digest_body,
    )


_RULE_KEYS = frozenset(RuleFields.model_fields)


class _JobTables:
    """``[[jobs]]`` tables validated and resolved one at a time (each left as None once
    it is a WatchedJob); what the main file shares among its jobs worked out once."""

    def __init__(self, parsed: MainFile | None, resolving: _Resolving | None) -> None:
        self.parsed, self.resolving = parsed, resolving
        self.watched: list[WatchedJob] = []
        self.problems: list[str] = []
        self.seen: dict[tuple[str, str, str, tuple[tuple[str, str], ...]], tuple[str, int]] = {}
        if parsed is None:
            return
        self.known_sources = ", ".join(sorted(parsed.sources)) or "none defined"
        self.known_notifiers = ", ".join(sorted(parsed.notifiers)) or "none defined"
        self.everyone = tuple(parsed.notifiers)

    def keyed(self) -> list[WatchedJob]:
        """The jobs, each under its key: its id, unless another job has the same id (in
        another source, instance or namespace): then "source/id", with "@instance" and
        "?name=value&..." (its params) where they are what tells the two apart."""
        by_id: dict[str, list[WatchedJob]] = {}
        for job in self.watched:
            by_id.setdefault(job.id, []).append(job)
        if all(len(same) == 1 for same in by_id.values()):
            return self.watched
        return [
            job if len(by_id[job.id]) == 1 else _keyed(job, job_key(job, by_id[job.id]))
            for job in self.watched
        ]

    def read(self, tables: list[Any], label: str, invalid: list[str]) -> None:
        for i, table in enumerate(tables):
            try:
                job = JobSection.model_validate(table)
            except ValidationError as exc:
                raw = {"jobs": tables}
                for err in exc.errors():
                    err["loc"] = ("jobs", i, *err["loc"])
                    invalid.append(_describe(err, label, raw))
                continue
            tables[i] = None
            if self.resolving is not None and not invalid:
                self._resolve(job, label, i)

    def _resolve(self, job: JobSection, label: str, index: int) -> None:
        assert self.parsed is not None and self.resolving is not None
        parsed, problems = self.parsed, self.problems
        section = parsed.sources.get(job.source)

        def where() -> str:  # only worked out for a problem
            return _job_where(label, index, job.id)

        if section is None:
            problems.append(
                f"{where()}.source: unknown source {job.source!r} (known: {self.known_sources})"
            )
            return
        for i, notifier in enumerate(job.notify or ()):
            if notifier not in parsed.notifiers:
                problems.append(
                    f"{where()}.notify[{i}]: unknown notifier {notifier!r} "
                    f"(known: {self.known_notifiers})"
                )
        params = tuple(sorted(job.params.items())) if job.params else ()
        if job.params is not None and not section.params:
            problems.append(
                f"{where()}.params: only for {' and '.join(WITH_PARAMS)} sources "
                f"({job.source!r} is {section.type})"
            )
            return
        source = self.resolving.sources.get(job.source)
        settings = getattr(source, "settings", None)
        if isinstance(settings, HttpJsonSettings):
            missing = sorted(settings.placeholders - {"job_id"} - dict(params).keys())
            if missing:
                names = ", ".join(f"{{{m}}}" for m in missing)
                problems.append(
                    f"{where()}.params: source {job.source!r} has {names} in its url: "
                    f"give {', '.join(missing)} in this job's params"
                )
                return
        if not section.instances:
            if job.instance_id is not None:
                problems.append(
                    f"{where()}.instance_id: only for {' and '.join(WITH_INSTANCES)} sources "
                    f"({job.source!r} is {section.type})"
                )
                return
            instance_id = ""
        else:
            instance_id = job.instance_id or getattr(section, "instance_id", None) or ""
            if not instance_id:
                problems.append(
                    f"{where()}.instance_id: required, as source {job.source!r} sets no instance_id"
                )
                return
        if source is None:
            return
        # One job is its source, id, instance and params: the same four twice is one job
        # given twice; the same id with any of the others differing is two jobs.
        identity = (job.id, source.name, instance_id, params)
        if identity in self.seen:
            first = _job_where(*self.seen[identity], job.id)
            problems.append(f"{where()}.id: duplicate job id {job.id!r} (first in {first})")
            return
        self.seen[identity] = (label, index)
        # A job that sets no rule of its own shares its source's (one Rules, not 100,000).
        own_rules = not _RULE_KEYS.isdisjoint(job.model_fields_set)
        self.watched.append(
            WatchedJob(
                id=job.id,
                name=job.name or job.id,
                source=source.name,
                instance_id=instance_id,
                notify=job.notify if job.notify is not None else self.everyone,
                poll_interval=job.poll_interval or parsed.daemon.poll_interval,
                origin=label,
                rules=job.over(source.rules) if own_rules else source.rules,
                params=params,
                index=index,
            )
        )


def _keyed(job: WatchedJob, key: str) -> WatchedJob:
    # Without a name of its own, a job is named by its key: "backup" alone would not say
    # which of the two finished.
    name = key if job.name == job.id else job.name
    return replace(job, id=key, remote=job.id, name=name)


def job_key(job: WatchedJob, same_id: Sequence[WatchedJob]) -> str:
    """The key of a job whose id other configured jobs share (see ``_JobTables.keyed``)."""
    key = f"{job.source}/{job.id}"
    same_source = [j for j in same_id if j.source == job.source]
    if len({j.instance_id for j in same_source}) > 1:
        key += f"@{job.instance_id}"
    same_instance = [j for j in same_source if j.instance_id == job.instance_id]
    if len({j.params for j in same_instance}) > 1:
        key += "?" + "&".join(f"{name}={value}" for name, value in job.params)
    if len(key) > 128:  # what the database keeps of a key: cut, told apart by a hash
        import hashlib

        key = f"{key[:115]}~{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    return key


def _job_where(label: str, index: int, job_id: str) -> str:
    return f"{label}: jobs[{index}] (id {job_id!r})"


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
    return HttpConfig(host, port, token, section.header_timeout, section.max_connections)


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
    level = apprise_logger.level
    apprise_logger.setLevel(logging.CRITICAL)
    try:
        plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    finally:
        apprise_logger.setLevel(level)
    if plugin is None:
        return f"apprise cannot use this {scheme}:// URL (unknown service or missing parts)"
    return None
