"""The outbox by hand: deliveries, deliveries retry, deliveries drop."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING

import click

from jobherald.cli.base import (
    EXIT_USAGE,
    cli,
    config_option,
    fail,
    load_config,
    print_table,
    run_async,
    with_store,
)

if TYPE_CHECKING:
    pass


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
    cfg = load_config(ctx, None, secrets=False)
    states = ["pending", "silenced", "abandoned"]
    if show_all:
        states += ["delivered", "summarized", "dropped"]
    rows = run_async(with_store(cfg, lambda store: store.deliveries(states)))
    items = [r.as_json() for r in rows]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no deliveries pending, silenced or abandoned")
        return
    print_table(
        ["ID", "STATE", "EVENT", "ABOUT", "NOTIFIER", "URL", "TRIES", "NEXT", "LAST ERROR"],
        [
            [
                str(i["id"]),
                i["state"],
                i["kind"],
                i["job_id"] or (f"source {i['source']}" if i["source"] else "(summary)"),
                i["notifier"],
                i["url"] or "(all)",
                str(i["attempts"]),
                i["next_attempt_at"] or "-",
                i["last_error"] or _held(i["held_by"]),
            ]
            for i in items
        ],
    )


def _held(held_by: str | None) -> str:
    if held_by is None:
        return ""
    return "held by quiet hours" if held_by == "quiet" else f"held by {held_by.replace(':', ' ')}"


def _ids(ids: tuple[int, ...], every: bool) -> list[int] | None:
    if every == bool(ids):
        fail("give delivery ids, or --all", EXIT_USAGE)
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
    cfg = load_config(ctx, config_path, secrets=False)
    count = run_async(with_store(cfg, lambda s: s.retry_deliveries(chosen, datetime.now(UTC))))
    click.echo(f"{count} deliveries will be tried again")


@deliveries.command("drop")
@config_option
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "every", is_flag=True, help="Every pending, held and abandoned delivery.")
@click.pass_context
def deliveries_drop(
    ctx: click.Context, config_path: str | None, ids: tuple[int, ...], every: bool
) -> None:
    """Give up on these deliveries for good."""
    chosen = _ids(ids, every)
    cfg = load_config(ctx, config_path, secrets=False)
    count = run_async(with_store(cfg, lambda s: s.drop_deliveries(chosen)))
    click.echo(f"{count} deliveries dropped")
