"""Silences by hand: silence add, silence list, silence expire."""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from jobherald.config import Config
    from jobherald.quiet import Silence


class SilenceError(ValueError):
    """A silence asked for wrongly: what is wrong, and the key it is about (None: the
    silence as a whole)."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key = key

    def said(self, prefix: str) -> str:
        """One line, the key written as the caller's users write it (``--for``, ``for``)."""
        return f"{prefix}{self.key}: {self}" if self.key else str(self)


def silence_span(
    for_: str | None, until: str | None, now: datetime, zone: Any = None
) -> tuple[datetime, datetime]:
    """(start, end) of a silence given ``for`` (a duration) or ``until`` (an ISO 8601 time,
    local unless it says its zone, or HH:MM: the next such time)."""
    from jobherald.fields import parse_duration

    if (for_ is None) == (until is None):
        raise SilenceError(None, "give one of for (a duration, e.g. 2h) and until (a time)")
    if for_ is not None:
        try:
            seconds = parse_duration(for_)
        except ValueError as exc:
            raise SilenceError("for", str(exc)) from None
        if seconds <= 0:
            raise SilenceError("for", f"{for_!r} is not a positive duration")
        return now, now + timedelta(seconds=seconds)
    assert until is not None
    local_zone = zone or datetime.now().astimezone().tzinfo
    text = until.strip()
    try:
        if len(text) <= 5 and ":" in text:
            hours, minutes = (int(p) for p in text.split(":"))
            local_now = now.astimezone(local_zone)
            end = local_now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
            if end <= local_now:
                end += timedelta(days=1)
        else:
            end = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if end.tzinfo is None:
                end = end.replace(tzinfo=local_zone)
    except ValueError:
        raise SilenceError(
            "until", f"{until!r} is not a time (e.g. 18:30 or 2026-12-24T08:00+01:00)"
        ) from None
    end = end.astimezone(UTC)
    if end <= now:
        raise SilenceError("until", f"{until!r} is in the past")
    return now, end


def silence_fields(
    cfg: Config,
    *,
    job: str | None,
    source: str | None,
    notifier: str | None,
    kinds: Sequence[str],
    everything: bool,
    reason: str | None,
) -> dict[str, Any]:
    """The matchers and reason of a new silence, checked against the config."""
    from jobherald.config.sections import EVENTS

    if not (reason or "").strip():
        raise SilenceError("reason", "say why (it is shown with the silence and its summary)")
    if everything and (job or source or notifier or kinds):
        raise SilenceError("all", "a silence of everything takes no other matcher")
    if not everything and not (job or source or notifier or kinds):
        raise SilenceError(
            None,
            "give at least one of job, source, notifier and kind (or all, to silence everything)",
        )
    if source is not None and source not in cfg.sources:
        known = ", ".join(sorted(cfg.sources)) or "none defined"
        raise SilenceError("source", f"unknown source {source!r} (known: {known})")
    if notifier is not None and notifier not in cfg.notifiers:
        known = ", ".join(sorted(cfg.notifiers)) or "none defined"
        raise SilenceError("notifier", f"unknown notifier {notifier!r} (known: {known})")
    for kind in kinds:
        if kind not in EVENTS:
            raise SilenceError("kind", f"unknown kind {kind!r} (known: {', '.join(EVENTS)})")
    assert reason is not None
    return {
        "job": job or None,
        "source": source,
        "notifier": notifier,
        "kinds": list(dict.fromkeys(kinds)) or None,
        "everything": everything,
        "reason": " ".join(reason.split())[:500],
    }


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
            cfg,
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
