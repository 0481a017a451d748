"""Reports by hand: `report NAME` prints one now (or sends it), `reports` lists them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from jobherald.cli.base import (
    EXIT_USAGE,
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
    from jobherald.config import Config, Report
    from jobherald.store import Store


def _report(cfg: Config, name: str) -> Report:
    report = cfg.reports.get(name)
    if report is None:
        known = ", ".join(sorted(cfg.reports)) or "none defined"
        fail(f"unknown report {name!r} (known: {known})", EXIT_USAGE)
        raise AssertionError("unreachable")
    return report


@cli.command()
@config_option
@click.argument("name")
@click.option("--window", metavar="DURATION", help="This far back (default: the report's window).")
@click.option(
    "--format",
    "body_format",
    type=click.Choice(["text", "markdown", "html"]),
    default="text",
    show_default=True,
    help="How to print it.",
)
@click.option("--send", is_flag=True, help="Send it to its notifiers now (and print it).")
@click.pass_context
def report(
    ctx: click.Context,
    config_path: str | None,
    name: str,
    window: str | None,
    body_format: str,
    send: bool,
) -> None:
    """Print report NAME as it would be sent now; --send sends it."""
    from jobherald.fields import parse_duration

    cfg = load_config(ctx, config_path, secrets=send, check_urls=send)
    chosen = _report(cfg, name)
    seconds = None
    if window is not None:
        try:
            seconds = parse_duration(window)
        except ValueError as exc:
            fail(f"report: --window: {exc}", EXIT_USAGE)
    now = datetime.now(UTC).replace(microsecond=0)

    async def work(store: Store) -> tuple[dict[str, dict[str, str]], bool]:
        from jobherald.schedule.reporter import build

        _, data, messages = await build(store, chosen, now, now, cfg.public_url, seconds)
        if not send:
            return messages, True
        return messages, await _send(cfg, store, chosen, now, data, messages)

    messages, sent = run_async(with_store(cfg, work))
    chosen_message = messages[body_format]
    click.echo(f"{chosen_message['title']}\n\n{chosen_message['body']}")
    if send and not sent:
        fail(f"report {name}: not every notifier took it (see `jobherald deliveries`)")


async def _send(
    cfg: Config,
    store: Store,
    chosen: Report,
    now: datetime,
    data: dict[str, Any],
    messages: dict[str, dict[str, str]],
) -> bool:
    """Queue the report as a run of its own (this instant) and deliver what is due."""
    from jobherald.notify import Dispatcher
    from jobherald.notify.reports import report_payload
    from jobherald.store import NewEvent, Run

    dispatcher = Dispatcher(store, cfg.notifiers, public_url=cfg.public_url)
    try:
        targets = [t for n in chosen.notifiers for t in dispatcher.sender.targets(n)]
        payload = report_payload(data, messages)
        start = datetime.fromisoformat(data["start"].replace("Z", "+00:00"))
        run = Run(chosen.name, now, start, now, None, "jobherald report --send")
        if not await store.claim_report(run, NewEvent("report", payload, targets), now):
            return False
        await dispatcher.deliver_due()
        pending = await store.pending_by_notifier()
        return not any(pending.get(n) for n in chosen.notifiers)
    finally:
        dispatcher.close()


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def reports(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """Each report: its cron, next run and last run."""
    cfg = load_config(ctx, config_path, secrets=False)
    now = datetime.now(UTC)
    last = run_async(with_store(cfg, lambda store: store.last_runs())) if cfg.reports else {}
    rows: list[dict[str, Any]] = []
    for name, item in sorted(cfg.reports.items()):
        upcoming = item.trigger().get_next_fire_time(None, now)
        ran = last.get(name)
        rows.append(
            {
                "name": name,
                "cron": item.cron,
                "timezone": str(item.zone),
                "notifiers": list(item.notifiers),
                "next_run": upcoming.astimezone(UTC).isoformat().replace("+00:00", "Z")
                if upcoming
                else None,
                "last_run": ran.scheduled_at.isoformat().replace("+00:00", "Z") if ran else None,
                "last_sent": bool(ran and ran.event_id),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no reports configured ([reports.NAME] in the config)")
        return
    print_table(
        ["REPORT", "CRON", "TIMEZONE", "NEXT", "LAST", "NOTIFIERS"],
        [
            [
                r["name"],
                clean(r["cron"]),
                r["timezone"],
                r["next_run"] or "-",
                (r["last_run"] or "never")
                + ("" if r["last_sent"] or not r["last_run"] else " (empty)"),
                ", ".join(r["notifiers"]),
            ]
            for r in rows
        ],
    )
