"""Keeping history bounded from the command line: prune (with the drop-ins of jobs
forgotten after ``forget_after``) and db compact."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from jobherald.cli.base import (
    EXIT_FAILURE,
    cli,
    config_option,
    database_exists,
    fail,
    load_config,
    run_async,
    where,
)
from jobherald.cli.daemon import db
from jobherald.cli.views import kept_for

if TYPE_CHECKING:
    from jobherald.config import Config, WatchedJob
    from jobherald.store import Pruned, Store


@dataclass(slots=True)
class _Outcome:
    pruned: Pruned | None = None
    daemon_runs: bool = False
    total_bytes: int = 0
    total_rows: int = 0
    dropins: list[Path] = field(default_factory=list)


def _number(n: int) -> str:
    return f"{n:,}"


async def _dropins_done(cfg: Config, store: Store) -> list[Path]:
    """Drop-in files whose every job has a ``forget_after`` and has been finished that
    long (or was pruned already)."""
    from jobherald.model import forgotten
    from jobherald.timing import utcnow

    by_file: dict[str, list[WatchedJob]] = {}
    for job in cfg.jobs:
        by_file.setdefault(job.origin, []).append(job)
    now = utcnow()
    main = cfg.path.resolve()
    done: list[Path] = []
    for origin, jobs in by_file.items():
        path = Path(origin) if Path(origin).is_absolute() else cfg.path.parent / origin
        if path.resolve() == main or any(j.forget_after is None for j in jobs):
            continue
        views = await store.views([j.id for j in jobs])
        finished = True
        for job in jobs:
            view = views.get(job.id)
            if view is None:
                finished = finished and await store.pruned_job(job.id) is not None
            else:
                assert job.forget_after is not None
                finished = finished and forgotten(view, job.forget_after, now)
        if finished:
            done.append(path)
    return done


@cli.command()
@config_option
@click.option("--dry-run", is_flag=True, help="Say what would go; delete nothing.")
@click.pass_context
def prune(ctx: click.Context, config_path: str | None, dry_run: bool) -> None:
    """Delete history older than keep_history, and the drop-in files of jobs finished
    longer than their forget_after (the daemon prunes the database by itself)."""
    from jobherald.errors import StoreError
    from jobherald.schedule.pruner import megabytes
    from jobherald.store import DatabaseLock, Store

    cfg = load_config(ctx, config_path, secrets=False)
    if not database_exists(cfg.database_url):
        click.echo(f"no database yet at {where(cfg.database_url)}: nothing to prune")
        return
    keep = cfg.keep_history

    async def work() -> _Outcome:
        from jobherald.schedule.pruner import Pruner
        from jobherald.timing import utcnow

        out = _Outcome()
        store = await Store.open(cfg.database_url)
        lock = None
        try:
            path = store.database_file()
            if path is not None and not dry_run:
                lock = DatabaseLock(path)
                try:
                    lock.acquire("jobherald prune")
                except StoreError:
                    lock, out.daemon_runs = None, True
            out.dropins = await _dropins_done(cfg, store)
            if keep is None:
                return out
            if dry_run or out.daemon_runs:
                out.pruned = await store.would_prune(utcnow() - timedelta(seconds=keep))
                out.total_bytes = await store.database_bytes()
                out.total_rows = sum((await store.row_counts()).values())
            else:
                out.pruned = await Pruner(store, lambda: keep, utcnow).run_pass()
            return out
        finally:
            if lock is not None:
                lock.release()
            await store.close()

    out = run_async(work())
    if keep is None:
        click.echo('keep_history = "forever": no history is pruned')
    elif out.pruned is not None:
        rows = ", ".join(f"{_number(n)} {table}" for table, n in out.pruned.rows.items())
        if dry_run or out.daemon_runs:
            share = sum(out.pruned.rows.values()) / out.total_rows if out.total_rows else 0.0
            click.echo(
                f"would prune jobs removed more than {kept_for(keep)} ago: {rows} "
                f"(about {megabytes(int(out.total_bytes * share))})"
            )
            if out.daemon_runs and not dry_run:
                click.echo("the daemon runs and prunes the database by itself: left to it")
        else:
            click.echo(
                f"pruned jobs removed more than {kept_for(keep)} ago: {rows} "
                f"({megabytes(out.pruned.freed)} given back)"
            )
    _remove_dropins(out.dropins, dry_run)


def _remove_dropins(paths: list[Path], dry_run: bool) -> None:
    failed = False
    for path in paths:
        if dry_run:
            click.echo(f"would remove {path} (its jobs finished longer than forget_after ago)")
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            click.echo(f"jobherald: cannot remove {path}: {exc.strerror}", err=True)
            failed = True
            continue
        click.echo(f"removed {path} (its jobs finished longer than forget_after ago)")
    if failed:
        sys.exit(EXIT_FAILURE)


@db.command("compact")
@config_option
@click.pass_context
def db_compact(ctx: click.Context, config_path: str | None) -> None:
    """Rewrite a SQLite file once so that it gives the space of pruned history back
    (the daemon must be stopped; a copy of the file's size is needed meanwhile)."""
    from jobherald.errors import StoreError
    from jobherald.service import setup_logging
    from jobherald.store import DatabaseLock, Store

    cfg = load_config(ctx, config_path, secrets=False)
    setup_logging("info")
    if not database_exists(cfg.database_url):
        fail(f"no database at {where(cfg.database_url)}")

    async def work() -> bool:
        store = await Store.open(cfg.database_url, backup=cfg.backup_before_migrate)
        try:
            path = store.database_file()
            if path is None:
                fail("db compact is for SQLite (PostgreSQL's autovacuum gives space back)")
            assert path is not None
            lock = DatabaseLock(path)
            lock.acquire("jobherald db compact")
            try:
                converted = await store.convert_to_incremental()
                await store.reclaim()
                return converted
            finally:
                lock.release()
        except StoreError as exc:
            fail(str(exc))
            raise AssertionError from None  # unreachable
        finally:
            await store.close()

    run_async(work())
    click.echo(f"database compacted: {where(cfg.database_url)}")
