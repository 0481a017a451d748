"""History that ends: pruning past keep_history, removed jobs apart from watched ones,
typical durations that outlive the jobs, drop-ins that end, files that shrink."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobherald.model import JobView, Outcome, State, Transition
from jobherald.schedule.pruner import Pruner, prune_every
from jobherald.service import Daemon
from jobherald.sources.simulator import SimJob, Simulator, succeeded
from jobherald.store import Claimer, JobFilter, JobIdentity, NewEvent, Store, Target
from tests.conftest import ConfigWriter, Receiver, jobherald

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
ME = Claimer("token-of-this-test", "here")


def url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


async def finish(
    store: Store, job_id: str, at: datetime, targets: list[Target], took: float = 600.0
) -> str:
    """The job ran ``took`` seconds and succeeded at ``at``: its transitions, one event
    with a delivery per target; returns the event's id."""
    begin = at - timedelta(seconds=took)
    view = JobView(job_id, state=State.RUNNING, raw_status="RUNNING", begin_time=begin)
    view = replace_view(view, progress=0.5, last_changed_at=begin)
    running = Transition(begin, State.PENDING, State.RUNNING, 0.5, "RUNNING")
    view = (await store.record(job_id, Outcome(view, True, running), begin)).view
    done = replace_view(
        view, state=State.SUCCEEDED, raw_status="SUCCEEDED", end_time=at, last_changed_at=at
    )
    event = NewEvent("succeeded", {"job": {"id": job_id}}, targets)
    transition = Transition(at, State.RUNNING, State.SUCCEEDED, 1.0, "SUCCEEDED")
    recorded = await store.record(job_id, Outcome(done, True, transition), at, [event])
    (event_id,) = recorded.event_ids
    return event_id


def replace_view(view: JobView, **changes: object) -> JobView:
    from dataclasses import replace

    return replace(view, **changes)  # type: ignore[arg-type]


async def count(store: Store, table: str, where: str = "1 = 1") -> int:
    async with store.engine.connect() as conn:
        return int(
            (await conn.execute(sa.text(f"select count(*) from {table} where {where}"))).scalar()  # noqa: S608
            or 0
        )


async def pruning_keeps_what_is_watched_or_waiting(database: str) -> None:
    """Jobs removed longer ago than keep_history go with every row they own; a removed
    job with a delivery still to send stays, and so does a watched job however old."""
    store = await Store.open(database)
    try:
        old = NOW - 100 * DAY
        ident = {j: JobIdentity(j, f"nightly {j}", "roma", "i") for j in ("gone", "waits", "kept")}
        await store.sync_jobs(list(ident.values()), old)
        target = [Target("ops", "k1", "json://ops")]
        events = {j: await finish(store, j, old + timedelta(hours=1), target) for j in ident}
        # Delivered for "gone" and "kept"; still pending (a dead URL) for "waits".
        for delivery in await store.claim_due(NOW, ME):
            if delivery.event_id != events["waits"]:
                assert await store.mark_delivered(delivery.id, NOW, ME)
        await store.release_claims(ME.token)
        # "gone" and "waits" left the config 91 days ago; "kept" is still watched.
        await store.sync_jobs([ident["kept"]], NOW - 91 * DAY)
        assert await store.removed_count() == 2

        would = await store.would_prune(NOW - 90 * DAY)
        assert would.rows == {
            "jobs": 1,
            "transitions": 2,
            "events": 1,
            "deliveries": 1,
            "archives": 0,
        }
        pruner = Pruner(store, lambda: 90 * 86400.0, lambda: NOW)
        done = await pruner.run_pass()
        assert done.rows == would.rows
        assert await store.job("gone") is None
        assert await count(store, "transitions", "job_id = 'gone'") == 0
        assert await count(store, "events", "job_id = 'gone'") == 0
        assert (await store.pruned_job("gone")).name == "nightly gone"  # type: ignore[union-attr]
        # Kept: the removed job whose message waits, and the watched one.
        assert await store.job("waits") is not None
        assert await count(store, "deliveries", "state = 'pending'") == 1
        assert (await store.job("kept")) is not None
        assert len(await store.history("kept")) == 2
        # Its typical duration outlives the job: ten minutes, from the durations kept.
        runs = await store.durations_of([("nightly gone", "roma")])
        assert runs == {("nightly gone", "roma"): [("gone", 600.0)]}
        # A second pass finds nothing more.
        assert not any((await pruner.run_pass()).rows.values())
    finally:
        await store.close()


async def test_pruning_keeps_what_is_watched_or_waiting_on_sqlite(tmp_path: Path) -> None:
    await pruning_keeps_what_is_watched_or_waiting(url(tmp_path / "jh.db"))


@pytest.mark.postgres
async def test_pruning_keeps_what_is_watched_or_waiting_on_postgresql(postgres: str) -> None:
    await pruning_keeps_what_is_watched_or_waiting(
        postgres.replace("postgresql://", "postgresql+asyncpg://")
    )


def test_passes_run_hourly_and_ten_times_per_keep_history() -> None:
    assert prune_every(None) == 3600.0
    assert prune_every(90 * 86400.0) == 3600.0
    assert prune_every(60.0) == 6.0  # keep_history = "1m": every 6 s


async def test_the_file_shrinks_after_a_prune(tmp_path: Path) -> None:
    db = tmp_path / "jh.db"
    store = await Store.open(url(db))
    try:
        jobs = [JobIdentity(f"j{i}", f"export {i}", "roma", "i") for i in range(300)]
        await store.sync_jobs(jobs, NOW - 10 * DAY)
        payload = "x" * 2000  # what a real event carries, and more
        for job in jobs:
            event = NewEvent("succeeded", {"job": {"id": job.id}, "detail": payload}, [])  # type: ignore[typeddict-unknown-key]
            await store.record_events([event], NOW - 9 * DAY, job_id=job.id)
        await store.sync_jobs([], NOW - 5 * DAY)  # all of them left the config
        await store.reclaim()  # the WAL folded in: the size before, as a file holds it
        before = db.stat().st_size
        done = await Pruner(store, lambda: 86400.0, lambda: NOW).run_pass()
        assert done.rows["jobs"] == 300 and done.rows["events"] == 300
        after = db.stat().st_size
        assert after < before / 2, (before, after)
        assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
        assert done.freed > 0
    finally:
        await store.close()


async def test_an_old_file_is_converted_to_give_space_back(tmp_path: Path) -> None:
    """A file made before auto_vacuum was set (every file of earlier versions) is
    converted once when it migrates."""
    db = tmp_path / "jh.db"
    with sqlite3.connect(db) as conn:
        conn.execute("pragma auto_vacuum = none")
        conn.execute("create table filler (x text)")
    store = await Store.open(url(db), migrate=False)
    await store.migrate("0011")
    await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma auto_vacuum").fetchone() == (0,)
    store = await Store.open(url(db))
    await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma auto_vacuum").fetchone() == (2,)
    # One copy before the migration, beside the file.
    assert [p.name for p in tmp_path.glob("jh.db.before-*")] == ["jh.db.before-0011"]


async def test_removed_jobs_are_history_apart_from_watched_ones(tmp_path: Path) -> None:
    store = await Store.open(url(tmp_path / "jh.db"))
    try:
        a, b = JobIdentity("a", "A", "roma", "i"), JobIdentity("b", "B", "roma", "i")
        await store.sync_jobs([a, b], NOW)
        await store.sync_jobs([a], NOW)  # b left the config
        assert await store.state_counts() == {"pending": 1}
        assert await store.removed_count() == 1
        watched = await store.page(JobFilter(), 10)
        assert [r.id for r in watched] == ["a"]
        removed = await store.page(JobFilter(removed=True), 10)
        assert [r.id for r in removed] == ["b"]
        both = await store.page(JobFilter(removed=None), 10)
        assert sorted(r.id for r in both) == ["a", "b"]
        await store.sync_jobs([a, b], NOW)  # back in the config: watched again
        assert await store.removed_count() == 0
        assert await store.state_counts() == {"pending": 2}
    finally:
        await store.close()


async def test_status_history_and_counts_of_a_removed_and_a_pruned_job(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    now = datetime.now(UTC)
    sim.add(SimJob("old", [succeeded()], begin_time=now - timedelta(hours=1)))
    sim.add(SimJob("new", [succeeded()], begin_time=now - timedelta(minutes=5)))
    path = configs.write(["old", "new"], daemon={"keep_history": "1m"})
    cfg = configs.load(["old", "new"], daemon={"keep_history": "1m"})
    await Daemon(cfg).run_once()  # both succeed
    configs.write(["new"], daemon={"keep_history": "1m"})  # "old" leaves the config
    await Daemon(configs.load(["new"], daemon={"keep_history": "1m"})).run_once()

    code, out, err = await jobherald("status", "--json", "-c", str(path))
    assert code == 0, err
    assert [(r["id"], r["removed"]) for r in json.loads(out)] == [("new", False)]
    code, out, err = await jobherald("status", "--json", "--all", "-c", str(path))
    assert sorted((r["id"], r["removed"]) for r in json.loads(out)) == [
        ("new", False),
        ("old", True),
    ]
    code, out, _ = await jobherald("status", "--all", "-c", str(path))
    assert "succeeded, removed" in out

    # `prune` with the daemon stopped, once "old" was removed more than a minute ago.
    store = await Store.open(cfg.database_url)
    try:
        async with store.engine.begin() as conn:  # removed two minutes ago
            await conn.execute(
                sa.text("update jobs set removed_at = :at where id = 'old'"),
                {"at": (now - timedelta(minutes=2)).replace(tzinfo=None)},
            )
        typical_before = await store.durations_of([("old", "roma"), ("new", "roma")])
    finally:
        await store.close()
    code, out, err = await jobherald("prune", "--dry-run", "-c", str(path))
    assert "would prune jobs removed more than 1m ago: 1 jobs" in out, out
    code, out, err = await jobherald("prune", "-c", str(path))
    assert code == 0, err
    assert out.startswith("pruned jobs removed more than 1m ago: 1 jobs"), out
    code, out, err = await jobherald("history", "old", "-c", str(path))
    assert code == 1
    assert "its history was pruned after keep_history (1m)" in err, err
    code, out, err = await jobherald("status", "--json", "--all", "-c", str(path))
    assert [r["id"] for r in json.loads(out)] == ["new"]
    store = await Store.open(cfg.database_url)
    try:
        assert await store.durations_of([("old", "roma"), ("new", "roma")]) == typical_before
    finally:
        await store.close()


async def test_forget_purge_deletes_a_jobs_history_at_once(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    sim.add(SimJob("done", [succeeded()], begin_time=datetime.now(UTC) - timedelta(minutes=5)))
    path = configs.write([], daemon={"include": ["jobs.d/*.toml"]})
    code, _, err = await jobherald("watch", "done", "-s", "roma", "-c", str(path))
    assert code == 0, err
    cfg = configs.load([], daemon={"include": ["jobs.d/*.toml"]})
    await Daemon(cfg).run_once()
    code, out, err = await jobherald("forget", "done", "--purge", "-c", str(path))
    assert code == 0, err
    assert "deleted its history (1 transition, 1 event, 1 delivery)" in out, out
    assert not (path.parent / "jobs.d" / "done.toml").exists()
    code, out, err = await jobherald("history", "done", "-c", str(path))
    assert code == 1 and "no job 'done'" in err


async def test_a_drop_in_with_forget_after_ends(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    """A job watched with --forget-after is no longer watched once it has been finished
    that long; `prune` then removes its drop-in."""
    sim.add(SimJob("exp", [succeeded()], begin_time=datetime.now(UTC) - timedelta(minutes=5)))
    path = configs.write([], daemon={"include": ["jobs.d/*.toml"]})
    code, out, err = await jobherald(
        "watch", "exp", "-s", "roma", "--forget-after", "1m", "-c", str(path)
    )
    assert code == 0, err
    dropin = path.parent / "jobs.d" / "exp.toml"
    assert 'forget_after = "1m"' in dropin.read_text()
    code, _, err = await jobherald(
        "watch", "x", "-s", "roma", "--forget-after", "soon", "-c", str(path)
    )
    assert code == 2 and "--forget-after: bad duration 'soon'" in err
    cfg = configs.load([], daemon={"include": ["jobs.d/*.toml"]})
    await Daemon(cfg).run_once()  # it succeeds
    code, out, _ = await jobherald("status", "--json", "-c", str(path))
    assert [(r["id"], r["status"]) for r in json.loads(out)] == [("exp", "succeeded")]
    code, out, _ = await jobherald("prune", "--dry-run", "-c", str(path))
    assert "would remove" not in out  # finished less than a minute ago
    store = await Store.open(cfg.database_url)
    try:  # as if it had finished two minutes ago
        async with store.engine.begin() as conn:
            await conn.execute(
                sa.text("update jobs set last_changed_at = :at where id = 'exp'"),
                {"at": (datetime.now(UTC) - timedelta(minutes=2)).replace(tzinfo=None)},
            )
    finally:
        await store.close()
    # A start (or a reload, or the daemon's minutely look) no longer watches it.
    counts = await Daemon(configs.load([], daemon={"include": ["jobs.d/*.toml"]})).run_once()
    assert counts == {}
    code, out, _ = await jobherald("status", "--json", "--all", "-c", str(path))
    assert [(r["id"], r["removed"]) for r in json.loads(out)] == [("exp", True)]
    code, out, err = await jobherald("prune", "-c", str(path))
    assert code == 0, err
    assert f"removed {dropin}" in out
    assert not dropin.exists()


async def test_an_upgrade_keeps_the_durations_and_marks_jobs_that_had_left(
    tmp_path: Path,
) -> None:
    """A database of the revision before: its succeeded runs' durations (the latest 50 per
    name) go to the durations table, and jobs that had left the config are removed."""
    db = tmp_path / "jh.db"
    old = await Store.open(url(db), migrate=False)
    await old.migrate("0011")
    await old.close()
    with sqlite3.connect(db) as conn:
        for i in range(60):
            begin = datetime(2026, 1, 1) + timedelta(days=i)
            conn.execute(
                "insert into jobs (id, name, source, instance_id, configured, state, created_at,"
                " last_polled_at, begin_time, end_time) values (?, 'nightly', 'roma', 'i', ?,"
                " 'succeeded', ?, ?, ?, ?)",
                (
                    f"j{i:02d}",
                    i == 59,  # the last one is still in the config
                    str(begin),
                    str(begin + timedelta(hours=2)),
                    str(begin),
                    str(begin + timedelta(minutes=i + 1)),
                ),
            )
    store = await Store.open(url(db))
    try:
        runs = (await store.durations_of([("nightly", "roma")]))[("nightly", "roma")]
        assert [job for job, _ in runs] == [f"j{i:02d}" for i in range(10, 60)]
        assert [seconds for _, seconds in runs] == pytest.approx(
            [60.0 * (i + 1) for i in range(10, 60)]
        )
        assert await store.removed_count() == 59
        assert await store.state_counts() == {"succeeded": 1}
        (j00,) = await store.page(JobFilter(removed=True), 1)
        assert j00.id == "j00"
    finally:
        await store.close()


async def test_history_takes_a_job_s_name_where_one_job_has_it(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    sim.add(SimJob("p4", [succeeded()]))
    sim.add(SimJob("x1", [succeeded()]))
    sim.add(SimJob("x2", [succeeded()]))
    jobs = [
        {"id": "p4", "name": "pipeline 04"},
        {"id": "x1", "name": "twin"},
        {"id": "x2", "name": "twin"},
    ]
    await Daemon(configs.load(jobs)).run_once()
    path = configs.write(jobs)
    code, out, err = await jobherald("history", "pipeline 04", "--json", "-c", str(path))
    assert code == 0, err
    assert [entry["to"] for entry in json.loads(out)] == ["succeeded"]
    code, _, err = await jobherald("history", "twin", "-c", str(path))
    assert code == 2 and "'twin' is the name of 2 jobs: give one of x1, x2" in err
