"""Silences by hand: silence add, silence list, silence expire."""

from __future__ import annotations

import getpass
import json
import os
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

from jobherald.cli.base import (
    EXIT_FAILURE,
    EXIT_USAGE,
    ago,
    clean,
    cli,
    config_option,
    fail,
    load_config,
    print_table,
    run_async,
    with_store,
)
from jobherald.quiet import SilenceError, silence_fields, silence_span

if TYPE_CHECKING:
    from jobherald.quiet import Silence


def who() -> str:
    """Who adds a silence by hand: the person behind sudo, else the user."""
    for name in (os.environ.get("SUDO_USER"), os.environ.get("USER")):
        if name:
            return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.geteuid())


@cli.group()
def silence() -> None:
    """Hold messages back for a while (they are told in one summary when it ends)."""


@silence.command("add")
@config_option
@click.option("--job", metavar="GLOB", help="Jobs by name or id (shell glob: nightly-*).")
@click.option("--source", metavar="NAME", help="A source's jobs and its own events.")
@click.option("--notifier", metavar="NAME", help="Only what this notifier would send.")
@click.option("--kind", "kinds", metavar="KIND", multiple=True, help="Only these kinds.")
@click.option("--all", "everything", is_flag=True, help="Everything, for every notifier.")
@click.option("--for", "for_", metavar="DURATION", help="For this long (e.g. 2h, 30m).")
@click.option("--until", metavar="TIME", help="Until then (18:30, 2026-12-24T08:00+01:00).")
@click.option("--reason", help="Why (shown with it and in its summary).")
@click.option("--by", "author", metavar="NAME", help="Who asks (default: the user).")
@click.pass_context
def silence_add(
    ctx: click.Context,
    config_path: str | None,
    job: str | None,
    source: str | None,
    notifier: str | None,
    kinds: tuple[str, ...],
    everything: bool,
    for_: str | None,
    until: str | None,
    reason: str | None,
    author: str | None,
) -> None:
    """Add a silence; print its id."""
    cfg = load_config(ctx, config_path, secrets=False)
    now = datetime.now(UTC)
    try:
        fields = silence_fields(
            cfg.sources,
            cfg.notifiers,
            job=job,
            source=source,
            notifier=notifier,
            kinds=kinds,
            everything=everything,
            reason=reason,
        )
        starts, ends = silence_span(for_, until, now)
    except SilenceError as exc:
        fail(f"silence add: {exc.said('--')}", EXIT_USAGE)
        return
    added = run_async(
        with_store(
            cfg,
            lambda store: store.add_silence(
                **fields, starts_at=starts, ends_at=ends, created_by=author or who(), now=now
            ),
        )
    )
    click.echo(str(added.id))


@silence.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def silence_list(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """Silences in force or to come, and the last ones that ended."""
    cfg = load_config(ctx, config_path, secrets=False)
    now = datetime.now(UTC)
    shown = run_async(with_store(cfg, lambda store: store.silences_shown()))
    if as_json:
        click.echo(json.dumps([s.as_json(now) for s in shown], indent=2))
        return
    if not shown:
        click.echo("no silences")
        return
    print_table(
        ["ID", "STATE", "MATCHES", "UNTIL", "BY", "REASON"],
        [
            [
                str(s.id),
                _state(s, now),
                clean(s.matchers()),
                _until(s, now),
                clean(s.created_by),
                clean(s.reason),
            ]
            for s in shown
        ],
    )


def _state(s: Silence, now: datetime) -> str:
    if s.active(now):
        return "active"
    if s.expired_at is not None:
        return "expired"
    return "to come" if s.starts_at > now else "ended"


def _until(s: Silence, now: datetime) -> str:
    end = s.expired_at or s.ends_at
    text = end.strftime("%Y-%m-%d %H:%M UTC")
    if end > now:
        return f"{text} (in {_left(end - now)})"
    return f"{text} ({ago(end.isoformat(), now)})"


def _left(span: timedelta) -> str:
    from jobherald.model import format_duration

    return format_duration(max(60.0, span.total_seconds())) or "a minute"


@silence.command("expire")
@config_option
@click.argument("silence_id", metavar="ID", type=int)
@click.pass_context
def silence_expire(ctx: click.Context, config_path: str | None, silence_id: int) -> None:
    """End a silence now: what it held goes out as one summary."""
    cfg = load_config(ctx, config_path, secrets=False)
    now = datetime.now(UTC)
    found = run_async(with_store(cfg, lambda store: store.expire_silence(silence_id, now)))
    if found is None:
        fail(f"silence expire: no silence {silence_id}", EXIT_FAILURE)
        return
    if found.ended_at is not None or (found.expired_at is None and found.ends_at <= now):
        click.echo(f"silence {silence_id} had ended already")
        return
    click.echo(f"silence {silence_id} expired: what it held goes out as one summary within seconds")
