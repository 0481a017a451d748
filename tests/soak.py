"""kill -9, cycle after cycle, while jobs finish throughout: what is lost, what repeats.

``python -m tests.soak --cycles 100`` (``make soak``) prints the figures; the test suite
runs 10 cycles (tests/test_chaos.py). Each cycle starts ``jobherald run``, lets it work
0.8-2 s and kills it with SIGKILL. Jobs finish all along; every finished job's event
goes to two notifiers: one that works, and one whose endpoint always fails (its retries
must never hold back the working one's messages). At the end one daemon runs until
every event reached the working notifier, and stops with SIGTERM.

A repeated message is expected only "in flight": when a kill landed within a second of
the receiver taking the message, before the daemon could mark it delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import sqlite3
import statistics
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jobherald.sources.simulator import SimJob, Simulator, failed, running, succeeded
from tests.conftest import Receiver, carried, spawn_daemon, wait_for

# A daemon's life in a cycle, on average; polls per second kept to what this machine
# answers easily (the poll interval grows with the number of jobs).
LIFE = 1.4
POLL_RATE = 600
IN_FLIGHT = 1.0


@dataclass
class SoakReport:
    cycles: int
    jobs: int
    events: int
    messages: int
    lost: int
    repeated: int
    repeated_outside_flight: int
    wrong_outcome: int
    delay_p50: float
    delay_max: float
    later_than_15s: int
    dead_attempts: int
    seconds: float

    def line(self) -> str:
        return (
            f"soak: {self.cycles} kill -9 cycles in {self.seconds:.0f}s, {self.jobs} jobs, "
            f"{self.events} events, {self.messages} messages; lost {self.lost}, "
            f"repeated {self.repeated} ({self.repeated_outside_flight} outside the in-flight "
            f"window), wrong outcome {self.wrong_outcome}; job end to message p50 "
            f"{self.delay_p50:.1f}s, max {self.delay_max:.1f}s, {self.later_than_15s} later "
            f"than 15s; "
            f"{self.dead_attempts} attempts to the failing endpoint"
        )


def _rows(db: Path, query: str) -> list[tuple[object, ...]]:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute(query).fetchall()
    except sqlite3.OperationalError:
        return []


async def soak(cycles: int, folder: Path, seed: int = 7) -> SoakReport:
    """Run the cycles against a simulator and a receiver of its own; report."""
    began = time.monotonic()
    rng = random.Random(seed)
    sim, receiver = Simulator(), Receiver()
    await sim.start()
    await receiver.start()
    try:
        return await _soak(cycles, folder, rng, sim, receiver, began)
    finally:
        await sim.stop()
        await receiver.stop()


async def _soak(
    cycles: int,
    folder: Path,
    rng: random.Random,
    sim: Simulator,
    receiver: Receiver,
    began: float,
) -> SoakReport:
    jobs = max(12, cycles * 3)
    interval = max(0.15, jobs / POLL_RATE)
    polls_per_cycle = LIFE / interval  # each job's: jobs end all along the run
    expected: dict[str, str] = {}
    for i in range(jobs):
        steps = 1 + int(i * cycles * polls_per_cycle) // jobs
        outcome = "failed" if i % 5 == 0 else "succeeded"
        last = failed() if outcome == "failed" else succeeded()
        sim.add(SimJob(f"j{i:03d}", [*(running(min(0.99, k / steps)) for k in range(steps)), last]))
        expected[f"j{i:03d}"] = outcome
    receiver.delay = 0.05  # sends stay in flight long enough for some kills to land on them
    receiver.fail_paths["/dead"] = 503
    config = folder / "config.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [daemon]
            database = "sqlite:///jobherald.db"
            poll_interval = "{interval:.2f}s"
            shutdown_timeout = "5s"

            [http]
            listen = ""

            [sources.roma]
            type = "roma-connect"
            endpoint = "{sim.url}"
            project_id = "{sim.project_id}"
            instance_id = "{next(iter(sim.instances))}"
            token = "{sim.token}"

            [notifiers.live]
            urls = ["{receiver.url("live")}"]
            on = ["succeeded", "failed"]

            [notifiers.dead]
            urls = ["{receiver.url("dead")}"]
            on = ["succeeded", "failed"]
            """
        )
        + "".join(f'\n[[jobs]]\nid = "{job_id}"\nsource = "roma"\n' for job_id in expected),
        encoding="utf-8",
    )
    db = folder / "jobherald.db"
    log = folder / "daemon.log"
    kills: list[float] = []
    for _ in range(cycles):
        proc = await spawn_daemon(config, log)
        await asyncio.sleep(rng.uniform(0.8, 2.0))
        proc.send_signal(signal.SIGKILL)
        kills.append(time.monotonic())
        await proc.wait()
    starts = log.read_text().count("watching ")
    proc = await spawn_daemon(config, log)
    try:
        await wait_for(lambda: log.read_text().count("watching ") > starts, 30, "the last start")

        def all_delivered() -> bool:
            done = _rows(
                db,
                "select count(*) from deliveries where notifier = 'live' and state = 'delivered'",
            )
            return bool(done) and done[0][0] == len(expected)

        await wait_for(all_delivered, 60 + 10 * cycles, "every event delivered to live")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    events = {
        str(event_id): (str(job_id), str(kind), str(at))
        for event_id, job_id, kind, at in _rows(
            db, "select id, job_id, kind, at from events where kind in ('succeeded', 'failed')"
        )
    }
    live = [
        (event_id, at)
        for m, path, at in zip(receiver.messages, receiver.paths, receiver.received_at, strict=True)
        if path == "/live"
        for event_id in carried(m["message"])
    ]
    counts = Counter(event_id for event_id, _ in live)
    first_seen: dict[str, float] = {}
    for event_id, at in live:
        first_seen.setdefault(event_id, at)
    repeated = [e for e, n in counts.items() if n > 1]
    outside = [e for e in repeated if not any(0 <= k - first_seen[e] < IN_FLIGHT for k in kills)]
    per_job = Counter(job_id for job_id, _, _ in events.values())
    wrong = sum(
        1
        for job_id, outcome in expected.items()
        if per_job[job_id] != 1
        or not any(j == job_id and k == outcome for j, k, _ in events.values())
    )
    # Wall time of a receipt: its monotonic stamp moved onto the wall clock.
    offset = time.time() - time.monotonic()
    delays = [
        first_seen[e]
        + offset
        - datetime.fromisoformat(events[e][2]).replace(tzinfo=UTC).timestamp()
        for e in first_seen
        if e in events
    ]
    return SoakReport(
        cycles=cycles,
        jobs=len(expected),
        events=len(events),
        messages=len(live),
        lost=len(set(events) - set(counts)) + max(0, len(expected) - len(events)),
        repeated=len(repeated),
        repeated_outside_flight=len(outside),
        wrong_outcome=wrong,
        delay_p50=statistics.median(delays) if delays else 0.0,
        delay_max=max(delays, default=0.0),
        later_than_15s=sum(1 for d in delays if d > 15.0),
        dead_attempts=receiver.attempts.count("/dead"),
        seconds=time.monotonic() - began,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    # A killed daemon drops its connections mid-request: the fakes need not say so.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="jobherald-soak-") as folder:
        report = asyncio.run(soak(args.cycles, Path(folder), args.seed))
    print(report.line())
    print(json.dumps(report.__dict__))
    ok = report.lost == 0 and report.repeated_outside_flight == 0 and report.wrong_outcome == 0
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
