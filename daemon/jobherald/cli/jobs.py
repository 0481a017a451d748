"""Registering jobs from the command line: watch and forget (drop-in files)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from jobherald.cli.base import (
    EXIT_USAGE,
    cli,
    config_option,
    fail,
    load_config,
    pick_job,
    where,
)

if TYPE_CHECKING:
    from jobherald.config import Config
    from jobherald.store import Store


def _dropin_folder(cfg: Config) -> tuple[Path, str]:
    if not cfg.include:
        fail(
            f"{cfg.path}: daemon.include is empty: there is no folder for drop-in files", EXIT_USAGE
        )
    pattern = cfg.include[0]
    full = Path(pattern) if Path(pattern).is_absolute() else cfg.path.parent / pattern
    if any(ch in str(full.parent) for ch in "*?["):
        fail(
            f"{cfg.path}: daemon.include[0]: {pattern!r} has no plain folder to write into",
            EXIT_USAGE,
        )
    return full.parent, full.name


def reload_the_service(cfg: Config, *, quiet_stdout: bool = False) -> None:
    """`systemctl reload jobherald.service` where systemd runs; elsewhere (or when the
    unit is not there) SIGHUP to the daemon holding the database, found by its lock.
    Says which it did (on stderr with ``quiet_stdout``)."""
    import subprocess

    said = "cannot reload: systemd does not run here"
    if Path("/run/systemd/system").is_dir():
        try:
            done = subprocess.run(
                ["systemctl", "reload", "jobherald.service"],  # noqa: S607 (found on PATH, as a person would)
                capture_output=True,
                text=True,
                check=False,
            )
        except FileNotFoundError:
            said = "cannot reload: systemctl is not here"
        else:
            if done.returncode == 0:
                click.echo("reloaded jobherald.service", err=quiet_stdout)
                return
            said = f"cannot reload jobherald.service: {done.stderr.strip() or done.returncode}"
    pid = _daemon_pid(cfg)
    if pid is None:
        fail(f"{said}, and no jobherald daemon holds {where(cfg.database_url)}")
        return
    import os
    import signal

    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        fail(f"{said}; sending SIGHUP to the daemon (pid {pid}) failed: {exc.strerror}")
    click.echo(f"sent SIGHUP to the jobherald daemon (pid {pid}): it reloads", err=quiet_stdout)


def _daemon_pid(cfg: Config) -> int | None:
    """The pid of the jobherald daemon on this host holding the config's SQLite database:
    the kernel must say that pid holds the lock, and the process must be this Python
    running `jobherald run` (a lock file's words alone never get a process signalled).
    None when no daemon holds it; exit 1 naming what was found when something else does."""
    import socket

    from sqlalchemy.engine import make_url

    from jobherald.store.lock import holder, lock_holders

    url = make_url(cfg.database_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    database = Path(url.database)
    held = holder(database)
    if not held or held.get("host") != socket.gethostname():
        return None
    pid = held.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        fail(f"cannot reload: the lock of {database} names no process (pid {pid!r})")
        return None
    if pid not in lock_holders(database):
        fail(
            f"cannot reload: the lock file of {database} names pid {pid}, but the kernel "
            "says that process does not hold the lock"
        )
    what = _process(pid)
    if what is None:
        fail(
            f"cannot reload: pid {pid}, which holds the lock of {database}, is not a "
            "jobherald daemon run by this Python"
        )
    if held.get("what") != "the jobherald daemon":
        return None  # another jobherald command holds it (prune, db compact): no daemon
    return pid


def _process(pid: int) -> str | None:
    """What process ``pid`` is when it is this Python running `jobherald run` (its
    command line), else None."""
    import os

    try:
        exe = os.path.realpath(f"/proc/{pid}/exe")
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = [a.decode(errors="replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        return None
    if exe != os.path.realpath(sys.executable):
        return None
    # python -m jobherald run ..., or the jobherald script (python /path/bin/jobherald run).
    runs = "run" in argv[1:] and (
        "jobherald" in argv[1:3] or any(Path(a).name == "jobherald" for a in argv[1:2])
    )
    return " ".join(argv) if runs else None


def dropin_lines(
    job_id: str,
    source: str,
    name: str | None = None,
    instance_id: str | None = None,
    params: Sequence[str] = (),
    forget_after: str | None = None,
) -> list[str]:
    """The TOML of one job's drop-in file (exit 2 for a bad ``--param``)."""
    lines = ["[[jobs]]", f"id = {json.dumps(job_id)}", f"source = {json.dumps(source)}"]
    if name:
        # Written as given: "$" doubled, so that ${VAR} in a name is not expanded on reading.
        lines.append(f"name = {json.dumps(name.replace('$', '$$'), ensure_ascii=False)}")
    if instance_id:
        lines.append(f"instance_id = {json.dumps(instance_id)}")
    pairs = []
    for param in params:
        key, sep, value = param.partition("=")
        if not sep or not key:
            fail(f"--param {param!r}: give KEY=VALUE", EXIT_USAGE)
        pairs.append(
            f"{json.dumps(key, ensure_ascii=False)} = "
            f"{json.dumps(value.replace('$', '$$'), ensure_ascii=False)}"
        )
    if pairs:
        lines.append(f"params = {{ {', '.join(pairs)} }}")
    if forget_after:
        lines.append(f"forget_after = {json.dumps(forget_after)}")
    return lines


def forget_after_of(cfg: Config, given: str | None) -> str | None:
    """What a new drop-in says of its ``forget_after``: ``--forget-after`` as given (exit
    2 if it is not a duration), else the config's ``forget_finished_after``, else none."""
    from jobherald.fields import parse_duration
    from jobherald.model import format_duration

    if given is None:
        default = cfg.forget_finished_after
        return None if default is None else format_duration(default)
    try:
        parse_duration(given)
    except ValueError as exc:
        fail(f"--forget-after: {exc}", EXIT_USAGE)
    return given.strip()


forget_after_option = click.option(
    "--forget-after",
    metavar="DURATION",
    help="Stop watching the job once it has been finished this long "
    "(default: daemon.forget_finished_after).",
)


def register(cfg: Config, job_id: str, lines: Sequence[str], *, check_only: bool = False) -> Path:
    """Write a job's drop-in file: staged beside its place, checked with the whole config,
    then renamed into place (exit 2, and nothing written, if the config refuses it).
    With ``check_only``, check and remove the staged file (before a job is started)."""
    import fnmatch
    import os

    from jobherald import config as config_module
    from jobherald.config.sections import JOB_ID_PATTERN
    from jobherald.errors import ConfigError

    if not JOB_ID_PATTERN.match(job_id):  # it names the file: a/b or ../x would go elsewhere
        fail(f"bad job id {job_id!r}: letters, digits and _.:- only", EXIT_USAGE)
    folder, pattern = _dropin_folder(cfg)
    # One file per job: a second job with this id (another source, instance or
    # namespace) gets "<id>-2.toml", and so on.
    target = folder / f"{job_id}.toml"
    for n in range(2, 1000):
        if not target.exists():
            break
        target = folder / f"{job_id}-{n}.toml"
    if not fnmatch.fnmatchcase(target.name, pattern):
        fail(f"{target.name} would not match daemon.include[0] ({cfg.include[0]})", EXIT_USAGE)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".{target.stem}.toml.new"
        with staging.open("w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        fail(f"cannot write a drop-in file in {folder}: {exc.strerror}")
        raise AssertionError from None  # unreachable
    try:
        config_module.load(cfg.path, extra=[staging], check_urls=False)
    except ConfigError as exc:
        staging.unlink(missing_ok=True)
        for line in exc.problems:
            click.echo(line.replace(staging.name, target.name), err=True)
        sys.exit(EXIT_USAGE)
    if check_only:
        staging.unlink(missing_ok=True)
        return target
    os.replace(staging, target)
    try:  # the rename itself made durable
        folder_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)
    except OSError:
        pass
    return target


@cli.command()
@config_option
@click.argument("job_id")
@click.option("--source", "-s", required=True, help="The source the job belongs to.")
@click.option("--name", "-n", help="A name for messages and status (default: the id).")
@click.option(
    "--instance-id", help="For a source with instances: the job's, when not the source's."
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="http-json: a value for a {KEY} in the source's url (repeatable).",
)
@forget_after_option
@click.option("--reload", "reload_service", is_flag=True, help="Reload the running service after.")
@click.pass_context
def watch(
    ctx: click.Context,
    config_path: str | None,
    job_id: str,
    source: str,
    name: str | None,
    instance_id: str | None,
    params: tuple[str, ...],
    forget_after: str | None,
    reload_service: bool,
) -> None:
    """Start watching a job: write a drop-in file for it (checked before it is put in place)."""
    cfg = load_config(ctx, config_path)
    given = cfg.sources.get(source)
    instance = instance_id or (given.instance_id if given is not None else None) or ""
    pairs = tuple(sorted(tuple(p.split("=", 1)) for p in params if "=" in p))
    for job in cfg.jobs:  # the same job again (its id alone may be another's too)
        if (job.upstream_id, job.source, job.instance_id, job.params) == (
            job_id,
            source,
            instance,
            pairs,
        ):
            fail(f"job {job_id} is already watched ({job.where})", EXIT_USAGE)
    lines = dropin_lines(
        job_id, source, name, instance_id, params, forget_after_of(cfg, forget_after)
    )
    target = register(cfg, job_id, lines)
    click.echo(f"watching {job_id}{f' ({name})' if name else ''} from {source}: wrote {target}")
    if reload_service:
        reload_the_service(cfg)


@cli.command()
@config_option
@click.argument("job_id")
@click.option("--reload", "reload_service", is_flag=True, help="Reload the running service after.")
@click.option("--purge", is_flag=True, help="Delete the job's history from the database too.")
@click.pass_context
def forget(
    ctx: click.Context, config_path: str | None, job_id: str, reload_service: bool, purge: bool
) -> None:
    """Stop watching a job by removing its drop-in file (its history is kept for
    keep_history, unless --purge deletes it now)."""
    import tomli

    cfg = load_config(ctx, config_path)
    key = pick_job(job_id, [(j.id, j.upstream_id, j.source) for j in cfg.jobs])
    job = next((j for j in cfg.jobs if j.id == key), None)
    if job is None:
        if purge:  # no longer in the config: its history alone
            _purge(cfg, job_id, None)
            return
        fail(f"no job {job_id!r} in the config", EXIT_USAGE)
        return
    label = job.origin
    path = Path(label) if Path(label).is_absolute() else cfg.path.parent / label
    if path.resolve() == cfg.path.resolve():
        fail(f"job {job_id} is in {cfg.path} itself: remove its [[jobs]] table there", EXIT_USAGE)
    with path.open("rb") as handle:
        others = [
            j
            for j in tomli.load(handle).get("jobs", [])
            if (j.get("id"), j.get("source")) != (job.upstream_id, job.source)
        ]
    if others:
        fail(f"{path} holds other jobs too: remove the table of {job_id} by hand", EXIT_USAGE)
    path.unlink()
    if reload_service:
        reload_the_service(cfg)
    if purge:
        _purge(cfg, job.id, path)
        return
    click.echo(f"forgot {job_id}: removed {path} (its history is kept)")


def _purge(cfg: Config, given: str, path: Path | None) -> None:
    """Delete a job's history from the database (after its drop-in, if any, is gone)."""
    from jobherald.cli.base import database_exists, run_async, with_store

    async def purge(store: Store) -> dict[str, int] | None:
        known = await store.answering_to(given)
        key = pick_job(given, known)
        if key is None:
            return None
        return await store.purge([key])

    counts = run_async(with_store(cfg, purge)) if database_exists(cfg.database_url) else None
    removed = f": removed {path}" if path is not None else ""
    if counts is None:
        if path is None:
            fail(f"no job {given!r} in the config or the database", EXIT_USAGE)
        click.echo(f"forgot {given}{removed} (it had no history)")
        return
    from jobherald.model import counted

    click.echo(
        f"forgot {given}{removed} and deleted its history "
        f"({counted(counts['transitions'], 'transition')}, "
        f"{counted(counts['events'], 'event')}, {counted(counts['deliveries'], 'delivery')})"
    )
