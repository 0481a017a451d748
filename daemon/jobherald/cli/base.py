"""The command line's shared parts: the group, config loading, running a coroutine, tables.

Heavy imports happen inside the commands, so each command loads only what it uses.
"""

from __future__ import annotations

import asyncio
import gc
import re
import sys
from collections.abc import Callable, Coroutine, Iterable
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


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    click.echo(f"jobherald: {clean(message)}", err=True)
    sys.exit(code)


def pick_job(given: str, known: Iterable[tuple[str, str, str]]) -> str | None:
    """The key of the job ``given`` names among ``known`` (key, upstream id, source):
    its key, its id where no other job has it, or ``source/id``; None when none has it.
    A name more than one job answers to ends the command with one line naming their
    keys."""
    jobs = set(known)
    if any(key == given for key, _, _ in jobs):
        return given
    source, _, job_id = given.rpartition("/")
    matches = sorted(
        {k for k, upstream, src in jobs if upstream == given or (src, upstream) == (source, job_id)}
    )
    if len(matches) > 1:
        fail(
            f"{given!r} is the id of {len(matches)} jobs: give one of "
            + ", ".join(matches)
            + " (the key that status --json shows)",
            EXIT_USAGE,
        )
    return matches[0] if matches else None


def load_config(
    ctx: click.Context,
    path: str | None,
    *,
    check_urls: bool = False,
    check_dirs: bool = False,
    check_templates: bool | None = None,
    secrets: bool = True,
) -> Config:
    """The config, or exit 2 with its problems. Notifier URLs are checked (which loads
    apprise) and templates rendered on samples only by the commands that send or check
    them (unless ``check_templates`` says otherwise); archive folders only by those that
    run or check the daemon. ``secrets`` False: the commands that send nothing read no
    token, password or key (and need none of their files or variables)."""
    from jobherald import config
    from jobherald.errors import ConfigError

    # 100,000 jobs are millions of objects: the garbage collector does not scan them over
    # and over while they are made, nor again while a command reads on (they live as long
    # as it does). `run` turns the collector off itself, and back on once it polls.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return config.load(
            path or ctx.obj.get("config"),
            check_urls=check_urls,
            check_dirs=check_dirs,
            check_templates=check_templates,
            read_secrets=secrets,
        )
    except ConfigError as exc:
        for line in exc.problems:
            click.echo(line, err=True)
        sys.exit(EXIT_USAGE)
    finally:
        if collecting:
            gc.freeze()
            gc.enable()


def run_async(coro: Coroutine[Any, Any, T], event_loop: str = "asyncio") -> T:
    from jobherald.errors import ListenError, StoreError

    factory = None
    if event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)
    except (StoreError, ListenError) as exc:
        fail(str(exc))
        raise AssertionError from None  # unreachable
    except SQLAlchemyError as exc:  # a damaged database, a lost connection
        from jobherald.store.schema import db_problem

        fail(f"the database failed: {db_problem(exc)}")
        raise AssertionError from None  # unreachable


config_option = click.option(
    "--config",
    "-c",
    "config_path",
    metavar="PATH",
    help="Config file (default: $JOBHERALD_CONFIG, else /etc/jobherald/config.toml).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.version_option(package_name="jobherald")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Watch long-running cloud jobs and tell people when they finish or fail."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config_path


def database_exists(url: str) -> bool:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return True
    return bool(parsed.database) and Path(str(parsed.database)).exists()


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(shown(cell) for cell in row))
    # On a terminal, fit its width; into a pipe or file, one line per row.
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 10_000)
    console.print(table)


# Control characters (C0 but tab and newline, DEL, C1) and bidi overrides and isolates:
# an upstream's text could move the cursor, retitle or clear the operator's terminal, or
# show itself in another order than it is.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """Text from anywhere (an upstream's status or message) as a terminal may show it:
    its control characters and bidi overrides replaced."""
    return _CONTROL.sub("\N{REPLACEMENT CHARACTER}", text)


def shown(text: str) -> str:
    """Text from anywhere as a table shows it: cleaned (see ``clean``), and no rich
    markup taken from it (``[bold]`` stays text)."""
    from rich.markup import escape

    return escape(clean(text))


def ago(value: str | None, now: datetime) -> str:
    if value is None:
        return "-"
    seconds = (now - datetime.fromisoformat(value.replace("Z", "+00:00"))).total_seconds()
    from jobherald.model import format_duration

    return f"{format_duration(max(seconds, 0))} ago"


async def with_store(cfg: Config, work: Callable[[Store], Coroutine[Any, Any, T]]) -> T:
    from jobherald.store import Store as OpenStore

    store = await OpenStore.open(cfg.database_url)
    try:
        return await work(store)
    finally:
        await store.close()


def where(url: str) -> str:
    """A database URL to show: its password hidden."""
    from jobherald.store.schema import shown_url

    return shown_url(url)


def main() -> None:
    cli(prog_name="jobherald")
