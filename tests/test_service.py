"""``jobherald run`` as a real process: signals, kill -9, restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobherald.simulator import SimJob, Simulator, failed, running, succeeded
from tests.conftest import ConfigWriter, Receiver, wait_for


class Running:
    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
async def daemons(tmp_path: Path) -> AsyncIterator[list[Running]]:
    started: list[Running] = []
    yield started
    for d in started:
        if d.proc.returncode is None:
            d.proc.kill()
            await d.proc.wait()


async def start(daemons: list[Running], config: Path) -> Running:
    log = config.parent / f"daemon-{len(daemons)}.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jobherald",
            "run",
            "-c",
            str(config),
            stdout=out,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    running_daemon = Running(proc, log)
    daemons.append(running_daemon)
    return running_daemon


def delivery_states(db: Path) -> list[str]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as conn:
            return [r[0] for r in conn.execute("select state from deliveries order by id")]
    except sqlite3.OperationalError:
        return []


async def test_sigterm_stops_the_daemon_cleanly_after_it_delivered(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, daemons: list[Running]
) -> None:
    sim.add(SimJob("a", [running(0.3), running(0.6), succeeded()], archive_id="arch"))
    sim.add(SimJob("b", [running(0.1), failed()]))
    sim.add(SimJob("c", [running(0.1)]))
    daemon = await start(daemons, configs.write(["a", "b", "c"], daemon={"poll_interval": "200ms"}))
    await wait_for(lambda: len(receiver.messages) == 2, 20, "two messages")
    polls_a = sim.polls("a")
    await wait_for(lambda: sim.polls("c") >= 6, 20, "more polls of the running job")
    assert sim.polls("a") == polls_a == 3
    assert await daemon.stop(signal.SIGTERM) == 0
    output = daemon.output()
    assert "stopping: finishing polls and deliveries in flight" in output
    assert "stopped after" in output
    assert "Traceback" not in output
    assert sim.token not in output
    for stored in configs.folder.glob("jobherald.db*"):
        assert sim.token.encode() not in stored.read_bytes()
    assert receiver.titles() == ["a succeeded", "b failed"]


async def test_sigint_also_stops_it_with_exit_0(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, daemons: list[Running]
) -> None:
    sim.add(SimJob("a", [running(0.3)]))
    daemon = await start(daemons, configs.write(["a"], daemon={"poll_interval": "200ms"}))
    await wait_for(lambda: sim.polls("a") >= 2, 20, "polls")
    assert await daemon.stop(signal.SIGINT) == 0


async def test_a_kill_before_delivery_loses_nothing_and_repeats_nothing(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, daemons: list[Running]
) -> None:
    sim.add(SimJob("a", [running(0.5), succeeded()]))
    sim.add(SimJob("b", [running(0.5), failed()]))
    sim.add(SimJob("c", [running(0.5)]))
    config = configs.write(["a", "b", "c"], daemon={"poll_interval": "200ms"})
    db = configs.folder / "jobherald.db"
    receiver.fail_with = 503
    first = await start(daemons, config)
    await wait_for(lambda: delivery_states(db) == ["pending", "pending"], 20, "queued deliveries")
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert receiver.messages == []
    polls = (sim.polls("a"), sim.polls("b"))

    receiver.fail_with = None
    second = await start(daemons, config)
    await wait_for(lambda: delivery_states(db) == ["delivered", "delivered"], 20, "deliveries")
    await wait_for(lambda: sim.polls("c") >= polls[0] + 3, 20, "polls after restart")
    assert await second.stop() == 0
    assert (sim.polls("a"), sim.polls("b")) == polls

    third = await start(daemons, config)
    await wait_for(lambda: "watching 1 jobs (2 already finished)" in third.output(), 20, "start")
    await asyncio.sleep(1.0)
    assert await third.stop() == 0
    assert receiver.titles() == ["a succeeded", "b failed"]
    assert (sim.polls("a"), sim.polls("b")) == polls


async def test_a_kill_after_delivery_sends_nothing_again(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, daemons: list[Running]
) -> None:
    sim.add(SimJob("a", [succeeded()]))
    sim.add(SimJob("c", [running(0.5)]))
    config = configs.write(["a", "c"], daemon={"poll_interval": "200ms"})
    db = configs.folder / "jobherald.db"
    first = await start(daemons, config)
    await wait_for(lambda: delivery_states(db) == ["delivered"], 20, "delivery")
    await first.stop(signal.SIGKILL)
    second = await start(daemons, config)
    before = sim.polls("c")
    await wait_for(lambda: sim.polls("c") >= before + 3, 20, "polls after restart")
    assert await second.stop() == 0
    assert receiver.titles() == ["a succeeded"]
    assert sim.polls("a") == 1


async def test_run_refuses_a_database_folder_that_does_not_exist(
    configs: ConfigWriter, daemons: list[Running]
) -> None:
    config = configs.write([], daemon={"database": "sqlite:///no/such/dir/jh.db"})
    daemon = await start(daemons, config)
    assert await asyncio.wait_for(daemon.proc.wait(), 20) == 1
    output = daemon.output()
    assert output.splitlines()[-1] == (
        f"jobherald: database folder {configs.folder}/no/such/dir does not exist"
    )
    assert "Traceback" not in output
