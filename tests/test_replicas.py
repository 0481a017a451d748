"""Several replicas on one PostgreSQL, as separate processes; and SQLite held by one daemon."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import signal
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobherald.model import Outcome, State, Transition, owner
from jobherald.sources.simulator import SimJob, Simulator, failed, running, succeeded
from jobherald.store import Claimer, JobIdentity, Joining, Lane, NewEvent, Store, Target
from tests.conftest import (
    ConfigWriter,
    NotifyListener,
    Receiver,
    jobherald,
    spawn_daemon,
    wait_for,
)

LEASE = 4.0
INTERVAL = 2.0
JOBS = 600
UA = re.compile(r"\(replica (?P<name>[^)]+)\)")


async def fetch(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(query, *args))
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


async def live_replicas(url: str) -> dict[int, asyncpg.Record]:
    """Live replica rows by pid."""
    rows = await fetch(url, "select * from replicas where expires_at > now() at time zone 'utc'")
    return {r["pid"]: r for r in rows}


async def wait_until(check: Any, timeout: float, what: str) -> Any:
    """Wait for an async check to return something true; return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def polls_by_job(sim: Simulator) -> dict[str, list[tuple[float, float, str]]]:
    """Every poll the simulator saw, per job: (monotonic time, wall time, replica name)."""
    out: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for (path, headers), at, wall in zip(
        sim.requests, sim.request_times, sim.request_wall_times, strict=True
    ):
        match = UA.search(headers.get("User-Agent", ""))
        out[path.rsplit("/", 1)[1]].append((at, wall, match["name"] if match else "?"))
    return out


def unexplained_repeats(
    received: list[str], times: list[float], stops: tuple[float, ...], resumed_at: float
) -> list[str]:
    """The event ids received more than once; asserts each was in flight at a kill or stop.

    In flight: first seen just before the kill or stop (or read by the receiver a moment
    after it: a stopped process sends nothing, so that request left before); or, for the
    frozen replica, a send it had begun that went out as soon as it was continued (after
    the others had sent the message in its place)."""
    arrivals: dict[str, list[float]] = defaultdict(list)
    for event_id, at in zip(received, times, strict=True):
        arrivals[event_id].append(at)
    repeats = [e for e, seen in arrivals.items() if len(seen) > 1]
    for event_id in repeats:
        seen = arrivals[event_id]
        in_flight = any(-0.5 < t - seen[0] < 1.0 for t in stops)
        resumed = any(0 <= at - resumed_at < 1.0 for at in seen[1:])
        assert in_flight or resumed, (event_id, seen, stops, resumed_at)
    return repeats


def running_jobs(sim: Simulator, prefix: str, count: int) -> list[str]:
    """Jobs that run on and on; their ids."""
    ids = [f"{prefix}{i:02d}" for i in range(count)]
    for job_id in ids:
        sim.add(SimJob(job_id, [running(0.3)]))
    return ids


async def stop_all(procs: list[asyncio.subprocess.Process]) -> list[int | None]:
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    codes: list[int | None] = []
    for proc in procs:
        try:
            codes.append(await asyncio.wait_for(proc.wait(), 20))
        except TimeoutError:
            proc.kill()
            await proc.wait()
            codes.append(None)
    return codes


@pytest.mark.timeout(240)
async def test_three_replicas_share_the_jobs_and_survive_a_kill_and_a_sigstop(
    postgres: str, sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    ids = [f"j{i:03d}" for i in range(JOBS)]
    config = configs.write(
        ids,
        notifiers={"ops": {"urls": [receiver.url()], "on": ["succeeded", "failed"]}},
        daemon={
            "database": postgres,
            "poll_interval": f"{INTERVAL:g}s",
            "lease": f"{LEASE:g}s",
            "shutdown_timeout": "5s",
        },
    )
    jobs = [
        sim.add(
            SimJob(
                job_id,
                [running(0.5), failed() if i % 10 == 0 else succeeded()],
                finish_at=math.inf,
            )
        )
        for i, job_id in enumerate(ids)
    ]
    logs = [configs.folder / f"replica-{n}.log" for n in range(3)]
    procs = [await spawn_daemon(config, log) for log in logs]
    try:
        live = await wait_until(lambda: _three(postgres), 60, "three live replicas")
        up = time.monotonic()
        # Jobs finish from 8 s to 32 s from now, while replicas die, freeze and come back.
        finish_at = {}
        for i, job in enumerate(jobs):
            job.finish_at = finish_at[job.id] = up + 8 + 24 * i / JOBS
        names = {pid: row["name"] for pid, row in live.items()}
        killed, stopped, kept = procs[2], procs[1], procs[0]
        killed_name, stopped_name = names[killed.pid], names[stopped.pid]

        await asyncio.sleep(max(0.0, up + 5 - time.monotonic()))
        steady = sum(1 for at in sim.request_times if up + 1 <= at < up + 5)
        killed.send_signal(signal.SIGKILL)
        await killed.wait()
        t_kill = time.monotonic()

        await asyncio.sleep(max(0.0, up + 13 - time.monotonic()))
        stopped.send_signal(signal.SIGSTOP)
        t_stop, t_stop_wall = time.monotonic(), time.time()
        # Frozen well past the bound below: a share not taken over shows as a longer gap.
        await asyncio.sleep(LEASE + 6)
        stopped.send_signal(signal.SIGCONT)
        t_cont, t_cont_wall = time.monotonic(), time.time()

        async def rejoined() -> datetime | None:
            row = (await live_replicas(postgres)).get(stopped.pid)
            if row is None:
                return None
            at: datetime = row["joined_at"]  # naive UTC, as stored
            return at if at.replace(tzinfo=UTC).timestamp() > t_stop_wall else None

        joined_at = await wait_until(rejoined, 30, "the stopped replica to rejoin")
        t_rejoined_wall = joined_at.replace(tzinfo=UTC).timestamp()

        async def all_delivered() -> bool:
            rows = await fetch(postgres, "select state from deliveries")
            return len(rows) == JOBS and all(r["state"] == "delivered" for r in rows)

        await wait_until(all_delivered, 90, "every job's message delivered")
        assert await stop_all([kept, stopped]) == [0, 0]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = {n: log.read_text() for n, log in enumerate(logs)}
    assert "Traceback" not in "".join(text.values()), text

    # One terminal transition and one event per job, however many replicas saw it flip.
    events = await fetch(postgres, "select id, job_id, kind from events")
    assert Counter(r["job_id"] for r in events) == Counter(ids)
    ends = await fetch(
        postgres,
        "select job_id from transitions where to_state in ('succeeded', 'failed')",
    )
    assert Counter(r["job_id"] for r in ends) == Counter(ids)

    # Every event reached the receiver; a repeat only for a send in flight at the kill or stop.
    received = [event_id for event_id, _ in receiver.event_times()]
    times = [at for _, at in receiver.event_times()]
    assert set(received) == {r["id"] for r in events}
    repeats = unexplained_repeats(received, times, (t_kill, t_stop), t_cont)

    # No job went unpolled longer than lease + interval (+ the interval's jitter and a
    # second and a half in which jobs taken over are first polled on a busy machine), and
    # few polls were extra.
    polls = polls_by_job(sim)
    settle = up + 2  # the first polls of the share each replica took at start
    worst_gap, single, total, worst = 0.0, 0, 0, ""
    for job_id in ids:
        times = [at for at, _, _ in polls[job_id]]
        until = next(at for at in times if at >= finish_at[job_id])
        watched = [(at, who) for at, _, who in polls[job_id] if settle <= at <= until]
        for (a, who_a), (b, who_b) in itertools.pairwise(watched):
            if b - a > worst_gap:
                worst_gap = b - a
                worst = (
                    f"{job_id}: polled by {who_a} at up+{a - up:.1f}s, next by {who_b} at "
                    f"up+{b - up:.1f}s (kill of {killed_name} at up+{t_kill - up:.1f}s, stop of "
                    f"{stopped_name} up+{t_stop - up:.1f}s to up+{t_cont - up:.1f}s)"
                )
        single += math.ceil((until - times[0]) / INTERVAL) + 1
        total += len(times)
    assert worst_gap <= LEASE + INTERVAL * 1.1 + 1.5, (worst_gap, worst)
    assert total <= 1.15 * single, (total, single)

    # The frozen replica polled nothing from its resumption until it had joined again.
    # (Frozen, it could send nothing. A request it had decided to send, its lease still
    # valid, when the SIGSTOP came between that check and the socket write goes out the
    # instant it resumes: no process can close that gap, so the window starts a moment
    # after the SIGCONT. Any poll begun after resuming is in it.)
    acted = [
        wall
        for job_polls in polls.values()
        for _, wall, name in job_polls
        if name == stopped_name and t_cont_wall + 0.5 < wall < t_rejoined_wall
    ]
    assert acted == [], f"{len(acted)} polls by the stopped replica before it rejoined"
    claimed = await fetch(
        postgres,
        "select id from deliveries where sent_by = $1 and claimed_at > to_timestamp($2)"
        " at time zone 'utc' and claimed_at < $3",
        stopped_name,
        t_cont_wall,
        joined_at,
    )
    assert claimed == []
    assert f"replica {stopped_name}: lease lapsed" in "".join(text.values())
    assert f"replica {killed_name} went silent" in "".join(text.values())
    assert re.search(
        rf"took over \d+ jobs \(\d+ from {re.escape(killed_name)}", "".join(text.values())
    )
    assert f"replica {stopped_name} rejoined" in text[1]

    def takeover(name: str, since: float) -> list[float]:
        """For each job the replica polled in the interval before `since`: how long until
        another replica polled it."""
        delays = []
        for job_polls in polls.values():
            mine = [at for at, _, n in job_polls if n == name and since - INTERVAL <= at < since]
            later = [at for at, _, n in job_polls if n != name and at >= since]
            if mine and later:
                delays.append(later[0] - since)
        return delays

    after_kill, after_stop = takeover(killed_name, t_kill), takeover(stopped_name, t_stop)
    assert after_kill and after_stop
    print(
        f"\nreplicas: {JOBS} jobs, lease {LEASE:g}s, interval {INTERVAL:g}s; "
        f"takeover after kill -9: median {statistics.median(after_kill):.2f}s, "
        f"max {max(after_kill):.2f}s; after SIGSTOP: median {statistics.median(after_stop):.2f}s, "
        f"max {max(after_stop):.2f}s; resumed {t_cont - t_stop:.1f}s after the stop; "
        f"polls {total} vs {single} for one replica ({total / single:.3f}x); "
        f"worst gap {worst_gap:.2f}s; repeats {len(repeats)}; "
        f"steady: {steady / JOBS / (4 / INTERVAL):.3f} polls per job per interval"
    )


async def _three(url: str) -> dict[int, asyncpg.Record] | None:
    live = await live_replicas(url)
    return live if len(live) == 3 else None


@pytest.mark.timeout(120)
async def test_two_replicas_started_a_second_apart_on_an_empty_database_migrate_it_once(
    postgres: str, sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    ids = running_jobs(sim, "m", 60)
    config = configs.write(ids, daemon={"database": postgres, "poll_interval": "1s", "lease": "4s"})
    logs = [configs.folder / "first.log", configs.folder / "second.log"]
    procs = [await spawn_daemon(config, logs[0])]
    await asyncio.sleep(1.0)
    procs.append(await spawn_daemon(config, logs[1]))
    try:
        await wait_until(
            lambda: _live_with_jobs(postgres, 2, len(ids)), 60, "two replicas sharing the jobs"
        )
        start = len(sim.requests)
        began = time.monotonic()
        await asyncio.sleep(6)
        rate = (len(sim.requests) - start) / len(ids) / ((time.monotonic() - began) / 1.0)
        code, out, _ = await jobherald("replicas", "--json", "-c", str(config))
        assert code == 0
        listed = json.loads(out)
        code, status_out, _ = await jobherald("status", "--json", "-c", str(config))
        owners = Counter(s["owner"] for s in json.loads(status_out))
        # A clean stop hands the jobs over at once, not after the lease.
        leaving = next(r["name"] for r in listed if r["pid"] == procs[0].pid)
        t_term = time.monotonic()
        assert await stop_all(procs[:1]) == [0]
        await asyncio.sleep(2.0)
        assert await stop_all(procs[1:]) == [0]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = [log.read_text() for log in logs]
    assert sum(t.count("database migrated from empty") for t in text) == 1, text
    assert "Traceback" not in "".join(text)
    assert [set(r) for r in listed] == [
        {"name", "host", "pid", "started_at", "heartbeat_at", "jobs", "live"}
    ] * 2
    assert all(r["live"] for r in listed) and sum(r["jobs"] for r in listed) == len(ids)
    assert sorted(owners) == sorted(r["name"] for r in listed)
    assert sum(owners.values()) == len(ids)
    # Each job polled about once per interval by the two together (jitter aside).
    assert 0.85 <= rate <= 1.15, rate
    handed = []
    for job_polls in polls_by_job(sim).values():
        if any(n == leaving and t_term - 1.0 <= at < t_term for at, _, n in job_polls):
            handed.append(next(at for at, _, n in job_polls if n != leaving and at >= t_term))
    assert handed and max(handed) - t_term < 4.0
    print(
        f"\nreplicas: 2 replicas, {len(ids)} jobs: {rate:.3f} polls per job per interval; "
        f"after a clean stop the other polled its {len(handed)} jobs within "
        f"{max(handed) - t_term:.2f}s"
    )
    # A clean stop removes each replica's row: nobody is left to wait out a lease.
    assert await fetch(postgres, "select name from replicas") == []


async def _live_with_jobs(url: str, count: int, jobs: int) -> bool:
    live = await live_replicas(url)
    return (
        len(live) == count
        and sum(r["jobs"] for r in live.values()) == jobs
        and all(r["jobs"] for r in live.values())
    )


@pytest.mark.timeout(120)
async def test_two_replicas_split_a_sources_request_budget_between_them(
    postgres: str, sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    # 60 polls a second are due; the source allows 10 a second in all, not 10 per replica.
    ids = running_jobs(sim, "b", 60)
    config = configs.write(
        ids,
        daemon={"database": postgres, "poll_interval": "1s", "lease": "4s"},
        source={"max_rate": 10},
    )
    logs = [configs.folder / "one.log", configs.folder / "two.log"]
    procs = [await spawn_daemon(config, log) for log in logs]
    try:
        await wait_until(
            lambda: _live_with_jobs(postgres, 2, len(ids)), 60, "two replicas sharing the jobs"
        )
        began = time.monotonic()
        await asyncio.sleep(6)  # the window the requests are counted in
        sent = [
            (at, who)
            for polls in polls_by_job(sim).values()
            for at, _, who in polls
            if began + 1 <= at < began + 6
        ]
    finally:
        assert await stop_all(procs) == [0, 0]
    text = "".join(log.read_text() for log in logs)
    assert "Traceback" not in text
    # Both replicas poll, and together they keep to the source's 10 a second (each bucket
    # allows a tenth of a second of burst); unsplit, the two would send 20 a second.
    assert len({who for _, who in sent}) == 2, Counter(who for _, who in sent)
    assert 35 <= len(sent) <= 55, len(sent)


async def test_one_replica_polls_each_job_once_per_interval(
    postgres: str, sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    ids = running_jobs(sim, "s", 60)
    config = configs.write(ids, daemon={"database": postgres, "poll_interval": "1s"})
    log = configs.folder / "one.log"
    listener = NotifyListener(configs.folder)
    proc = await spawn_daemon(config, log, env={"NOTIFY_SOCKET": listener.address})
    try:
        await wait_until(lambda: _live_with_jobs(postgres, 1, len(ids)), 60, "the replica")
        start, began = len(sim.requests), time.monotonic()
        await asyncio.sleep(6)
        rate = (len(sim.requests) - start) / len(ids) / (time.monotonic() - began)
        # What `systemctl status` shows: this replica's share.
        said = "\n".join(listener.drain())
        assert re.search(
            rf"STATUS=replica \S+, 1 of 1 live, polling {len(ids)} of {len(ids)} jobs", said
        )
        code, out, _ = await jobherald("replicas", "-c", str(config))
        assert code == 0 and " yes" in out and f"{len(ids)}" in out
        assert await stop_all([proc]) == [0]
    finally:
        listener.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert 0.85 <= rate <= 1.15, rate
    print(f"\nreplicas: 1 replica, {len(ids)} jobs: {rate:.3f} polls per job per interval")
    text = log.read_text()
    assert re.search(r"replica \S+ joined \(host \S+, pid \d+, lease 15s\): 1 live", text)
    assert re.search(r"replica \S+ left: its \d+ jobs go to the others", text)


async def test_a_second_daemon_on_a_held_sqlite_database_is_refused_until_the_holder_dies(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    sim.add(SimJob("a", [running(0.1)]))
    config = configs.write(["a"])
    log = configs.folder / "daemon.log"
    holder = await spawn_daemon(config, log)
    try:
        await wait_for(lambda: "watching 1 job " in log.read_text(), 30, "the daemon")
        for args in (["run"], ["run", "--once"]):
            code, _, err = await jobherald(*args, "-c", str(config))
            assert code == 1, (args, err)
            assert err.count("\n") == 1, err
            assert f"(pid {holder.pid})" in err and "on host " in err, err
            assert "in use by the jobherald daemon" in err
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
        # The kernel dropped the dead daemon's lock: the next one starts at once.
        code, _, err = await jobherald("run", "--once", "-c", str(config))
        assert code == 0, err
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
    assert (configs.folder / "jobherald.db.lock").exists()


def test_the_lock_file_is_beside_the_database(tmp_path: Path) -> None:
    from jobherald.store import DatabaseLock

    lock = DatabaseLock(tmp_path / "jh.db")
    lock.acquire("a test")
    try:
        assert [p.name for p in tmp_path.iterdir()] == ["jh.db.lock"]  # beside the database
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()  # who holds it
        other = DatabaseLock(tmp_path / "jh.db")
        with pytest.raises(Exception, match=r"jh\.db is in use by a test on host \S+ \(pid \d+\)"):
            other.acquire("another")
    finally:
        lock.release()
    again = DatabaseLock(tmp_path / "jh.db")
    again.acquire("after release")
    again.release()
    assert again.path == tmp_path / "jh.db.lock"


# -- the parts, in one process ---------------------------------------------------------

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


async def _stores(postgres: str, n: int) -> list[Store]:
    url = postgres.replace("postgresql://", "postgresql+asyncpg://")
    return [await Store.open(url) for _ in range(n)]


async def test_two_replicas_recording_the_same_flip_write_one_transition_and_one_event(
    postgres: str,
) -> None:
    a, b = await _stores(postgres, 2)
    try:
        await a.sync_jobs([JobIdentity("j", "J", "roma", "i")], NOW)
        await b.sync_jobs([JobIdentity("j", "J", "roma", "i")], NOW)
        before = (await b.views(["j"]))["j"]
        done = replace(before, state=State.SUCCEEDED, raw_status="SUCCEEDED", progress=1.0)
        outcome = Outcome(done, True, Transition(NOW, State.PENDING, State.SUCCEEDED, 1.0, "x"))
        event = NewEvent("succeeded", {"job": {"id": "j"}}, [Target("ops", "k", "json://x")])
        results = await asyncio.gather(
            a.record("j", outcome, NOW, [event]), b.record("j", outcome, NOW, [event])
        )
        assert sorted(r.written for r in results) == [False, True]
        (loser,) = [r for r in results if not r.written]
        # The loser gets what the winner wrote, and wrote nothing itself.
        assert (loser.view.state, loser.view.version, loser.event_ids) == (State.SUCCEEDED, 1, ())
        counts = await fetch(
            postgres,
            "select (select count(*) from transitions) t, (select count(*) from events) e,"
            " (select count(*) from deliveries) d",
        )
        assert tuple(counts[0]) == (1, 1, 1)
    finally:
        await a.close()
        await b.close()


async def test_each_delivery_is_claimed_once_and_a_lapsed_replicas_claims_are_taken_over(
    postgres: str,
) -> None:
    a, b = await _stores(postgres, 2)
    try:
        await a.sync_jobs([JobIdentity("j", "J", "roma", "i")], NOW)
        started = datetime.now(UTC)
        # Replica a's lease is one second; b's is long.
        await a.join("a", Joining("token-a", "host-a", 1, started, 1.0))
        await b.join("b", Joining("token-b", "host-b", 2, started, 60.0))
        targets = [Target("ops", f"k{i}", f"json://x/{i}") for i in range(50)]
        await a.record_events([NewEvent("succeeded", {"job": {"id": "j"}}, targets)], NOW)
        by_a, by_b = Claimer("token-a", "a"), Claimer("token-b", "b")
        got_a, got_b = await asyncio.gather(
            a.claim_due(NOW, by_a, limit=30), b.claim_due(NOW, by_b, limit=30)
        )
        ids_a, ids_b = {d.id for d in got_a}, {d.id for d in got_b}
        assert not ids_a & ids_b and len(ids_a | ids_b) == 50
        assert await b.claim_due(NOW, by_b) == []  # a's claims hold while a is live
        await asyncio.sleep(1.2)  # a's lease runs out: it stopped heart-beating
        taken = {d.id for d in await b.claim_due(NOW, by_b)}
        assert taken == ids_a
        # a, resumed, cannot mark what b now holds; b can.
        some = next(iter(ids_a))
        assert not await a.mark_delivered(some, NOW, by_a)
        assert await b.mark_delivered(some, NOW, by_b)
        members, _ = await b.members()
        assert [(m.name, m.live) for m in members] == [("a", False), ("b", True)]
        # A clean leave gives back what is claimed and not sent.
        await b.leave("b", "token-b")
        assert len(await a.claim_due(NOW, Claimer("token-c", "c"))) == 49
    finally:
        await a.close()
        await b.close()


async def test_a_lane_is_sent_by_one_replica_at_a_time_and_taken_over_when_it_lapses(
    postgres: str,
) -> None:
    a, b = await _stores(postgres, 2)
    try:
        await a.sync_jobs([JobIdentity("j", "J", "roma", "i")], NOW)
        started = datetime.now(UTC)
        await a.join("a", Joining("token-a", "host-a", 1, started, 1.0))
        await b.join("b", Joining("token-b", "host-b", 2, started, 60.0))
        busy, other = Lane("ops", "k1"), Lane("ops", "k2")
        for _ in range(10):
            await a.record_events(
                [NewEvent("succeeded", {"job": {"id": "j"}}, [Target("ops", "k1", "json://x/1")])],
                NOW,
            )
        await a.record_events(
            [NewEvent("failed", {"job": {"id": "j"}}, [Target("ops", "k2", "json://x/2")])], NOW
        )
        by_a, by_b = Claimer("token-a", "a"), Claimer("token-b", "b")
        # Claimed at the same instant: one replica gets the lane.
        won = await asyncio.gather(a.claim_lane(busy, by_a), b.claim_lane(busy, by_b))
        assert sorted(won) == [False, True]
        holder, waiter = (a, b) if won[0] else (b, a)
        by_holder, by_waiter = (by_a, by_b) if won[0] else (by_b, by_a)
        assert await waiter.due_lanes(NOW, by_waiter) == [other]
        assert (
            await waiter.claim_batch(NOW, by_waiter, busy, single=1, digest_after=5, digest_max=200)
            is None
        )
        batch = await holder.claim_batch(
            NOW, by_holder, busy, single=1, digest_after=5, digest_max=200
        )
        assert batch is not None and batch.digest and len(batch.deliveries) == 10
        await holder.release_claims(by_holder.token)  # as if its digest was cut off
        await holder.release_lane(busy, by_holder)
        # Now a holds it, and a stops heart-beating: b takes the lane and a's claimed rows.
        assert await a.claim_lane(busy, by_a)
        await a.claim_batch(NOW, by_a, busy, single=1, digest_after=5, digest_max=200)
        assert not await b.claim_lane(busy, by_b)
        await asyncio.sleep(1.2)
        assert await b.claim_lane(busy, by_b)
        taken = await b.claim_batch(NOW, by_b, busy, single=1, digest_after=5, digest_max=3)
        assert taken is not None and taken.digest and len(taken.deliveries) == 3
        ids = [d.id for d in taken.deliveries]
        # a, resumed, counts none of them; b's digest counts all three, in one statement.
        assert await a.mark_digest_delivered(ids, NOW, by_a, "a" * 32) == 0
        assert await b.mark_digest_delivered(ids, NOW, by_b, "b" * 32) == 3
        rows = await fetch(
            postgres,
            "select digest_id, count(*) from deliveries where state = 'delivered' group by digest_id",
        )
        assert [tuple(r) for r in rows] == [("b" * 32, 3)]
    finally:
        await a.close()
        await b.close()


async def test_a_name_is_taken_once_while_its_replica_is_live(postgres: str) -> None:
    (store,) = await _stores(postgres, 1)
    try:
        started = datetime.now(UTC)
        names = await asyncio.gather(
            *(store.join("node", Joining(f"t{i}", "h", 100 + i, started, 60.0)) for i in range(3))
        )
        assert sorted(names) == ["node", "node:2", "node:3"]
        # A rejoining replica keeps its own name.
        (first,) = [i for i, n in enumerate(names) if n == "node:2"]
        again = Joining("t9", "h", 100 + first, started, 60.0, f"t{first}", "node:2")
        assert await store.join("node", again) == "node:2"
    finally:
        await store.close()


async def test_cluster_wide_work_runs_on_one_replica_at_a_time(postgres: str) -> None:
    a, b = await _stores(postgres, 2)
    try:
        async with a.exclusive("reminders") as first:
            async with b.exclusive("reminders") as second:
                assert (first, second) == (True, False)
            async with b.exclusive("retention") as other:
                assert other
        async with b.exclusive("reminders") as after:
            assert after
    finally:
        await a.close()
        await b.close()


def test_ownership_is_even_and_moves_only_the_jobs_of_a_replica_that_left() -> None:
    jobs = [f"job-{i}" for i in range(9_000)]
    three = {job: owner(job, ["a", "b", "c"]) for job in jobs}
    shares = Counter(three.values())
    assert all(2_700 <= n <= 3_300 for n in shares.values()), shares
    two = {job: owner(job, ["a", "b"]) for job in jobs}
    moved = [job for job in jobs if three[job] != two[job]]
    assert all(three[job] == "c" for job in moved) and len(moved) == shares["c"]
    assert owner("x", []) is None


class Proxy:
    """A TCP proxy to PostgreSQL that the test can cut (every connection dropped, new ones
    refused) and mend: a replica losing its database, with nothing else changed."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self.open = True
        self._links: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.open = False
        for writer in self._links:
            writer.transport.abort()
        self._links.clear()

    def mend(self) -> None:
        self.open = True

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


@pytest.mark.timeout(120)
async def test_a_replica_that_loses_its_database_stops_polling_until_it_has_rejoined(
    postgres: str, sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    ids = running_jobs(sim, "c", 20)
    base, name = postgres.rsplit("/", 1)
    proxy = Proxy(int(base.rsplit(":", 1)[1]))
    await proxy.start()
    through = f"postgresql://jobherald@127.0.0.1:{proxy.port}/{name}"
    config = configs.write(ids, daemon={"database": through, "poll_interval": "1s", "lease": "3s"})
    log = configs.folder / "cut.log"
    proc = await spawn_daemon(config, log)
    try:
        await wait_until(lambda: _live_with_jobs(postgres, 1, len(ids)), 60, "the replica")
        proxy.cut()
        t_cut = time.monotonic()
        await wait_for(lambda: "lease lapsed" in log.read_text(), 15, "the lease to lapse")
        t_lapsed = time.monotonic()
        await asyncio.sleep(3.0)
        quiet = [at for at in sim.request_times if t_lapsed < at]
        proxy.mend()
        await wait_for(lambda: " rejoined " in log.read_text(), 30, "the replica to rejoin")
        resumed = len(sim.requests)
        await wait_for(lambda: len(sim.requests) > resumed + len(ids), 15, "polls again")
        assert await stop_all([proc]) == [0]
    finally:
        await proxy.stop()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log.read_text()
    # Its lease ended by its own clock within `lease` of the cut, and then nothing was polled.
    assert t_lapsed - t_cut < 3.0 + 1.0
    assert quiet == [], f"{len(quiet)} polls while the lease was gone"
    assert "heartbeat failed" in text and "heartbeats work again" in text
    assert "Traceback" not in text, text
