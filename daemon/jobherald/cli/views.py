"""Commands that show what is known: status, history, replicas."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from jobherald.cli.base import (
    ago,
    cli,
    config_option,
    database_exists,
    fail,
    iso,
    load_config,
    print_table,
    run_async,
    with_store,
)

if TYPE_CHECKING:
    from jobherald.config import Config


async def _rows(cfg: Config) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every known job as `status --json` shows it, and the deliveries counted by state."""
    from jobherald.schedule.replicas import owner
    from jobherald.store import Store, reasons_of

    rows: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    live: list[str] = []
    configured = {j.id for j in cfg.jobs}
    if database_exists(cfg.database_url):
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
                    "link": row.link,
                    "reasons": reasons_of(row),
                    "last_polled_at": iso(row.last_polled_at),
                    "last_changed_at": iso(row.last_changed_at),
                    "error": row.error,
                    "owner": None,
                    **_archive_fields(None),
                }
            for job_id, archive in (await store.archive_rows()).items():
                if job_id in rows:
                    rows[job_id].update(_archive_fields(archive))
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
                "link": None,
                "reasons": [],
                "last_polled_at": None,
                "last_changed_at": None,
                "error": None,
                "owner": None,
                **_archive_fields(None),
            },
        )
    for item in rows.values():
        # The replica polling it now: the same rendezvous hash every replica computes.
        if item["id"] in configured and item["status"] not in ("succeeded", "failed", "lost"):
            item["owner"] = owner(item["id"], live)
    return list(rows.values()), counts


def _archive_fields(row: Any) -> dict[str, Any]:
    """An export's archive as `status --json` shows it: where it is kept, or why not."""
    if row is None:
        return dict.fromkeys(
            ("archive_state", "archive_path", "archive_size", "archive_sha256", "archive_error")
        )
    return {
        "archive_state": row.state,
        "archive_path": row.path,
        "archive_size": row.size,
        "archive_sha256": row.sha256,
        "archive_error": row.last_error if row.state != "kept" else None,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


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
            _state(r),
            _bar(r),
            ago(r["last_changed_at"], now),
            ago(r["last_polled_at"], now),
            r["owner"] or "-",
            r["error"] or r["archive_error"] or "",
        ]
        for r in rows
    ]


def _state(row: dict[str, Any]) -> str:
    if row["status"] == "unknown":
        return f"unknown ({row['raw_status']})"
    archive = row["archive_state"]
    if archive is None:
        return str(row["status"])
    return f"{row['status']}, archive {archive}"


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
    cfg = load_config(ctx, config_path)
    if live:
        _watch_status(cfg, every)
        return
    rows, counts = run_async(_rows(cfg))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no jobs")
        return
    print_table(STATUS_HEADERS, _status_rows(rows))
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
        run_async(loop())


@cli.command()
@config_option
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def history(ctx: click.Context, config_path: str | None, job_id: str, as_json: bool) -> None:
    """The job's transitions, oldest first."""
    cfg = load_config(ctx, config_path)

    async def fetch() -> list[dict[str, Any]] | None:
        from jobherald.store import Store

        if not database_exists(cfg.database_url):
            return None
        store = await Store.open(cfg.database_url)
        try:
            if await store.job(job_id) is None:
                return None
            items: list[dict[str, Any]] = [
                {
                    "at": iso(t.at),
                    "from": t.from_state,
                    "to": t.to_state,
                    "progress": t.progress,
                    "raw_status": t.raw_status,
                }
                for t in await store.history(job_id)
            ]
            archive = (await store.archive_rows([job_id])).get(job_id)
            if archive is not None and archive.state in ("kept", "failed"):
                # The archive kept (or given up): an entry of its own, the state unchanged.
                items.append(
                    {
                        "at": iso(archive.done_at),
                        "from": "succeeded",
                        "to": "succeeded",
                        "progress": None,
                        "raw_status": None,
                        "event": "archived" if archive.state == "kept" else "archive failed",
                        "archive_path": archive.path,
                        "archive_size": archive.size,
                        "archive_sha256": archive.sha256,
                        "archive_error": archive.last_error if archive.state != "kept" else None,
                    }
                )
            return items
        finally:
            await store.close()

    items = run_async(fetch())
    if items is None:
        if any(j.id == job_id for j in cfg.jobs):
            items = []
        else:
            fail(f"no job {job_id!r} in the database or the config")
            return
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo(f"no transitions recorded for {job_id} yet")
        return
    print_table(
        ["AT", "FROM", "TO", "PROGRESS", "RAW STATUS"],
        [
            [i["at"] or "", i["from"] or "-", i["to"], _pct(i["progress"]), i["raw_status"] or ""]
            for i in items
            if "event" not in i
        ],
    )
    for i in items:
        if i.get("event") == "archived":
            click.echo(
                f"\narchived {i['at']}: {i['archive_path']} "
                f"({i['archive_size']} bytes, sha256 {i['archive_sha256']})"
            )
        elif "event" in i:
            click.echo(f"\narchive given up {i['at']}: {i['archive_error']}")


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def replicas(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """The daemons sharing this database: live or not, and how many jobs each polls."""
    cfg = load_config(ctx, config_path)

    async def fetch() -> list[dict[str, Any]]:
        if not database_exists(cfg.database_url):
            return []
        members, _ = await with_store(cfg, lambda store: store.members())
        return [
            {
                "name": m.name,
                "host": m.host,
                "pid": m.pid,
                "started_at": iso(m.started_at),
                "heartbeat_at": iso(m.heartbeat_at),
                "jobs": m.jobs if m.live else 0,
                "live": m.live,
            }
            for m in members
        ]

    items = run_async(fetch())
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no replicas: no daemon is running on this database")
        return
    from datetime import UTC

    now = datetime.now(UTC)
    print_table(
        ["NAME", "HOST", "PID", "STARTED", "HEARTBEAT", "JOBS", "LIVE"],
        [
            [
                i["name"],
                i["host"],
                str(i["pid"]),
                ago(i["started_at"], now),
                ago(i["heartbeat_at"], now),
                f"{i['jobs']:,}",
                "yes" if i["live"] else "no",
            ]
            for i in items
        ],
    )
