"""The command line: ``jobherald run | check-config | status | history | notify-test | demo``.

Heavy imports happen inside the commands, so each command loads only what it uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from jobherald.config import Config
    from jobherald.store import Store

T = TypeVar("T")

EXIT_USAGE = 2
EXIT_FAILURE = 1


def _fail(message: str, code: int = EXIT_FAILURE) -> None:
    click.echo(f"jobherald: {message}", err=True)
    sys.exit(code)


def _load(ctx: click.Context, path: str | None, *, check_urls: bool = False) -> Config:
    """The config, or exit 2 with its problems. Notifier URLs are checked (which loads
    apprise) only by the commands that send or check them."""
    from jobherald import config
    from jobherald.errors import ConfigError

    try:
        return config.load(path or ctx.obj.get("config"), check_urls=check_urls)
    except ConfigError as exc:
        for line in exc.problems:
            click.echo(line, err=True)
        sys.exit(EXIT_USAGE)


def _run(coro: Coroutine[Any, Any, T], event_loop: str = "asyncio") -> T:
    from jobherald.errors import StoreError

    factory = None
    if event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)
    except StoreError as exc:
        _fail(str(exc))
        raise AssertionError from None  # unreachable


config_option = click.option(
    "--config",
    "-c",
    "config_path",
    metavar="PATH",
    help="Config file (default: $JOBHERALD_CONFIG, else /etc/jobherald/config.toml).",
)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.version_option(package_name="jobherald")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Watch long-running cloud jobs and tell people when they finish or fail."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config_path


@cli.command()
@config_option
@click.option("--once", is_flag=True, help="Poll every unfinished job once, notify, and exit.")
@click.pass_context
def run(ctx: click.Context, config_path: str | None, once: bool) -> None:
    """Run the daemon in the foreground (logs go to stderr)."""
    # The daemon refuses a URL apprise cannot use before it starts; one pass loads
    # apprise only if it has something to send.
    cfg = _load(ctx, config_path, check_urls=not once)
    from jobherald.service import Daemon, setup_logging

    setup_logging(cfg.log_level)
    daemon = Daemon(cfg)
    if once:
        _run(daemon.run_once(), cfg.event_loop)
    else:
        _run(daemon.run(), cfg.event_loop)


@cli.command("check-config")
@config_option
@click.pass_context
def check_config(ctx: click.Context, config_path: str | None) -> None:
    """Validate the config: exit 0, or 2 with one line per problem."""
    cfg = _load(ctx, config_path, check_urls=True)
    click.echo(
        f"{cfg.path}: ok ({len(cfg.jobs)} jobs, {len(cfg.sources)} sources, "
        f"{len(cfg.notifiers)} notifiers)"
    )


async def _rows(cfg: Config) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every known job as `status --json` shows it, and the deliveries counted by state."""
    from jobherald.schedule.replicas import owner
    from jobherald.store import Store, reasons_of

    rows: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    live: list[str] = []
    configured = {j.id for j in cfg.jobs}
    if _database_exists(cfg.database_url):
        store = await Store.open(cfg.database_url)
        try:
            members, _ = await store.members()
            live = [m.name for m in members if m.live]
            for row in await store.status():
                rows[row.id] = {
                    "id": row.id,
                    "name": row.name,
                    "source": row.source,
                    "status": row.state,
                    "raw_status": row.raw_status,
                    "progress": row.progress,
                    "archive_id": row.archive_id,
                    "reasons": reasons_of(row),
                    "last_polled_at": _iso(row.last_polled_at),
                    "last_changed_at": _iso(row.last_changed_at),
                    "error": row.error,
                    "owner": None,
                }
            counts = await store.delivery_counts()
        finally:
            await store.close()
    for job in cfg.jobs:
        rows.setdefault(
            job.id,
            {
                "id": job.id,
                "name": job.name,
                "source": job.source,
                "status": "pending",
                "raw_status": None,
                "progress": None,
                "archive_id": None,
                "reasons": [],
                "last_polled_at": None,
                "last_changed_at": None,
                "error": None,
                "owner": None,
            },
        )
    for item in rows.values():
        # The replica polling it now: the same rendezvous hash every replica computes.
        if item["id"] in configured and item["status"] not in ("succeeded", "failed", "lost"):
            item["owner"] = owner(item["id"], live)
    return list(rows.values()), counts


def _database_exists(url: str) -> bool:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return True
    return bool(parsed.database) and Path(str(parsed.database)).exists()


def _table(headers: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*row)
    # On a terminal, fit its width; into a pipe or file, one line per row.
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 10_000)
    console.print(table)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _ago(value: str | None, now: datetime) -> str:
    if value is None:
        return "-"
    seconds = (now - datetime.fromisoformat(value.replace("Z", "+00:00"))).total_seconds()
    from jobherald.model import format_duration

    return f"{format_duration(max(seconds, 0))} ago"


def _bar(row: dict[str, Any]) -> str:
    if row["progress"] is None:
        return "-"
    if row["status"] != "running":
        return _pct(row["progress"])
    filled = round(row["progress"] * 10)
    return f"{'█' * filled}{'░' * (10 - filled)} {_pct(row['progress'])}"


STATUS_HEADERS = [
    "NAME",
    "ID",
    "SOURCE",
    "STATE",
    "PROGRESS",
    "CHANGED",
    "POLLED",
    "OWNER",
    "ERROR",
]


def _status_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    from datetime import UTC

    now = datetime.now(UTC)
    return [
        [
            r["name"],
            r["id"],
            r["source"],
            r["status"] if r["status"] != "unknown" else f"unknown ({r['raw_status']})",
            _bar(r),
            _ago(r["last_changed_at"], now),
            _ago(r["last_polled_at"], now),
            r["owner"] or "-",
            r["error"] or "",
        ]
        for r in rows
    ]


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--watch", "live", is_flag=True, help="Keep the view open, redrawn as jobs change.")
@click.option(
    "--every",
    type=float,
    default=1.0,
    show_default=True,
    help="With --watch: seconds between looks.",
)
@click.pass_context
def status(
    ctx: click.Context, config_path: str | None, as_json: bool, live: bool, every: float
) -> None:
    """Every known job: state, progress, last change, last poll, last error."""
    cfg = _load(ctx, config_path)
    if live:
        _watch_status(cfg, every)
        return
    rows, counts = _run(_rows(cfg))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no jobs")
        return
    _table(STATUS_HEADERS, _status_rows(rows))
    if counts.get("pending") or counts.get("abandoned"):
        click.echo(
            f"\ndeliveries: {counts.get('pending', 0)} pending, "
            f"{counts.get('abandoned', 0)} abandoned (see `jobherald deliveries`)"
        )


def _watch_status(cfg: Config, every: float) -> None:
    """A live view until Ctrl-C: redrawn in place on a terminal, a new table per change elsewhere."""
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    def render(rows: list[dict[str, Any]]) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold", title="jobherald status")
        for header in STATUS_HEADERS:
            table.add_column(header)
        for row in _status_rows(rows):
            table.add_row(*row)
        return table

    async def loop() -> None:
        console = Console(width=None if sys.stdout.isatty() else 10_000)
        seen: list[dict[str, Any]] | None = None
        if console.is_terminal:
            with Live(render([]), console=console, auto_refresh=False) as view:
                while True:
                    rows, _ = await _rows(cfg)
                    view.update(render(rows), refresh=True)
                    await asyncio.sleep(every)
        while True:
            rows, _ = await _rows(cfg)
            changed = [{k: v for k, v in r.items() if k != "last_polled_at"} for r in rows]
            if changed != seen:
                seen = changed
                console.print(render(rows))
                sys.stdout.flush()
            await asyncio.sleep(every)

    with contextlib.suppress(KeyboardInterrupt):
        _run(loop())


@cli.command()
@config_option
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def history(ctx: click.Context, config_path: str | None, job_id: str, as_json: bool) -> None:
    """The job's transitions, oldest first."""
    cfg = _load(ctx, config_path)

    async def fetch() -> list[dict[str, Any]] | None:
        from jobherald.store import Store

        if not _database_exists(cfg.database_url):
            return None
        store = await Store.open(cfg.database_url)
        try:
            if await store.job(job_id) is None:
                return None
            return [
                {
                    "at": _iso(t.at),
                    "from": t.from_state,
                    "to": t.to_state,
                    "progress": t.progress,
                    "raw_status": t.raw_status,
                }
                for t in await store.history(job_id)
            ]
        finally:
            await store.close()

    items = _run(fetch())
    if items is None:
        if any(j.id == job_id for j in cfg.jobs):
            items = []
        else:
            _fail(f"no job {job_id!r} in the database or the config")
            return
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo(f"no transitions recorded for {job_id} yet")
        return
    _table(
        ["AT", "FROM", "TO", "PROGRESS", "RAW STATUS"],
        [
            [i["at"] or "", i["from"] or "-", i["to"], _pct(i["progress"]), i["raw_status"] or ""]
            for i in items
        ],
    )


@cli.command("notify-test")
@config_option
@click.argument("notifier", required=False)
@click.pass_context
def notify_test(ctx: click.Context, config_path: str | None, notifier: str | None) -> None:
    """Send a test message through one notifier, or all; exit 1 if any fails."""
    cfg = _load(ctx, config_path, check_urls=True)
    names = list(cfg.notifiers)
    if notifier is not None:
        if notifier not in cfg.notifiers:
            known = ", ".join(names) or "none defined"
            _fail(f"unknown notifier {notifier!r} (known: {known})", EXIT_USAGE)
        names = [notifier]
    if not names:
        _fail("no notifiers in the config", EXIT_USAGE)
    from jobherald.notify import Message, Sender

    sender = Sender(cfg.notifiers)
    pairs = [(name, target) for name in names for target in sender.targets(name)]

    async def send_all() -> list[tuple[bool, str]]:
        message = Message(
            "jobherald test message",
            "This is a test message from jobherald: this notifier works.",
            "info",
        )
        return list(await asyncio.gather(*(sender.send(n, t.key, message) for n, t in pairs)))

    try:
        results = _run(send_all())
    finally:
        sender.close()
    for (name, target), (ok, why) in zip(pairs, results, strict=True):
        click.echo(f"{name} {target.url}: {'sent' if ok else 'FAILED: ' + why}")
    if not all(ok for ok, _ in results):
        sys.exit(EXIT_FAILURE)


async def _with_store(cfg: Config, work: Callable[[Store], Coroutine[Any, Any, T]]) -> T:
    from jobherald.store import Store as OpenStore

    store = await OpenStore.open(cfg.database_url)
    try:
        return await work(store)
    finally:
        await store.close()


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def replicas(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """The daemons sharing this database: live or not, and how many jobs each polls."""
    cfg = _load(ctx, config_path)

    async def fetch() -> list[dict[str, Any]]:
        if not _database_exists(cfg.database_url):
            return []
        members, _ = await _with_store(cfg, lambda store: store.members())
        return [
            {
                "name": m.name,
                "host": m.host,
                "pid": m.pid,
                "started_at": _iso(m.started_at),
                "heartbeat_at": _iso(m.heartbeat_at),
                "jobs": m.jobs if m.live else 0,
                "live": m.live,
            }
            for m in members
        ]

    items = _run(fetch())
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no replicas: no daemon has run on this database")
        return
    from datetime import UTC

    now = datetime.now(UTC)
    _table(
        ["NAME", "HOST", "PID", "STARTED", "HEARTBEAT", "JOBS", "LIVE"],
        [
            [
                i["name"],
                i["host"],
                str(i["pid"]),
                _ago(i["started_at"], now),
                _ago(i["heartbeat_at"], now),
                f"{i['jobs']:,}",
                "yes" if i["live"] else "no",
            ]
            for i in items
        ],
    )


@cli.group(invoke_without_command=True)
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--all", "show_all", is_flag=True, help="Also list delivered and dropped ones.")
@click.pass_context
def deliveries(ctx: click.Context, config_path: str | None, as_json: bool, show_all: bool) -> None:
    """Messages waiting to be delivered, and those given up on (retry or drop them)."""
    ctx.obj["config"] = config_path or ctx.obj.get("config")
    if ctx.invoked_subcommand is not None:
        return
    cfg = _load(ctx, None)
    states = ["pending", "abandoned"] + (["delivered", "dropped"] if show_all else [])
    rows = _run(_with_store(cfg, lambda store: store.deliveries(states)))
    items = [
        {
            "id": r.id,
            "event_id": r.event_id,
            "kind": r.kind,
            "job_id": r.job_id,
            "source": r.source,
            "notifier": r.notifier,
            "url": r.url,
            "state": r.state,
            "attempts": r.attempts,
            "created_at": _iso(r.at),
            "next_attempt_at": _iso(r.next_attempt_at) if r.state == "pending" else None,
            "delivered_at": _iso(r.delivered_at),
            "last_error": r.last_error,
            "sent_by": r.sent_by,
        }
        for r in rows
    ]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no deliveries pending or abandoned")
        return
    _table(
        ["ID", "STATE", "EVENT", "ABOUT", "NOTIFIER", "URL", "TRIES", "NEXT", "LAST ERROR"],
        [
            [
                str(i["id"]),
                i["state"],
                i["kind"],
                i["job_id"] or f"source {i['source']}",
                i["notifier"],
                i["url"] or "(all)",
                str(i["attempts"]),
                i["next_attempt_at"] or "-",
                i["last_error"] or "",
            ]
            for i in items
        ],
    )


def _ids(ids: tuple[int, ...], every: bool) -> list[int] | None:
    if every == bool(ids):
        _fail("give delivery ids, or --all", EXIT_USAGE)
    return None if every else list(ids)


@deliveries.command("retry")
@config_option
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "every", is_flag=True, help="Every pending and abandoned delivery.")
@click.pass_context
def deliveries_retry(
    ctx: click.Context, config_path: str | None, ids: tuple[int, ...], every: bool
) -> None:
    """Send these deliveries again at the daemon's next pass (abandoned ones too)."""
    from datetime import UTC

    chosen = _ids(ids, every)
    cfg = _load(ctx, config_path)
    count = _run(_with_store(cfg, lambda s: s.retry_deliveries(chosen, datetime.now(UTC))))
    click.echo(f"{count} deliveries will be tried again")


@deliveries.command("drop")
@config_option
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "every", is_flag=True, help="Every pending and abandoned delivery.")
@click.pass_context
def deliveries_drop(
    ctx: click.Context, config_path: str | None, ids: tuple[int, ...], every: bool
) -> None:
    """Give up on these deliveries for good."""
    chosen = _ids(ids, every)
    cfg = _load(ctx, config_path)
    count = _run(_with_store(cfg, lambda s: s.drop_deliveries(chosen)))
    click.echo(f"{count} deliveries dropped")


@cli.group()
def db() -> None:
    """The database schema: which revision it is at, and bringing it up to date."""


@db.command("current")
@config_option
@click.pass_context
def db_current(ctx: click.Context, config_path: str | None) -> None:
    """Print the database's schema revision and whether it is the newest."""
    from jobherald.store import Store, head_revision

    cfg = _load(ctx, config_path)
    if not _database_exists(cfg.database_url):
        click.echo(f"no database yet at {_where(cfg.database_url)}")
        return

    async def current() -> str | None:
        store = await Store.open(cfg.database_url, migrate=False)
        try:
            return await store.current_revision()
        finally:
            await store.close()

    revision, head = _run(current()), head_revision()
    if revision == head:
        click.echo(f"{revision} (newest)")
    else:
        click.echo(f"{revision or 'empty'} (newest is {head}: run `jobherald db upgrade`)")


@db.command("upgrade")
@config_option
@click.pass_context
def db_upgrade(ctx: click.Context, config_path: str | None) -> None:
    """Bring the database to the newest schema (an SQLite file is copied aside first)."""
    from jobherald.service import setup_logging
    from jobherald.store import head_revision

    cfg = _load(ctx, config_path)
    setup_logging("info")

    async def nothing(_store: Store) -> None:
        return None

    _run(_with_store(cfg, nothing))
    click.echo(f"database at {head_revision()} (newest): {_where(cfg.database_url)}")


def _where(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _dropin_folder(cfg: Config) -> tuple[Path, str]:
    if not cfg.include:
        _fail(
            f"{cfg.path}: daemon.include is empty: there is no folder for drop-in files", EXIT_USAGE
        )
    pattern = cfg.include[0]
    full = Path(pattern) if Path(pattern).is_absolute() else cfg.path.parent / pattern
    if any(ch in str(full.parent) for ch in "*?["):
        _fail(
            f"{cfg.path}: daemon.include[0]: {pattern!r} has no plain folder to write into",
            EXIT_USAGE,
        )
    return full.parent, full.name


def _reload_service() -> None:
    import subprocess

    try:
        done = subprocess.run(
            ["systemctl", "reload", "jobherald.service"],  # noqa: S607 (found on PATH, as a person would)
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        _fail("cannot reload: systemctl is not here (send SIGHUP to the daemon instead)")
        return
    if done.returncode != 0:
        _fail(f"cannot reload jobherald.service: {done.stderr.strip() or done.returncode}")
    click.echo("reloaded jobherald.service")


@cli.command()
@config_option
@click.argument("job_id")
@click.option("--source", "-s", required=True, help="The source the job belongs to.")
@click.option("--name", "-n", help="A name for messages and status (default: the id).")
@click.option("--instance-id", help="The ROMA Connect instance, when not the source's.")
@click.option("--reload", "reload_service", is_flag=True, help="Reload the running service after.")
@click.pass_context
def watch(
    ctx: click.Context,
    config_path: str | None,
    job_id: str,
    source: str,
    name: str | None,
    instance_id: str | None,
    reload_service: bool,
) -> None:
    """Start watching a job: write a drop-in file for it (checked before it is put in place)."""
    import fnmatch
    import os

    from jobherald import config as config_module
    from jobherald.errors import ConfigError

    cfg = _load(ctx, config_path)
    existing = next((j for j in cfg.jobs if j.id == job_id), None)
    if existing is not None:
        _fail(f"job {job_id} is already watched ({existing.origin})", EXIT_USAGE)
    folder, pattern = _dropin_folder(cfg)
    target = folder / f"{job_id}.toml"
    if not fnmatch.fnmatchcase(target.name, pattern):
        _fail(f"{target.name} would not match daemon.include[0] ({cfg.include[0]})", EXIT_USAGE)
    lines = ["[[jobs]]", f"id = {json.dumps(job_id)}", f"source = {json.dumps(source)}"]
    if name:
        lines.append(f"name = {json.dumps(name)}")
    if instance_id:
        lines.append(f"instance_id = {json.dumps(instance_id)}")
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{job_id}.toml.new"
    with staging.open("w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    try:
        config_module.load(cfg.path, extra=[staging], check_urls=False)
    except ConfigError as exc:
        staging.unlink(missing_ok=True)
        for line in exc.problems:
            click.echo(line.replace(staging.name, target.name), err=True)
        sys.exit(EXIT_USAGE)
    os.replace(staging, target)
    click.echo(f"watching {job_id}{f' ({name})' if name else ''} from {source}: wrote {target}")
    if reload_service:
        _reload_service()


@cli.command()
@config_option
@click.argument("job_id")
@click.option("--reload", "reload_service", is_flag=True, help="Reload the running service after.")
@click.pass_context
def forget(ctx: click.Context, config_path: str | None, job_id: str, reload_service: bool) -> None:
    """Stop watching a job by removing its drop-in file (its history is kept)."""
    import tomllib

    cfg = _load(ctx, config_path)
    job = next((j for j in cfg.jobs if j.id == job_id), None)
    if job is None:
        _fail(f"no job {job_id!r} in the config", EXIT_USAGE)
        return
    label = job.origin.rsplit(": jobs[", 1)[0]
    path = Path(label) if Path(label).is_absolute() else cfg.path.parent / label
    if path.resolve() == cfg.path.resolve():
        _fail(f"job {job_id} is in {cfg.path} itself: remove its [[jobs]] table there", EXIT_USAGE)
    with path.open("rb") as handle:
        others = [j for j in tomllib.load(handle).get("jobs", []) if j.get("id") != job_id]
    if others:
        _fail(f"{path} holds other jobs too: remove the table of {job_id} by hand", EXIT_USAGE)
    path.unlink()
    click.echo(f"forgot {job_id}: removed {path} (its history is kept)")
    if reload_service:
        _reload_service()


@cli.command()
@click.option("--speed", type=float, default=1.0, help="Faster (2) or slower (0.5) jobs.")
def demo(speed: float) -> None:
    """A self-contained show: simulated ROMA Connect jobs, notifications in the terminal."""
    from jobherald.demo import run_demo

    sys.exit(asyncio.run(run_demo(speed)))


def main() -> None:
    cli(prog_name="jobherald")
