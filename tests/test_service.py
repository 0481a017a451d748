"""``jobherald run`` as a real process: signals, kill -9, restarts."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import pytest

from jobherald.sources.simulator import SimJob, Simulator, failed, http_error, running, succeeded
from tests.conftest import (
    ConfigWriter,
    NotifyListener,
    Receiver,
    Running,
    jobherald,
    spawn_daemon,
    start,
    wait_for,
)


def deliveries(db: Path) -> list[tuple[str, int]]:
    """Each delivery's state and attempts, in order."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("select state, attempts from deliveries order by id")
            return [(state, attempts) for state, attempts in rows]
    except sqlite3.OperationalError:
        return []


def delivery_states(db: Path) -> list[str]:
    return [state for state, _ in deliveries(db)]


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
    await wait_for(lambda: deliveries(db) == [("pending", 1)] * 2, 20, "one failed attempt each")
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert receiver.messages == []
    polls = (sim.polls("a"), sim.polls("b"))

    with sqlite3.connect(db) as conn:  # each failed once, and waits for its next attempt
        rows = conn.execute("select attempts, next_attempt_at > datetime('now') from deliveries")
        assert rows.fetchall() == [(1, 1), (1, 1)]
    receiver.fail_with = None
    # The endpoint is mended: the operator sends what waits now, rather than at its time.
    code, _, err = await jobherald("deliveries", "retry", "--all", "-c", str(config))
    assert code == 0, err
    second = await start(daemons, config)
    await wait_for(lambda: delivery_states(db) == ["delivered", "delivered"], 20, "deliveries")
    await wait_for(lambda: sim.polls("c") >= polls[0] + 3, 20, "polls after restart")
    assert await second.stop() == 0
    assert (sim.polls("a"), sim.polls("b")) == polls

    third = await start(daemons, config)
    await wait_for(lambda: "watching 1 job (2 already finished)" in third.output(), 20, "start")
    await asyncio.sleep(1.0)
    assert await third.stop() == 0
    assert receiver.titles() == ["a succeeded", "b failed"]
    assert (sim.polls("a"), sim.polls("b")) == polls


async def test_a_kill_during_a_send_leaves_no_claim_behind_for_the_next_daemon(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, daemons: list[Running]
) -> None:
    sim.add(SimJob("a", [succeeded()]))
    config = configs.write(["a"], daemon={"poll_interval": "200ms"})
    db = configs.folder / "jobherald.db"
    receiver.delay = 5  # the first daemon's send hangs: its delivery stays claimed
    first = await start(daemons, config)
    await wait_for(lambda: len(receiver.attempts) == 1, 20, "the first send")
    with sqlite3.connect(db) as conn:
        assert conn.execute(
            "select count(*) from deliveries where claimed_by is not null"
        ).fetchone() == (1,)
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    receiver.delay = 0
    second = await start(daemons, config)
    # Sent by the next daemon as soon as it starts, not after the dead one's lease or claim.
    await wait_for(lambda: delivery_states(db) == ["delivered"], 10, "the delivery")
    assert await second.stop() == 0
    assert receiver.titles() == ["a succeeded"]


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
    folder = f"{configs.folder}/no/such/dir"
    assert output.splitlines()[-1] == (
        f"jobherald: database folder {folder} does not exist: create it (install -d -m 0700 "
        f"{folder}), or start jobherald.service once, which makes its own"
    )
    assert "Traceback" not in output


async def test_sighup_reloads_jobs_under_the_same_process(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, daemons: list[Running]
) -> None:
    sim.add(SimJob("a", [running(0.3)]))
    sim.add(SimJob("b", [running(0.3)]))
    sim.add(SimJob("c", [running(0.2), succeeded()]))
    config = configs.write(
        ["a", "b"], daemon={"poll_interval": "200ms", "include": ["jobs.d/*.toml"]}
    )
    (configs.folder / "jobs.d").mkdir()
    daemon = await start(daemons, config)
    await wait_for(lambda: sim.polls("b") >= 2, 20, "polls of b")
    configs.write(["a"], daemon={"poll_interval": "200ms", "include": ["jobs.d/*.toml"]})
    (configs.folder / "jobs.d" / "c.toml").write_text('[[jobs]]\nid = "c"\nsource = "roma"\n')
    daemon.proc.send_signal(signal.SIGHUP)
    await wait_for(lambda: receiver.titles() == ["c succeeded"], 20, "the new job's message")
    polls_b = sim.polls("b")
    await asyncio.sleep(1.0)
    assert sim.polls("b") == polls_b, "a removed job is not polled"
    assert daemon.proc.returncode is None
    assert await daemon.stop() == 0
    assert "reloaded" in daemon.output()


async def test_a_bad_reload_keeps_the_running_config(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, daemons: list[Running]
) -> None:
    sim.add(SimJob("a", [running(0.3)]))
    config = configs.write(["a"], daemon={"poll_interval": "200ms"})
    daemon = await start(daemons, config)
    await wait_for(lambda: sim.polls("a") >= 2, 20, "polls")
    config.write_text(config.read_text() + '\n[[jobs]]\nid = "x"\nsource = "nowhere"\n')
    daemon.proc.send_signal(signal.SIGHUP)
    await wait_for(lambda: "reload refused" in daemon.output(), 20, "the refusal")
    before = sim.polls("a")
    await wait_for(lambda: sim.polls("a") >= before + 3, 20, "polls after the refusal")
    assert await daemon.stop() == 0
    assert (
        f"reload refused: {config}: jobs[1] (id 'x').source: unknown source 'nowhere' (known: roma)"
        in daemon.output()
    )


async def test_systemd_hears_ready_status_watchdog_reloading_and_stopping(
    sim: Simulator,
    receiver: Receiver,
    configs: ConfigWriter,
    daemons: list[Running],
    tmp_path: Path,
) -> None:
    sim.add(SimJob("a", [running(0.3)]))
    sim.add(SimJob("b", [http_error(503)]))
    listener = NotifyListener(tmp_path)
    drain, heard, address = listener.drain, listener.heard, listener.address

    config = configs.write(["a", "b"], daemon={"poll_interval": "200ms", "retries": 0})
    log = config.parent / "notify.log"
    proc = await spawn_daemon(
        config,
        log,
        env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000", "JOURNAL_STREAM": "8:1234"},
    )
    daemons.append(Running(proc, log))
    try:
        await wait_for(lambda: any("WATCHDOG=1" in m for m in drain()), 20, "a watchdog ping")
        proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: any(m.startswith("RELOADING=1") for m in drain()), 20, "reloading")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        drain()
    finally:
        listener.close()
    assert heard[0].startswith("READY=1\nSTATUS=watching 2 jobs")
    reloading = next(m for m in heard if m.startswith("RELOADING=1"))
    assert reloading.split("\n")[1].startswith("MONOTONIC_USEC=")
    after = heard[heard.index(reloading) + 1]
    assert after.startswith("READY=1")
    assert any(m.startswith("STOPPING=1") for m in heard)
    statuses = [line for m in heard for line in m.split("\n") if line.startswith("STATUS=watching")]
    assert any(
        s.startswith("STATUS=watching 2 jobs: 1 pending, 1 running, 1 failing; last poll ")
        for s in statuses
    )
    lines = log.read_text().splitlines()
    assert lines and all(line.startswith(("<6>", "<4>", "<3>")) for line in lines)
    assert not any(line[3:5] == "20" for line in lines), "no timestamps under journald"


@pytest.mark.parametrize("socket_path", [None, "/run/nobody-listens-here"])
async def test_without_a_listening_notify_socket_the_daemon_runs_quietly(
    sim: Simulator, configs: ConfigWriter, daemons: list[Running], socket_path: str | None
) -> None:
    sim.add(SimJob("a", [running(0.3)]))
    config = configs.write(["a"], daemon={"poll_interval": "200ms", "log_level": "debug"})
    daemon = await start(
        daemons, config, env={"NOTIFY_SOCKET": socket_path, "WATCHDOG_USEC": "500000"}
    )
    await wait_for(lambda: sim.polls("a") >= 5, 20, "polls")
    assert await daemon.stop() == 0
    output = daemon.output()
    problems = [line for line in output.splitlines() if " WARNING " in line or " ERROR " in line]
    assert problems == [], output
    # A socket that is set but gone is tried (and said at debug level); an unset one is not.
    assert ("sd_notify failed" in output) == (socket_path is not None), output


async def test_poll_times_of_unchanged_polls_are_written_at_shutdown_not_per_poll(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, daemons: list[Running]
) -> None:
    sim.add(SimJob("a", [running(0.3)]))
    config = configs.write(["a"], daemon={"poll_interval": "200ms"})
    db = config.parent / "jobherald.db"

    def last_polled() -> str | None:
        with sqlite3.connect(db) as conn:
            row = conn.execute("select last_polled_at from jobs where id = 'a'").fetchone()
            return None if row is None else row[0]

    daemon = await start(daemons, config)
    await wait_for(lambda: sim.polls("a") >= 2, 20, "the first polls")
    first = last_polled()  # written with the first poll's change (pending -> running)
    assert first is not None
    polls = sim.polls("a")
    await wait_for(lambda: sim.polls("a") >= polls + 5, 20, "five more polls")
    assert last_polled() == first  # polls that change nothing write no row
    assert await daemon.stop() == 0
    final = last_polled()
    assert final is not None and final > first  # the latest poll time, written at shutdown


async def test_a_sigterm_during_start_up_stops_the_daemon_cleanly_once_started(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, daemons: list[Running]
) -> None:
    sim.add(SimJob("a", [running(0.3)]))
    daemon = await start(daemons, configs.write(["a"]))
    await wait_for(lambda: "starting: config" in daemon.output(), 20, "the first log line")
    assert await daemon.stop() == 0  # before the database is open and the pollers run
    assert "stopped after" in daemon.output()
