"""kill -9, again and again, while dozens of jobs finish: nothing is lost, duplicates only mid-send."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from jobherald.simulator import SimJob, Simulator, failed, running, succeeded
from tests.conftest import ConfigWriter, Receiver, spawn_daemon, wait_for

JOBS = 36
KILLS = 6


def sent_events(db: Path) -> tuple[set[str], list[str]]:
    """The ids of events that have deliveries, and the states of those deliveries."""
    try:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("select event_id, state from deliveries").fetchall()
    except sqlite3.OperationalError:
        return set(), []
    return {r[0] for r in rows}, [r[1] for r in rows]


@pytest.mark.timeout(180)
async def test_repeated_kills_lose_nothing_and_repeat_only_what_was_in_flight(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    rng = random.Random(7)
    for i in range(JOBS):
        steps = [running(0.1 * k) for k in range(1 + i % 12)]
        sim.add(SimJob(f"j{i:02d}", [*steps, failed() if i % 5 == 0 else succeeded()]))
    receiver.delay = 0.05  # keep sends in flight long enough for some kills to land on them
    config = configs.write([f"j{i:02d}" for i in range(JOBS)], daemon={"poll_interval": "150ms"})
    db = configs.folder / "jobherald.db"
    log = configs.folder / "daemon.log"
    kills: list[float] = []
    for _ in range(KILLS):
        proc = await spawn_daemon(config, log)
        await asyncio.sleep(rng.uniform(0.8, 2.0))
        proc.send_signal(signal.SIGKILL)
        kills.append(time.monotonic())
        await proc.wait()
    starts = log.read_text().count("watching ")
    proc = await spawn_daemon(config, log)
    try:
        # The last daemon must be up (its signal handlers in place) before it is asked to stop.
        await wait_for(lambda: log.read_text().count("watching ") > starts, 30, "the last start")

        def all_delivered() -> bool:
            events, states = sent_events(db)
            return len(events) == JOBS and all(s == "delivered" for s in states)

        await wait_for(all_delivered, 90, "every event delivered")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    events, _ = sent_events(db)
    received = [m["message"].rsplit("event ", 1)[1] for m in receiver.messages]
    assert set(received) == events, "every event reached the receiver"
    counts = Counter(received)
    duplicates = [event_id for event_id, n in counts.items() if n > 1]
    first_seen: dict[str, float] = {}
    for event_id, at in zip(received, receiver.received_at, strict=True):
        first_seen.setdefault(event_id, at)
    for event_id in duplicates:
        # A duplicate is only possible when a kill landed between the receiver taking
        # the message and the daemon marking it delivered.
        assert any(0 <= k - first_seen[event_id] < 1.0 for k in kills), event_id
    assert len(duplicates) <= KILLS * 8
    outcome = {
        event_id: m["title"].split()[1]
        for event_id, m in zip(received, receiver.messages, strict=True)
    }
    assert Counter(outcome.values()) == {"succeeded": JOBS - JOBS // 5 - 1, "failed": JOBS // 5 + 1}
    print(
        f"chaos: {KILLS} kills, {len(received)} messages, {len(events)} events, {len(duplicates)} repeated"
    )
