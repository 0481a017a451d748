"""Commands that run or check the daemon: run, check-config, notify-test, db, demo."""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import TYPE_CHECKING

import click

from jobherald.cli.base import (
    EXIT_FAILURE,
    EXIT_USAGE,
    cli,
    config_option,
    database_exists,
    fail,
    load_config,
    run_async,
    where,
    with_store,
)

if TYPE_CHECKING:
    from jobherald.config import Config, Notifier
    from jobherald.notify.messages import Message
    from jobherald.store import Store


@cli.command()
@config_option
@click.option("--once", is_flag=True, help="Poll every unfinished job once, notify, and exit.")
@click.pass_context
def run(ctx: click.Context, config_path: str | None, once: bool) -> None:
    """Run the daemon in the foreground (logs go to stderr)."""
    # The daemon refuses a URL apprise cannot use before it starts; one pass loads
    # apprise only if it has something to send.
    # Start-up builds much that lives as long as the daemon (100,000 jobs: millions of
    # objects): the garbage collector does not scan it over and over meanwhile. The daemon
    # freezes what start-up built and turns the collector back on once it polls.
    gc.disable()
    cfg = load_config(ctx, config_path, check_urls=not once, check_dirs=True, check_templates=True)
    gc.freeze()  # the config: the collection that ends start-up need not scan it again
    from jobherald.service import Daemon, setup_logging

    setup_logging(cfg.log_level)
    daemon = Daemon(cfg)
    if once:
        gc.enable()
        run_async(daemon.run_once(), cfg.event_loop)
    else:
        run_async(daemon.run(), cfg.event_loop)


@cli.command("check-config")
@config_option
@click.option(
    "--render",
    "render",
    metavar="NOTIFIER",
    help="Also print what NOTIFIER sends for each built-in sample event and digest.",
)
@click.pass_context
def check_config(ctx: click.Context, config_path: str | None, render: str | None) -> None:
    """Validate the config: exit 0, or 2 with one line per problem."""
    from jobherald.model import counted

    cfg = load_config(ctx, config_path, check_urls=True, check_dirs=True)
    click.echo(
        f"{cfg.path}: ok ({counted(len(cfg.jobs), 'job')}, {counted(len(cfg.sources), 'source')}, "
        f"{counted(len(cfg.notifiers), 'notifier')})"
    )
    for line in _quiet_lines(cfg):
        click.echo(line)
    if render is not None:
        notifier = cfg.notifiers.get(render)
        if notifier is None:
            known = ", ".join(cfg.notifiers) or "none"
            fail(f"unknown notifier {render!r} (known: {known})", EXIT_USAGE)
            return
        for heading, message in run_async(_rendered(notifier, cfg.public_url)):
            click.echo(f"\n--- {heading} ---\ntitle: {message.title}\n{message.body}")


def _quiet_lines(cfg: Config) -> list[str]:
    """Each notifier's next quiet period as its quiet_hours were read (so a person sees
    the hours meant), and the kinds that go out all the same."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    lines = []
    for name, notifier in cfg.notifiers.items():
        quiet = notifier.quiet
        if quiet is None:
            continue
        period = quiet.next_period(now)
        urgent = f"; urgent: {', '.join(sorted(quiet.urgent))}" if quiet.urgent else ""
        if period is None:
            lines.append(f"notifiers.{name}: quiet hours never come in the next 8 days{urgent}")
            continue
        start, end = period
        when = "now, until" if start <= now else f"next {start:%a %Y-%m-%d %H:%M} to"
        lines.append(
            f"notifiers.{name}: quiet {when} {end:%a %Y-%m-%d %H:%M} ({quiet.zone}){urgent}"
        )
    return lines


async def _rendered(notifier: Notifier, public_url: str | None) -> list[tuple[str, Message]]:
    """What ``notifier`` sends for each sample event, then for each sample digest: its
    templates (or the default messages) filled exactly as a delivery would fill them."""
    from jobherald.notify.compose import Composer
    from jobherald.notify.messages import Item
    from jobherald.templates import SAMPLE_EVENT_ID, digest_samples, samples

    composer = Composer()
    out = []
    for kind, payload in samples():
        item = Item(kind, SAMPLE_EVENT_ID, payload)  # type: ignore[arg-type]
        out.append((f"{kind} ({notifier.format})", await composer.message(notifier, item)))
    for digest in digest_samples():
        items = [Item(k, i, p) for k, i, p in digest["events"]]
        heading = f"digest of {len(items)} ({notifier.format})"
        out.append((heading, await composer.digest(notifier, items, public_url)))
    return out


@cli.command("notify-test")
@config_option
@click.argument("notifier", required=False)
@click.pass_context
def notify_test(ctx: click.Context, config_path: str | None, notifier: str | None) -> None:
    """Send a test message through one notifier, or all; exit 1 if any fails."""
    cfg = load_config(ctx, config_path, check_urls=True)
    names = list(cfg.notifiers)
    if notifier is not None:
        if notifier not in cfg.notifiers:
            known = ", ".join(names) or "none defined"
            fail(f"unknown notifier {notifier!r} (known: {known})", EXIT_USAGE)
        names = [notifier]
    if not names:
        fail("no notifiers in the config", EXIT_USAGE)
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
        results = run_async(send_all())
    finally:
        sender.close()
    for (name, target), (ok, why) in zip(pairs, results, strict=True):
        click.echo(f"{name} {target.url}: {'sent' if ok else 'FAILED: ' + why}")
    if not all(ok for ok, _ in results):
        sys.exit(EXIT_FAILURE)


@cli.group()
def db() -> None:
    """The database schema: which revision it is at, and bringing it up to date."""


@db.command("current")
@config_option
@click.pass_context
def db_current(ctx: click.Context, config_path: str | None) -> None:
    """Print the database's schema revision and whether it is the newest."""
    from jobherald.store import Store, head_revision

    cfg = load_config(ctx, config_path, secrets=False)
    if not database_exists(cfg.database_url):
        click.echo(f"no database yet at {where(cfg.database_url)}")
        return

    async def current() -> str | None:
        store = await Store.open(cfg.database_url, migrate=False)
        try:
            return await store.current_revision()
        finally:
            await store.close()

    from jobherald.store.schema import known_revisions

    revision, head = run_async(current()), head_revision()
    if revision == head:
        click.echo(f"{revision} (newest)")
    elif revision is not None and revision not in known_revisions():
        click.echo(
            f"{revision} (newer than this jobherald knows, whose newest is {head}: "
            "install the jobherald that wrote it)"
        )
    else:
        click.echo(f"{revision or 'empty'} (newest is {head}: run `jobherald db upgrade`)")


@db.command("upgrade")
@config_option
@click.pass_context
def db_upgrade(ctx: click.Context, config_path: str | None) -> None:
    """Bring the database to the newest schema (an SQLite file is copied aside first)."""
    from jobherald.service import setup_logging
    from jobherald.store import head_revision

    cfg = load_config(ctx, config_path, secrets=False)
    setup_logging("info")

    async def nothing(_store: Store) -> None:
        return None

    run_async(with_store(cfg, nothing))
    click.echo(f"database at {head_revision()} (newest): {where(cfg.database_url)}")


@cli.command()
@click.option("--speed", type=float, default=1.0, help="Faster (2) or slower (0.5) jobs.")
def demo(speed: float) -> None:
    """A self-contained show: simulated cloud jobs, notifications in the terminal."""
    from jobherald.cli.starter import command_prefix
    from jobherald.sources.demo import run_demo

    code = asyncio.run(run_demo(speed))
    if code == 0:
        command = command_prefix()
        click.echo("Next, a config of your own, as written against the same simulated jobs:")
        click.echo(f"  {command} init jobherald.toml")
        click.echo(f"  {command} simulate    # in another terminal")
        click.echo(f"  {command} run -c jobherald.toml")
    sys.exit(code)
