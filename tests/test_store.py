from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobherald.errors import StoreError
from jobherald.model import JobView, Outcome, State, Transition
from jobherald.store import (
    Claimer,
    JobFilter,
    JobIdentity,
    NewEvent,
    Store,
    Target,
    head_revision,
)
from jobherald.store.listing import recorded_progress, sort_key
from jobherald.timing import iso

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ME = Claimer("token-of-this-test", "here")


def url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}


async def test_migrations_build_the_schema_on_an_empty_database(tmp_path: Path) -> None:
    db = tmp_path / "jh.db"
    store = await Store.open(url(db))
    await store.close()
    assert tables(db) == {
        "alembic_version",
        "jobs",
        "transitions",
        "events",
        "deliveries",
        "source_health",
        "replicas",
        "archives",
        "lanes",
        "durations",
        "pruned_jobs",
        "silences",
        "report_runs",
    }
    with sqlite3.connect(db) as conn:
        assert conn.execute("select version_num from alembic_version").fetchall() == [
            (head_revision(),)
        ]
        assert conn.execute("pragma journal_mode").fetchone() == ("wal",)
        # A new file gives the pages of pruned history back.
        assert conn.execute("pragma auto_vacuum").fetchone() == (2,)


async def test_opening_a_current_database_again_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "jh.db"
    store = await Store.open(url(db))
    await store.sync_jobs([JobIdentity("a", "A", "roma", "i")], NOW)
    await store.close()
    store = await Store.open(url(db))
    assert [r.id for r in await store.status()] == ["a"]
    await store.close()
    assert sorted(p.name for p in tmp_path.iterdir() if ".before-" in p.name) == []


async def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"database folder .*/nope does not exist"):
        await Store.open(url(tmp_path / "nope" / "jh.db"))


async def test_an_event_and_its_deliveries_are_written_with_the_transition(tmp_path: Path) -> None:
    store = await Store.open(url(tmp_path / "jh.db"))
    await store.sync_jobs([JobIdentity("a", "A", "roma", "i")], NOW)
    view = JobView("a", state=State.SUCCEEDED, raw_status="SUCCEEDED", last_changed_at=NOW)
    outcome = Outcome(view, True, Transition(NOW, None, State.SUCCEEDED, 1.0, "SUCCEEDED"))
    targets = [Target("ops", "k1", "json://ops"), Target("audit", "k2", "json://audit")]
    event = NewEvent("succeeded", {"event": {"at": NOW.isoformat()}, "job": {"id": "a"}}, targets)
    recorded = await store.record("a", outcome, NOW, [event])
    assert recorded.written and recorded.view.version == 1
    (event_id,) = recorded.event_ids
    due = await store.claim_due(NOW, ME)
    assert [(d.event_id, d.notifier, d.kind) for d in due] == [
        (event_id, "ops", "succeeded"),
        (event_id, "audit", "succeeded"),
    ]
    assert await store.claim_due(NOW, Claimer("another", "there")) == []  # both are held
    assert await store.mark_delivered(due[0].id, NOW, ME)
    await store.release_claims(ME.token)
    assert [d.notifier for d in await store.claim_due(NOW, ME)] == ["audit"]
    assert await store.delivery_counts() == {"delivered": 1, "pending": 1}
    (row,) = await store.status()
    assert (row.state, row.last_polled_at, row.last_changed_at) == ("succeeded", NOW, NOW)
    await store.close()


async def test_a_failing_transaction_leaves_no_half_written_state(tmp_path: Path) -> None:
    store = await Store.open(url(tmp_path / "jh.db"))
    await store.sync_jobs([JobIdentity("a", "A", "roma", "i")], NOW)
    view = JobView("a", state=State.FAILED, raw_status="FAILED")
    outcome = Outcome(view, True, Transition(NOW, None, State.FAILED, 1.0, "FAILED"))
    broken = Target("ops", None, "json://ops")  # type: ignore[arg-type]
    event = NewEvent("failed", {"job": {"id": "a"}}, [Target("ops", "k1", "json://ops"), broken])
    with pytest.raises(sa.exc.IntegrityError):
        await store.record("a", outcome, NOW, [event])
    (row,) = await store.status()
    assert row.state == "pending"
    assert await store.history("a") == []
    async with store.engine.connect() as conn:
        assert (await conn.execute(sa.text("select count(*) from deliveries"))).scalar() == 0
    await store.close()


async def test_an_old_database_with_data_is_upgraded_and_copied_aside_first(tmp_path: Path) -> None:
    db = tmp_path / "jh.db"
    old = await Store.open(url(db), migrate=False)
    await old.migrate("0001")
    await old.close()
    with sqlite3.connect(db) as conn:
        conn.execute(
            "insert into jobs (id, name, source, instance_id, configured, state, created_at, last_changed_at)"
            " values ('a', 'A', 'roma', 'i', 1, 'running', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
        )
        conn.execute(
            "insert into events (id, job_id, kind, at, payload) values ('e1', 'a', 'succeeded', '2026-01-01 00:00:00', '{}')"
        )
        conn.execute(
            "insert into deliveries (event_id, notifier, state, attempts, next_attempt_at)"
            " values ('e1', 'ops', 'pending', 0, '2026-01-01 00:00:00')"
        )
    store = await Store.open(url(db))
    (job,) = await store.status()
    assert (job.id, job.state, job.not_found, job.running_since) == (
        "a",
        "running",
        0,
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    (due,) = await store.claim_due(NOW, ME)
    assert (due.event_id, due.notifier, due.target) == ("e1", "ops", "*")
    await store.close()
    backup = tmp_path / "jh.db.before-0001"
    with sqlite3.connect(backup) as conn:
        assert conn.execute("select version_num from alembic_version").fetchall() == [("0001",)]
        assert conn.execute("select id from jobs").fetchall() == [("a",)]


async def test_a_migration_is_all_or_nothing(tmp_path: Path) -> None:
    db = tmp_path / "jh.db"
    store = await Store.open(url(db), migrate=False)
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql("create table source_health (clash integer)")
    with pytest.raises(sa.exc.OperationalError):
        await store.migrate()
    await store.close()
    assert tables(db) == {"source_health"}


async def test_files_made_beside_the_database_keep_its_owner(tmp_path: Path) -> None:
    """`jobherald status` run by root must not leave files the service's user cannot open:
    SQLite, run as root, gives -wal and -shm the database file's owner."""
    import os

    db = tmp_path / "jh.db"
    store = await Store.open(url(db))
    await store.close()
    os.chown(db, 4242, 4242)  # as the service's own user would own it
    for extra in tmp_path.glob("jh.db-*"):
        extra.unlink()
    holder = sqlite3.connect(db)  # another reader keeps the -wal and -shm files in place
    holder.execute("select count(*) from jobs").fetchall()
    try:
        store = await Store.open(url(db))  # run by root: SQLite makes -wal and -shm as root
        await store.status()
        await store.close()
        owners = {p.name: (p.stat().st_uid, p.stat().st_gid) for p in tmp_path.glob("jh.db*")}
    finally:
        holder.close()
    assert {"jh.db-wal", "jh.db-shm"} <= set(owners)
    assert owners["jh.db"] == (4242, 4242)
    assert all(owner == (4242, 4242) for owner in owners.values()), owners


def test_the_schema_head_constant_is_the_newest_migration() -> None:
    from jobherald.store import SCHEMA_HEAD

    assert head_revision() == SCHEMA_HEAD


async def test_ten_thousand_jobs_are_registered_and_loaded_with_few_reads(tmp_path: Path) -> None:
    store = await Store.open(url(tmp_path / "jh.db"))
    statements: list[str] = []
    sa.event.listen(
        store.engine.sync_engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *rest: statements.append(statement.split()[0].upper()),
    )
    watched = [JobIdentity(f"j{i}", f"job {i}", "roma", "i") for i in range(10_000)]
    views = await store.sync_jobs(watched, NOW)
    assert len(views) == 10_000 and views["j7"] == JobView("j7")
    # The watched jobs in one read, then the new keys (a removed job may come back) 5,000
    # at a time; one insert.
    assert statements.count("SELECT") == 3 and statements.count("INSERT") == 1
    statements.clear()
    renamed = [JobIdentity("j0", "renamed", "roma", "i"), *watched[1:-1]]  # j9999 left
    views = await store.sync_jobs(renamed, NOW)
    assert len(views) == 9_999 and "j9999" not in views  # the configured jobs' views
    assert statements == ["BEGIN", "SELECT", "UPDATE"]  # COMMIT is not a cursor statement
    await store.close()
    with sqlite3.connect(tmp_path / "jh.db") as conn:
        assert conn.execute("select name from jobs where id = 'j0'").fetchone() == ("renamed",)
        assert conn.execute("select configured from jobs where id = 'j9999'").fetchone() == (0,)
        assert conn.execute("select count(*) from jobs where configured").fetchone() == (9_999,)


async def test_a_start_first_takes_the_unfinished_jobs_registered_as_configured(
    tmp_path: Path,
) -> None:
    # What a start polls while it registers every job: unfinished, and stored just as
    # the config has them now (a job renamed, moved or re-added waits for sync_jobs).
    store = await Store.open(url(tmp_path / "jh.db"))
    before = [JobIdentity(j, j.upper(), "roma", "i") for j in "abcdeg"]
    await store.sync_jobs(before, NOW)
    done = JobView("b", state=State.SUCCEEDED, raw_status="SUCCEEDED", last_changed_at=NOW)
    await store.record(
        "b", Outcome(done, True, Transition(NOW, None, State.SUCCEEDED, 1.0, None)), NOW
    )
    await store.sync_jobs([j for j in before if j.id != "g"], NOW)  # g left the config
    now = {
        j.id: j
        for j in [
            JobIdentity("a", "A", "roma", "i"),
            JobIdentity("b", "B", "roma", "i"),  # finished
            JobIdentity("c", "renamed", "roma", "i"),
            JobIdentity("d", "D", "roma", "i"),
            JobIdentity("e", "E", "roma", "other instance"),
            JobIdentity("f", "F", "roma", "i"),  # new
            JobIdentity("g", "G", "roma", "i"),  # back in the config
        ]
    }
    statements: list[str] = []
    sa.event.listen(
        store.engine.sync_engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *rest: statements.append(statement.split()[0].upper()),
    )
    first = await store.registered_unfinished(now, 10)
    assert first == {"a": JobView("a"), "d": JobView("d")}
    assert statements == ["BEGIN", "SELECT"]  # nothing written
    assert len(await store.registered_unfinished(now, 1)) == 1
    await store.close()


async def test_first_attempts_are_claimed_before_retries_and_keep_their_backoff(
    tmp_path: Path,
) -> None:
    from datetime import timedelta

    store = await Store.open(url(tmp_path / "jh.db"))
    await store.sync_jobs([JobIdentity(j, j, "roma", "i") for j in "abc"], NOW)
    for job_id in "abc":
        view = JobView(job_id, state=State.SUCCEEDED, raw_status="SUCCEEDED", last_changed_at=NOW)
        outcome = Outcome(view, True, Transition(NOW, None, State.SUCCEEDED, 1.0, "SUCCEEDED"))
        target = Target("dead" if job_id != "c" else "live", "k", "json://x")
        event = NewEvent("succeeded", {"job": {"id": job_id}}, [target])
        await store.record(job_id, outcome, NOW, [event])
    a, b = await store.claim_due(NOW, ME, limit=2)
    soon, later = NOW + timedelta(seconds=30), NOW + timedelta(hours=1)
    assert await store.mark_failed(a.id, "down", soon, ME)
    assert await store.mark_failed(b.id, "down", later, ME)
    await store.close()
    store = await Store.open(url(tmp_path / "jh.db"))  # as after a restart
    assert await store.waiting_retries() == 2
    (fresh,) = await store.claim_due(NOW, ME)  # a and b keep their backoff
    assert fresh.notifier == "live" and fresh.attempts == 0
    await store.release_claims(ME.token)
    # All three due: the first attempt goes first, though its row is the newest.
    assert [d.id for d in await store.claim_due(later, ME, limit=1)] == [fresh.id]
    assert [d.id for d in await store.claim_due(later, ME)] == [a.id, b.id]
    await store.close()


async def test_a_write_waits_for_another_processs_write_rather_than_failing(
    tmp_path: Path,
) -> None:
    """A write that reads first (registering jobs does) waits its turn behind a writer
    in another process, the CLI beside the daemon for one, instead of "database is locked"."""
    import asyncio

    db = tmp_path / "jh.db"
    store = await Store.open(url(db))
    await store.sync_jobs([JobIdentity("a", "A", "roma", "i")], NOW)
    beside = sqlite3.connect(db, isolation_level=None)
    beside.execute("begin immediate")
    beside.execute("update jobs set name = 'held' where id = 'a'")
    syncing = asyncio.create_task(
        store.sync_jobs(
            [JobIdentity("a", "A", "roma", "i"), JobIdentity("b", "B", "roma", "i")], NOW
        )
    )
    await asyncio.sleep(0.3)  # the sync is under way, and waits for the lock
    beside.execute("commit")
    beside.close()
    assert sorted(await syncing) == ["a", "b"]
    await store.close()


async def listed_times_are_written_as_json_shows_them(url: str) -> None:
    """A listing's times come from the database as ISO 8601 text, the same as ``iso``
    writes, whole seconds too; the registered order goes on after such a time."""
    store = await Store.open(url)
    try:
        whole = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
        half = whole + timedelta(seconds=1, microseconds=500000)
        await store.sync_jobs([JobIdentity("a", "A", "roma", "i")], whole)
        await store.sync_jobs(
            [JobIdentity("a", "A", "roma", "i"), JobIdentity("b", "B", "roma", "i")], half
        )
        rows = await store.page(JobFilter(), 10, by_state=False)
        assert [(r.id, r.created_at) for r in rows] == [("a", iso(whole)), ("b", iso(half))]
        assert iso(whole) == "2026-12-04T10:00:00Z" and rows[0].last_polled_at is None
        after = await store.page(JobFilter(), 10, sort_key(rows[0], False), by_state=False)
        assert [r.id for r in after] == ["b"]
        # A running job's row carries its latest progress, what its ETA is drawn from: the
        # last twelve of fifteen, each time and fraction as stored.
        view = JobView("a", state=State.RUNNING, raw_status="RUNNING", begin_time=whole)
        for i in range(15):
            at = half + timedelta(minutes=i, microseconds=i)
            view = replace(view, progress=(i + 1) / 30, progress_changed_at=at)
            transition = Transition(at, State.RUNNING, State.RUNNING, view.progress, "RUNNING")
            view = (await store.record("a", Outcome(view, True, transition), at, [])).view
        (row,) = await store.page(JobFilter(state="running"), 10)
        recorded = sorted(recorded_progress(row.recent))
        assert recorded == [
            (half + timedelta(minutes=i, microseconds=i), (i + 1) / 30) for i in range(3, 15)
        ]
        assert recorded == (await store.running_progress())["a"][-12:]
        assert (await store.page(JobFilter(state="pending"), 10))[0].recent is None
    finally:
        await store.close()


async def test_listed_times_are_written_as_json_shows_them(tmp_path: Path) -> None:
    await listed_times_are_written_as_json_shows_them(url(tmp_path / "jh.db"))
