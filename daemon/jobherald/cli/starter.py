"""A first config of one's own: `init` writes a starter config that runs as written against
`simulate` (the demo's simulated jobs, served until stopped, with a webhook that prints
each message)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import click

from jobherald.cli.base import EXIT_USAGE, cli, fail
from jobherald.sources.starter import LISTEN, SIMULATOR, starter_text


def command_prefix() -> str:
    """How this process was started, as a person would type it from here: `jobherald`
    when that is what PATH finds, else the path (or `python -m jobherald`)."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "jobherald":
        found = shutil.which("jobherald")
        if found and Path(found).resolve() == Path(argv0).resolve():
            return "jobherald"
        return os.path.relpath(argv0) if not os.path.isabs(argv0) else _near(argv0)
    return f"{_near(sys.executable)} -m jobherald"


def _near(path: str) -> str:
    relative = os.path.relpath(path)
    return relative if not relative.startswith("../..") else path


@cli.command()
@click.argument("path", default="jobherald.toml", type=click.Path(dir_okay=False))
@click.option(
    "--simulator",
    default=SIMULATOR,
    show_default=True,
    help="Where `jobherald simulate` listens (host:port).",
)
@click.option(
    "--listen",
    default=LISTEN,
    show_default=True,
    help="The status page's address in the config (host:port).",
)
def init(path: str, simulator: str, listen: str) -> None:
    """Write a starter config (and its jobs.d/ folder) that runs as written against
    `jobherald simulate`, with comments on what to change for a real instance."""
    target = Path(path)
    if target.exists():
        fail(f"{target}: already exists; give another path (nothing was written)", EXIT_USAGE)
    if not target.parent.is_dir():
        fail(f"{target.parent}: no such folder (nothing was written)", EXIT_USAGE)
    command = command_prefix()
    text = starter_text(target, simulator, listen, command)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(target)
    (target.parent / "jobs.d").mkdir(exist_ok=True)
    click.echo(f"wrote {target}; next, from here:")
    click.echo(f"  {command} simulate --listen {simulator}    # in another terminal")
    click.echo(f"  {command} run -c {target}")
    click.echo(f"then open http://{listen}/ , or try `{command} status -c {target}`.")


@cli.command()
@click.option(
    "--listen", default=SIMULATOR, show_default=True, help="Where to serve it (host:port)."
)
def simulate(listen: str) -> None:
    """Serve the demo's simulated jobs (those of `init`'s config) and a webhook at /hook
    that prints each message, until stopped (Ctrl-C)."""
    from jobherald.sources.demo import serve_simulator

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        fail(f"--listen: {listen!r}: give host:port, e.g. {SIMULATOR}", EXIT_USAGE)
    try:
        asyncio.run(serve_simulator(host, int(port)))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        fail(f"--listen: cannot listen on {listen}: {exc.strerror or exc}", EXIT_USAGE)
