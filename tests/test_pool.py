"""The pool of pollers: caps, one poll per job at a time, health, shutdown."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from jobherald.schedule.pool import ADD_CHUNK, PollResult, Pool
from jobherald.service import Daemon
from jobherald.sources.simulator import Answer, SimJob, Simulator

from .conftest import ConfigWriter, NotifyListener, wait_for


async def test_the_pool_caps_requests_and_never_polls_one_job_twice_at_once(
    sim: Simulator, configs: ConfigWriter
) -> None:
    # 2,000 jobs due every 0.2 s is far more than 8 pollers can serve: they are always busy.
    ids = [f"j{i}" for i in range(2000)]
    for job_id in ids:
        sim.add(SimJob(job_id, [Answer(status="RUNNING", progress=0.5, delay=0.003)]))
    cfg = configs.load(ids, daemon={"poll_interval": "200ms", "concurrency": 8})
    daemon = Daemon(cfg)
    running = asyncio.create_task(daemon.run())
    try:
        await wait_for(lambda: len(sim.requests) >= 4000, 40, "4,000 polls")
    finally:
        daemon.stop()
        await running
    assert sim.max_in_flight == 8
    assert sim.max_job_in_flight == 1
    polled = {path.rsplit("/", 1)[1] for path, _ in sim.requests}
    assert len(polled) == 2000
    assert daemon.pool is not None
    assert daemon.pool.stats.started >= 4000


async def test_a_poll_that_never_ends_is_cut_off_and_the_job_polled_again() -> None:
    calls: dict[str, int] = {}
    hang = asyncio.Event()

    async def poll(job_id: str) -> PollResult:
        calls[job_id] = calls.get(job_id, 0) + 1
        if job_id == "stuck" and calls[job_id] == 1:
            await hang.wait()  # a request with no end
        return PollResult()

    pool = Pool(poll, 2, stuck_after=30.0, rng=random.Random(1))
    pool.start()
    pool.add([("stuck", 0.05), ("fine", 0.05)], spread=0.0)
    await wait_for(lambda: calls.get("fine", 0) >= 3, 5, "the other job polled on")
    now = pool.now()
    assert pool.health(now) is None
    assert pool.in_flight() >= 1
    # The watchdog's check half a minute on: the hung poll is cut off.
    pool.health(now + 31.0)
    await wait_for(lambda: calls["stuck"] >= 2, 5, "the stuck job polled again")
    assert pool.stats.cut == 1
    await pool.stop(1.0)


async def test_many_jobs_are_queued_a_chunk_at_a_time_and_polled_from_the_first() -> None:
    # At a start with many jobs, the first ones due are polled while the rest are being
    # queued; the first polls of all of them still spread over the whole spread.
    queued_at_poll: list[int] = []

    async def poll(job_id: str) -> PollResult:
        queued_at_poll.append(len(pool.queue) + pool.in_flight())
        return PollResult()

    pool = Pool(poll, 4, rng=random.Random(1))
    pool.start()
    total = 10 * ADD_CHUNK
    now = pool.now()
    await pool.add_gradually(((f"j{i}", 600.0) for i in range(total)), spread=1.0)
    assert len(pool.queue) + pool.in_flight() == total
    assert queued_at_poll and queued_at_poll[0] < total  # polled before the last chunk
    dues = [e.due for e in (pool.queue.entry(f"j{i}") for i in range(total)) if e is not None]
    assert max(dues) - now > 0.95  # the last chunk's jobs are spread like the first's
    await pool.stop(1.0)


async def test_a_pool_where_no_poll_ends_says_it_is_stuck() -> None:
    hang = asyncio.Event()

    async def poll(job_id: str) -> PollResult:
        await hang.wait()
        return PollResult()

    pool = Pool(poll, 2, stuck_after=60.0, rng=random.Random(1))
    pool.start()
    pool.add([(f"j{i}", 0.01) for i in range(5)], spread=0.0)
    await wait_for(lambda: pool.in_flight() == 2 and pool.waiting() == 3, 5, "a full pool")
    now = pool.now()
    assert pool.health(now + 10.0) is None  # busy is not stuck
    problem = pool.health(now + 61.0)
    assert problem is not None and "no poll has ended" in problem
    # The hung polls were cut off; the pollers took the next jobs, which hang too.
    await wait_for(lambda: pool.stats.cut == 2, 5, "both hung polls cut off")
    await wait_for(lambda: pool.in_flight() == 2 and pool.stats.started >= 4, 5, "the next polls")
    assert await pool.stop(0.1) == 2


async def test_a_pool_with_a_dead_poller_says_so() -> None:
    async def poll(job_id: str) -> PollResult:
        return PollResult()

    pool = Pool(poll, 3)
    pool.start()
    pool.pollers[1].cancel()  # the outermost edge: a task that ended
    await asyncio.sleep(0)
    assert pool.health(pool.now()) == "poller 1 has stopped"
    await pool.stop(0.1)


async def test_stopping_lets_polls_in_flight_end() -> None:
    ended: list[str] = []
    release = asyncio.Event()

    async def poll(job_id: str) -> PollResult:
        await release.wait()
        ended.append(job_id)
        return PollResult()

    pool = Pool(poll, 4)
    pool.start()
    pool.add([("a", 1.0), ("b", 1.0)], spread=0.0)
    await wait_for(lambda: pool.in_flight() == 2, 5, "two polls in flight")
    stopping = asyncio.create_task(pool.stop(5.0))
    await asyncio.sleep(0.05)
    release.set()
    assert await stopping == 0
    assert sorted(ended) == ["a", "b"]


async def test_a_job_removed_while_it_waits_for_a_poller_is_not_polled() -> None:
    polled: list[str] = []
    release = asyncio.Event()

    async def poll(job_id: str) -> PollResult:
        polled.append(job_id)
        await release.wait()
        return PollResult(terminal=True)

    pool = Pool(poll, 1)
    pool.start()
    pool.add([("first", 1.0)], spread=0.0)
    await wait_for(lambda: polled == ["first"], 5, "the first poll")
    pool.add([("gone", 1.0), ("kept", 1.0)], spread=0.0)
    await wait_for(lambda: pool.waiting() == 2, 5, "two jobs in line")
    pool.remove(["gone"])  # a reload took it out of the config
    release.set()
    await wait_for(lambda: polled == ["first", "kept"], 5, "the kept job polled")
    await asyncio.sleep(0.05)
    assert polled == ["first", "kept"]
    assert len(pool.queue) == 0
    await pool.stop(1.0)


async def test_a_stopped_poller_stops_the_watchdog_pings(
    sim: Simulator, configs: ConfigWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.add(SimJob("a", [Answer(status="RUNNING", progress=0.5)]))
    listener = NotifyListener(tmp_path)
    drain = listener.drain
    # What systemd sets for a unit with WatchdogSec=0.4s: pings every 0.2 s while healthy.
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    daemon = Daemon(configs.load(["a"], daemon={"poll_interval": "200ms", "concurrency": 2}))
    running = asyncio.create_task(daemon.run())
    try:
        await wait_for(lambda: sum("WATCHDOG=1" in m for m in drain()) >= 2, 20, "pings")
        assert daemon.pool is not None
        daemon.pool.pollers[0].cancel()  # the outermost edge: a poller task that ended
        await wait_for(
            lambda: any("STATUS=stuck: poller 0 has stopped" in m for m in drain()), 10, "stuck"
        )
        stuck_at = next(i for i, m in enumerate(listener.heard) if "STATUS=stuck" in m)
        await asyncio.sleep(1.0)  # five ping periods
        assert not any("WATCHDOG=1" in m for m in drain()[stuck_at:])
    finally:
        daemon.stop()
        await running
        listener.close()
