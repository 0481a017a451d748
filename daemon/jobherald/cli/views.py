"""Commands that show what is known: status, history, replicas."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING

import click

from jobherald.cli.base import (
    EXIT_USAGE,
    ago,
    clean,
    cli,
    config_option,
    database_exists,
    fail,
    load_config,
    pick_job,
    print_table,
    run_async,
    shown,
    with_store,
)

if TYPE_CHECKING:
    from jobherald.config import Config
    from jobherald.report import HistoryEntry, JobStatus, ReplicaStatus
    from jobherald.store import JobFilter

# The states a job can be in (what `status --state` takes).
STATES = ("pending", "running", "succeeded", "failed", "unknown", "lost")


async def _rows(
    cfg: Config, wanted: JobFilter | None = None, limit: int | None = None
) -> tuple[list[JobStatus], dict[str, int]]:
    """The known jobs as `status --json` shows them (the first ``limit``), and the
    deliveries counted by state."""
    from jobherald.report import iter_rows
    from jobherald.store import Store

    store = await Store.open(cfg.database_url) if database_exists(cfg.database_url) else None
    try:
        rows: list[JobStatus] = []
        async for chunk in iter_rows(cfg, store, wanted, chunk=min(limit or 5000, 5000)):
            rows.extend(chunk)
            if limit is not None and len(rows) >= limit:
                del rows[limit:]
                break
        waiting = ("pending", "abandoned")
        return rows, (await store.delivery_counts(waiting) if store is not None else {})
    finally:
        if store is not None:
            await store.close()


async def _stream_json(cfg: Config, wanted: JobFilter, limit: int | None) -> None:
    """`status --json`: the array written a thousand rows at a time as they are read
    (memory stays flat however many jobs there are), indented as the other --json
    outputs; orjson writes it (json's indenting encoder took seconds for 100,000 jobs)."""
    import orjson

    from jobherald.report import iter_rows
    from jobherald.store import Store

    store = await Store.open(cfg.database_url) if database_exists(cfg.database_url) else None
    out = sys.stdout.buffer
    written = 0
    try:
        async for chunk in iter_rows(cfg, store, wanted, chunk=min(limit or 5000, 5000)):
            if limit is not None:
                del chunk[limit - written :]
            for at in range(0, len(chunk), 1000):
                # "[\n  {...},\n  {...}\n]": the rows without the brackets, already indented.
                out.write(b",\n" if written else b"[\n")
                part = chunk[at : at + 1000]
                out.write(orjson.dumps(part, option=orjson.OPT_INDENT_2)[2:-2])
                written += len(part)
            if limit is not None and written >= limit:
                break
    finally:
        if store is not None:
            await store.close()
    out.write(b"\n]\n" if written else b"[]\n")
    out.flush()


def kept_for(seconds: float | None) -> str:
    from jobherald.model import format_duration

    return "forever" if seconds is None else str(format_duration(seconds))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _bar(row: JobStatus) -> str:
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
    "ETA",
    "CHANGED",
    "POLLED",
    "OWNER",
    "ERROR",
]


def _status_rows(rows: list[JobStatus]) -> list[list[str]]:
    from datetime import UTC

    now = datetime.now(UTC)
    return [
        [
            r["name"],
            r["id"],
            r["source"],
            _state(r),
            _bar(r),
            _eta(r["eta"], now),
            ago(r["last_changed_at"], now),
            ago(r["last_polled_at"], now),
            r["owner"] or "-",
            r["error"] or r["archive_error"] or "",
        ]
        for r in rows
    ]


def _eta(value: str | None, now: datetime) -> str:
    if value is None:
        return "-"
    from jobherald.model import format_duration

    seconds = (datetime.fromisoformat(value.replace("Z", "+00:00")) - now).total_seconds()
    return f"in {format_duration(max(seconds, 0))}"


def _state(row: JobStatus) -> str:
    if row["status"] == "unknown":
        return f"unknown ({row['raw_status']})"
    archive = row["archive_state"]
    state = f"{row['status']}, removed" if row["removed"] else str(row["status"])
    if archive is None:
        return state
    return f"{state}, archive {archive}"


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
@click.option("--state", type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--source", help="Only jobs of this source.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many jobs.")
@click.option("--all", "everything", is_flag=True, help="Removed jobs too (they left the config).")
@click.pass_context
def status(
    ctx: click.Context,
    config_path: str | None,
    as_json: bool,
    live: bool,
    every: float,
    state: str | None,
    source: str | None,
    limit: int | None,
    everything: bool,
) -> None:
    """Every watched job: state, progress, last change, last poll, last error."""
    from jobherald.store import JobFilter

    cfg = load_config(ctx, config_path, secrets=False)
    wanted = JobFilter(state=state, source=source, removed=None if everything else False)
    if live:
        _watch_status(cfg, every)
        return
    if as_json:
        run_async(_stream_json(cfg, wanted, limit))
        return
    rows, counts = run_async(_rows(cfg, wanted, limit))
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

    def render(rows: list[JobStatus]) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold", title="jobherald status")
        for header in STATUS_HEADERS:
            table.add_column(header)
        for row in _status_rows(rows):
            table.add_row(*(shown(cell) for cell in row))
        return table

    async def loop() -> None:
        console = Console(width=None if sys.stdout.isatty() else 10_000)
        seen: list[dict[str, object]] | None = None
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
    """The job's transitions, oldest first (JOB_ID: its id, key, or name where one job
    has it)."""
    cfg = load_config(ctx, config_path, secrets=False)

    configured = [(j.id, j.upstream_id, j.source) for j in cfg.jobs]

    async def fetch() -> list[HistoryEntry] | None:
        from jobherald.report import history_rows
        from jobherald.store import Store

        store = await Store.open(cfg.database_url) if database_exists(cfg.database_url) else None
        try:
            stored = await store.answering_to(job_id) if store is not None else []
            key = pick_job(job_id, [*configured, *stored])
            if key is None:  # a job's name, where one job has it
                named = sorted(j.id for j in cfg.jobs if j.name == job_id)
                if len(named) > 1:
                    fail(
                        f"{job_id!r} is the name of {len(named)} jobs: give one of "
                        + ", ".join(named),
                        EXIT_USAGE,
                    )
                key = named[0] if named else None
            pruned = await store.pruned_job(job_id) if key is None and store else None
            if pruned is not None:
                fail(
                    f"job {job_id} ({pruned.name}): its history was pruned after keep_history "
                    f"({kept_for(cfg.keep_history)}) on {pruned.pruned_at:%Y-%m-%d}"
                )
            if key is None:
                fail(f"no job {job_id!r} in the database or the config")
            assert key is not None
            return await history_rows(store, key) if store is not None else []
        finally:
            if store is not None:
                await store.close()

    items = run_async(fetch())
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
                clean(
                    f"\narchived {i['at']}: {i['archive_path']} "
                    f"({i['archive_size']} bytes, sha256 {i['archive_sha256']})"
                )
            )
        elif "event" in i:
            click.echo(clean(f"\narchive given up {i['at']}: {i['archive_error']}"))


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def replicas(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """The daemons sharing this database: live or not, and how many jobs each polls."""
    cfg = load_config(ctx, config_path, secrets=False)

    async def fetch() -> list[ReplicaStatus]:
        from jobherald.report import replica_rows

        if not database_exists(cfg.database_url):
            return []
        return await with_store(cfg, replica_rows)

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
