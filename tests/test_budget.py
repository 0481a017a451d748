"""Politeness: a request budget per source (max_rate), the jobs about to finish first, and
a pause of the whole source when it says stop (429 with Retry-After); real daemons
against the simulator."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from jobherald.config import Config
from jobherald.schedule.budget import TokenBucket
from jobherald.service import Daemon
from jobherald.sources.simulator import SimJob, Simulator, http_error, running
from tests.conftest import ConfigWriter, Receiver, wait_for
from tests.test_http import free_port


@pytest.fixture
async def running_daemon() -> AsyncIterator[Callable[[Config], Daemon]]:
    started: list[Daemon] = []
    tasks: list[asyncio.Task[None]] = []

    def run(cfg: Config) -> Daemon:
        daemon = Daemon(cfg)
        started.append(daemon)
        tasks.append(asyncio.create_task(daemon.run()))
        return daemon

    yield run
    for daemon in started:
        daemon.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)


def busiest_second(times: list[float]) -> int:
    """The most requests in any window of one second."""
    times = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_a_bucket_gives_its_rate_and_a_twentieth_of_a_second_of_burst() -> None:
    bucket = TokenBucket(50.0, now=0.0)
    taken = [t / 1000 for t in range(0, 3000) if bucket.take(t / 1000)]
    assert 2 + 149 <= len(taken) <= 3 + 150  # the burst at the start, then 50 a second
    assert busiest_second(taken) <= 52  # room left for the requests' way to the upstream
    # Half a second later it holds its burst again: 2.5 requests' worth.
    assert bucket.take(3.5) and bucket.take(3.5)
    assert not bucket.take(3.5)
    assert bucket.wait(3.5) == pytest.approx(0.01, abs=0.001)


@pytest.mark.timeout(60)
async def test_max_rate_caps_the_requests_of_a_source_and_counts_deferred_polls(
    sim: Simulator, configs: ConfigWriter, running_daemon: Callable[[Config], Daemon]
) -> None:
    for i in range(60):
        sim.add(SimJob(f"r{i:02d}", [running(0.5)]))
    port = free_port()
    configs.extra = [f'[http]\nlisten = "127.0.0.1:{port}"\n']
    cfg = configs.load(
        [f"r{i:02d}" for i in range(60)],
        source={"max_rate": 20},
        daemon={"poll_interval": "1s", "concurrency": 32},
    )
    daemon = running_daemon(cfg)
    await wait_for(lambda: daemon.ready, 20, "the daemon")
    began = time.monotonic()
    await asyncio.sleep(5.0)  # 60 polls a second are due; 20 a second may go
    sent = [t for t in sim.request_times if t >= began]
    assert busiest_second(sent) <= 22, busiest_second(sent)
    assert 80 <= len(sent) <= 110, len(sent)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as answer,
    ):
        metrics = await answer.text()
    deferred = next(
        line for line in metrics.splitlines() if line.startswith("jobherald_polls_deferred_total")
    )
    assert deferred.startswith('jobherald_polls_deferred_total{source="roma"}')
    assert float(deferred.split()[-1]) > 0


@pytest.mark.timeout(60)
async def test_under_a_budget_jobs_about_to_finish_are_polled_first(
    sim: Simulator, configs: ConfigWriter, running_daemon: Callable[[Config], Daemon]
) -> None:
    # Begun 3 minutes ago: at 99 % a job ends within seconds, at 1 % in hours.
    for i in range(20):
        sim.add(SimJob(f"slow{i:02d}", [running(0.01)]))
    for i in range(5):
        sim.add(SimJob(f"soon{i}", [running(0.99)]))
    ids = [f"slow{i:02d}" for i in range(20)] + [f"soon{i}" for i in range(5)]
    # 12.5 polls a second are due; 4 may go.
    cfg = configs.load(ids, source={"max_rate": 4}, daemon={"poll_interval": "2s"})
    daemon = running_daemon(cfg)
    await wait_for(lambda: daemon.ready, 20, "the daemon")
    # Once every job was polled once (its progress known), the budget goes to the soon ones.
    await wait_for(lambda: all(sim.polls(j) >= 1 for j in ids), 20, "a first poll of each")
    before = {j: sim.polls(j) for j in ids}
    await asyncio.sleep(6.0)
    polled = Counter({j: sim.polls(j) - before[j] for j in ids})
    soon = sum(polled[f"soon{i}"] for i in range(5)) / 5
    slow = sum(polled[f"slow{i:02d}"] for i in range(20)) / 20
    assert soon >= 2.0, polled  # about every 2 s, their interval
    assert soon >= 3 * slow, (soon, slow)


@pytest.mark.timeout(60)
async def test_a_429_with_retry_after_pauses_the_whole_source(
    sim: Simulator,
    receiver: Receiver,
    configs: ConfigWriter,
    running_daemon: Callable[[Config], Daemon],
) -> None:
    began = time.monotonic()
    storm_ends = began + 6.0
    for i in range(30):
        answers = [http_error(429, "APIG.0308", "throttled", retry_after=2), running(0.5)]
        sim.add(SimJob(f"s{i:02d}", answers, finish_at=storm_ends))
    port = free_port()
    configs.extra = [f'[http]\nlisten = "127.0.0.1:{port}"\n']
    cfg = configs.load(
        [f"s{i:02d}" for i in range(30)],
        source={"error_after": "1s"},
        daemon={"poll_interval": "1s", "retries": 0},
        notifiers={"ops": {"urls": [receiver.url()], "on": ["error", "recovered"]}},
    )
    daemon = running_daemon(cfg)
    await wait_for(lambda: daemon.ready, 20, "the daemon")
    await wait_for(lambda: len(sim.request_times) >= 1, 10, "a first request")
    await asyncio.sleep(0.3)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as answer:
            metrics = await answer.text()
        async with http.get(f"http://127.0.0.1:{port}/") as answer:
            page = await answer.text()
    assert 'jobherald_source_up{source="roma"} 0.0' in metrics
    assert 'data-throttled="roma">throttled until ' in page
    await wait_for(lambda: time.monotonic() > storm_ends, 10, "the storm to end")
    during = [t for t in sim.request_times if t < storm_ends]
    # 30 jobs polled every second for 6 s would be 180 requests: the source said stop,
    # so the first ones, then one probe every 2 s.
    assert len(during) <= 10, len(during)
    # After the storm every job is polled again, and the source's error event (after
    # error_after) is followed by its recovery.
    await wait_for(lambda: all(sim.polls(f"s{i:02d}") >= 2 for i in range(30)), 20, "polls")
    await wait_for(lambda: len(receiver.messages) >= 2, 20, "the error and recovered messages")
    titles = [m["title"] for m in receiver.messages]
    assert titles[:2] == ["source roma error", "source roma recovered"], titles
    assert "asks to be polled less often (HTTP 429)" in receiver.messages[0]["message"]
    with sqlite3.connect(configs.folder / "jobherald.db") as conn:
        (jobs_with_errors,) = conn.execute(
            "select count(*) from jobs where error is not null"
        ).fetchone()
    assert jobs_with_errors == 0  # the source's outage, not the jobs', and it is over


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_gates_hand_on_waiting_polls_at_the_budget_on_either_loop(loop_name: str) -> None:
    import uvloop

    from jobherald.schedule.budget import Gates
    from jobherald.schedule.queue import Entry

    async def run() -> list[float]:
        loop = asyncio.get_running_loop()
        handed: list[float] = []
        gates = Gates(lambda entry: handed.append(loop.time()), lambda job_id: "s")
        gates.configure({"s": (20.0, 600.0)})
        now = loop.time()
        for i in range(12):
            gates.admit(Entry(f"j{i}", 1.0, now, now), now)  # the gate hands them on
        assert len(handed) == 1  # at once: a twentieth of a second of 20 a second
        await wait_for(lambda: len(handed) >= 10, 5, "the waiting polls")
        gates.close()
        return handed

    factory = uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        handed = runner.run(run())
    # Then one every 50 ms: the tenth 0.45 s after the first.
    assert handed[9] - handed[0] == pytest.approx(0.45, abs=0.15)


async def test_a_job_near_its_end_waits_for_it_and_one_past_it_goes_first() -> None:
    """Under a budget, a job whose ETA is within its interval is not polled just before
    its end (it would most likely still run): it waits for its ETA while others go; a job
    whose ETA is past goes before the longest overdue."""
    from jobherald.schedule.budget import Gates
    from jobherald.schedule.queue import Entry

    loop = asyncio.get_running_loop()
    handed: list[tuple[str, float]] = []
    ends = {"near": time.time() + 0.6, "past": time.time() - 5.0}
    gates = Gates(
        lambda entry: handed.append((entry.job_id, loop.time())),
        lambda job_id: "s",
        lambda entry: ends.get(entry.job_id),
    )
    gates.configure({"s": (100.0, 600.0)})
    began = loop.time()
    # The budget is spent first (ten a tenth of a second), so that the rest wait in the room.
    for i in range(10):
        gates.admit(Entry(f"spent{i}", 10.0, began, began), began)
    for job_id, due in (("old", began - 30), ("near", began - 60), ("past", began - 1)):
        gates.admit(Entry(job_id, 10.0, due, due), began)
    await wait_for(lambda: any(j == "near" for j, _ in handed), 5, "the near job")
    gates.close()
    order = [j for j, _ in handed if not j.startswith("spent")]
    assert order == ["past", "old", "near"], handed
    near_at = next(at for j, at in handed if j == "near")
    assert near_at - began >= 0.5, "handed before its ETA"


@pytest.mark.timeout(60)
# 0 stands for every Retry-After of no pause (negative and past dates read as 0 does: see
# test_hostile's parsing cases); None: a 500, each poll retrying within itself.
@pytest.mark.parametrize("retry_after", [0, None])
async def test_no_answer_of_the_upstream_slips_the_budget(
    sim: Simulator,
    configs: ConfigWriter,
    running_daemon: Callable[[Config], Daemon],
    retry_after: float | str | None,
) -> None:
    """Under max_rate 5, 50 jobs whose upstream answers 429 with a Retry-After of no pause
    or 500 (each poll retrying within itself): no second of more than 6 requests at the
    upstream, retries and probes included."""
    status = 500 if retry_after is None else 429
    for i in range(50):
        answer = http_error(status, "APIG.0308", "throttled", retry_after=retry_after)
        sim.add(SimJob(f"t{i:02d}", [answer]))
    cfg = configs.load(
        [f"t{i:02d}" for i in range(50)],
        source={"max_rate": 5},
        daemon={"poll_interval": "1s", "concurrency": 32, "retries": 2},
    )
    daemon = running_daemon(cfg)
    await wait_for(lambda: daemon.ready, 20, "the daemon")
    began = time.monotonic()
    await asyncio.sleep(4.0)
    sent = [t for t in sim.request_times if t >= began]
    assert busiest_second(sent) <= 6, busiest_second(sent)
    assert len(sent) >= 8  # the budget is spent, not idle


async def test_a_probe_whose_job_left_the_config_hands_the_probe_on() -> None:
    """A source paused by a 429: when the pause ends one poll goes first (the probe). If
    that poll is dropped before it begins (a reload removed its job), another goes: the
    source is never left paused for good."""
    from jobherald.schedule.budget import Gates
    from jobherald.schedule.queue import Entry

    loop = asyncio.get_running_loop()
    handed: list[Entry] = []
    gates = Gates(handed.append, lambda job_id: "s")
    gates.configure({"s": (None, 600.0)})
    gates.pause("s", 0.1)
    now = loop.time()
    first, second = Entry("gone", 1.0, now, now), Entry("stays", 1.0, now, now)
    assert not gates.admit(first, now) and not gates.admit(second, now)
    await wait_for(lambda: len(handed) == 1, 5, "the probe")
    (probe,) = handed
    gates.dropped(probe)  # its job left the config before a poller took it
    await wait_for(lambda: len(handed) == 2, 5, "another probe")
    assert handed[1] is not probe
    gates.ended(handed[1], None)  # it was answered: the source is polled again
    now = loop.time()
    assert gates.admit(Entry("later", 1.0, now, now), now)
    gates.close()


async def test_a_reload_that_removes_the_probes_job_leaves_the_source_polled(
    sim: Simulator,
    configs: ConfigWriter,
    running_daemon: Callable[[Config], Daemon],
) -> None:
    """A 429 pauses the source while another job's poll waits for the pause to end; a
    reload removes both jobs and adds a third. When the pause ends the waiting poll of a
    removed job is the probe and is dropped: the probe passes to the new job, which is
    polled (the source is never left paused for good)."""
    sim.add(SimJob("says-stop", [http_error(429, "APIG.0308", "throttled", retry_after=3)]))
    sim.add(SimJob("waits", [running(0.2)]))
    sim.add(SimJob("new", [running(0.5)]))
    daemon_keys = {"poll_interval": "500ms", "retries": 0}
    cfg = configs.load(["says-stop", "waits"], daemon=daemon_keys)
    daemon = running_daemon(cfg)
    await wait_for(lambda: sim.polls("says-stop") >= 1, 20, "the 429")
    paused = time.monotonic()
    polled = sim.polls("waits")
    await asyncio.sleep(1.0)  # the next poll of "waits" came due: it waits for the pause
    assert sim.polls("waits") == polled
    configs.write(["new"], daemon=daemon_keys)
    daemon.reload()
    await wait_for(lambda: not daemon.reloading.is_set(), 10, "the reload")
    assert time.monotonic() < paused + 3, "the reload came after the pause"
    await wait_for(lambda: sim.polls("new") >= 2, 15, "the new job polled after the pause")
    assert sim.polls("waits") == polled and sim.polls("says-stop") == 1
