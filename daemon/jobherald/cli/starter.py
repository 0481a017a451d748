"""A first config of one's own: `init` writes a starter config that runs as written against
`simulate` (the demo's simulated ROMA Connect and Huawei Cloud jobs, served until stopped,
with a webhook that prints each message), and says what to change for a real instance."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import click

from jobherald.cli.base import EXIT_USAGE, cli, fail

SIMULATOR = "127.0.0.1:9790"
LISTEN = "127.0.0.1:9781"

STARTER = """\
# jobherald: a starter config. As written it watches the simulated jobs of
# `{command} simulate` (run it first, in another terminal) and sends each message to
# the simulator's webhook, which prints it. Check it with
# `{command} check-config -c {path}`, run it with `{command} run -c {path}`.
# Every key is described in config.example.toml and the README.

[daemon]
# Beside this file; the installed service keeps its database in /var/lib/jobherald.
database = "sqlite:///jobherald.db"
# Quick, for the simulator; 30s or more for real jobs.
poll_interval = "1s"
# `{command} watch` and `roma export` write a file per job here.
include = ["jobs.d/*.toml"]

[sources.roma]
type = "roma-connect"
# For a real ROMA Connect instance: its region's endpoint, e.g.
#   endpoint = "https://roma.cn-north-4.myhuaweicloud.com"
# your project and instance ids, and credentials from a file, never in this one:
#   token_file = "/etc/jobherald/roma-token"
# or AK/SK signing:
#   [sources.roma.auth]
#   method = "aksk"
#   ak = "..."
#   sk_file = "/etc/jobherald/roma-sk"
endpoint = "http://{simulator}"
project_id = "{project_id}"
instance_id = "{instance_id}"
token = "{token}"
# Export archives are downloaded here when an export succeeds.
archive_dir = "{archives}"

[sources.ecs]
# Huawei Cloud's shared job API (ECS, EVS, IMS...): for real, e.g.
#   endpoint = "https://ecs.cn-north-4.myhuaweicloud.com"
type = "huawei-job"
endpoint = "http://{simulator}"
project_id = "{project_id}"
token = "{token}"

[http]
# The status page, /metrics and the JSON API. Off loopback it needs a token_file.
listen = "{listen}"

[notifiers.hook]
# Any apprise URL: slack://..., mailto://..., tgram://..., json://... (one per line).
urls = ["json://{simulator}/hook"]
on = ["succeeded", "failed", "lost", "archived"]

# One table per job to watch (or a file per job in jobs.d/).
{jobs}"""


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


def starter_text(path: Path, simulator: str, listen: str) -> str:
    from jobherald.sources.demo import demo_jobs
    from jobherald.sources.simulator import Simulator

    sim = Simulator()
    jobs = "\n".join(
        f'[[jobs]]\nid = "{job.id}"\nsource = "{"roma" if source == "demo" else source}"\n'
        f'name = "{name}"\n'
        for name, job, source in demo_jobs()
    )
    return STARTER.format(
        command=command_prefix(),
        path=path,
        simulator=simulator,
        listen=listen,
        project_id=sim.project_id,
        instance_id=next(iter(sim.instances)),
        token=sim.token,
        jobs=jobs,
        archives=path.resolve().parent / "archives",
    )


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
    text = starter_text(target, simulator, listen)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(target)
    (target.parent / "jobs.d").mkdir(exist_ok=True)
    command = command_prefix()
    click.echo(f"wrote {target}; next, from here:")
    click.echo(f"  {command} simulate --listen {simulator}    # in another terminal")
    click.echo(f"  {command} run -c {target}")
    click.echo(f"then open http://{listen}/ , or try `{command} status -c {target}`.")


@cli.command()
@click.option(
    "--listen", default=SIMULATOR, show_default=True, help="Where to serve it (host:port)."
)
def simulate(listen: str) -> None:
    """Serve simulated ROMA Connect and Huawei Cloud jobs (those of `init`'s config) and a
    webhook at /hook that prints each message, until stopped (Ctrl-C)."""
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
