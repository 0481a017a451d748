"""Scheduled reports: on their cron, once per scheduled time across replicas and
restarts, with what the window held; real daemons against the simulator, their clocks set
a few seconds before a minute's end (a report due every minute is seen in seconds)."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jobherald import config as config_module
from jobherald.config import Config
from jobherald.service import Daemon
from jobherald.sources.simulator import SimJob, Simulator, failed, running, succeeded
from tests.conftest import ConfigWriter, Receiver, jobherald, wait_for

MINUTELY = {"cron": "* * * * *", "timezone": "UTC", "notifiers": ["ops"]}


class Shifted:
    """A clock that runs with the wall clock, moved by ``offset`` (set it to put the
    daemon just before a minute's end)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    @classmethod
    def at(cls, when: datetime) -> Shifted:
        """A clock that reads ``when`` now."""
        clock = cls()
        clock.offset = when - datetime.now(UTC)
        return clock

    def before_next_minute(self, seconds: float) -> datetime:
        """Move to ``seconds`` before the next whole minute (by this clock); return it."""
        now = self()
        boundary = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
        if (boundary - now).total_seconds() < seconds + 1:
            boundary += timedelta(minutes=1)
        self.offset += boundary - timedelta(seconds=seconds) - now
        return boundary


class Daemons:
    """Daemons run in this process, each on its own clock; stopped at the end."""

    def __init__(self) -> None:
        self.tasks: dict[int, tuple[Daemon, asyncio.Task[None]]] = {}

    def __call__(self, cfg: Config, clock: Shifted) -> Daemon:
        daemon = Daemon(cfg, clock)
        self.tasks[id(daemon)] = (daemon, asyncio.create_task(daemon.run()))
        return daemon

    async def stop(self, daemon: Daemon) -> None:
        daemon.stop()
        await asyncio.wait_for(self.tasks.pop(id(daemon))[1], 30)


@pytest.fixture
async def daemons() -> AsyncIterator[Daemons]:
    running = Daemons()
    yield running
    for daemon, _ in list(running.tasks.values()):
        await running.stop(daemon)


def report_config(configs: ConfigWriter, ids: list[str], **extra: Any) -> str:
    configs.extra = ["[reports.minutely]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in {**MINUTELY, **extra}.items()
    )]  # fmt: skip
    return str(configs.write(ids, daemon={"poll_interval": "300ms"}))


def reports_of(receiver: Receiver) -> list[dict[str, Any]]:
    return [m for m in receiver.messages if m["title"].startswith("Report ")]


async def test_a_report_due_every_minute_tells_what_its_window_held_once_a_minute(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, daemons: Daemons
) -> None:
    ids = ["ok-1", "ok-2", "broke"]
    jobs = [
        sim.add(SimJob(i, [running(0.3), failed() if i == "broke" else succeeded()], finish_at=math.inf))
        for i in ids
    ]  # fmt: skip
    path = report_config(configs, ids)
    clock = Shifted()
    daemon = daemons(config_module.load(path), clock)
    await wait_for(lambda: daemon.ready, 20, "the daemon")
    first = clock.before_next_minute(12)
    for job in jobs:
        job.finish_at = time.monotonic()
    await wait_for(lambda: len(reports_of(receiver)) >= 1, 30, "the first report")
    (report,) = reports_of(receiver)
    assert report["title"] == "Report minutely: 2 succeeded, 1 failed"
    assert "2 succeeded, 1 failed; the window before: 0 succeeded, 0 failed." in report["message"]
    assert "broke: " in report["message"]
    # The counts are what `history` says ended in the window (the minute before `first`).
    ended = 0
    for job_id in ids:
        code, out, _ = await jobherald("history", job_id, "--json", "-c", path)
        assert code == 0
        ends = [t for t in json.loads(out) if t["to"] in ("succeeded", "failed")]
        at = datetime.fromisoformat(ends[-1]["at"].replace("Z", "+00:00"))
        assert first - timedelta(minutes=1) <= at < first
        ended += 1
    assert ended == 3
    # A minute on (the clock moved to just before the next one): the next report, of that
    # minute alone, in which nothing ended.
    clock.before_next_minute(6)
    await wait_for(lambda: len(reports_of(receiver)) >= 2, 30, "the second report")
    await asyncio.sleep(6)  # looked at again since: nothing more
    titles = [r["title"] for r in reports_of(receiver)]
    assert titles == ["Report minutely: 2 succeeded, 1 failed", "Report minutely: nothing finished"]
    metrics = daemon.metrics.render().decode()
    assert 'jobherald_reports_sent_total{report="minutely"} 2.0' in metrics
    code, out, _ = await jobherald("reports", "--json", "-c", path)
    (listed,) = json.loads(out)
    assert listed["name"] == "minutely" and listed["last_sent"] is True
    code, out, _ = await jobherald("deliveries", "--all", "--json", "-c", path)
    assert sum(1 for d in json.loads(out) if d["kind"] == "report") == 2


async def sent_once_then_stopped(path: str, receiver: Receiver, daemons: Daemons) -> datetime:
    """A daemon whose clock is moved to just before a minute's end sends that minute's
    report and is stopped; returns that minute."""
    clock = Shifted()
    daemon = daemons(config_module.load(path), clock)
    await wait_for(lambda: daemon.ready, 20, "the daemon")
    first = clock.before_next_minute(4)
    await wait_for(lambda: len(reports_of(receiver)) >= 1, 30, "the first report")
    await daemons.stop(daemon)
    return first


async def test_a_run_missed_while_stopped_goes_once_at_start_within_misfire_grace(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, daemons: Daemons
) -> None:
    path = report_config(configs, [], misfire_grace="2m")
    first = await sent_once_then_stopped(path, receiver, daemons)
    # Down across the next run, back 30 s after it (within misfire_grace): sent once.
    daemons(config_module.load(path), Shifted.at(first + timedelta(minutes=1, seconds=30)))
    await wait_for(lambda: len(reports_of(receiver)) >= 2, 30, "the missed report")
    await asyncio.sleep(6)
    assert len(reports_of(receiver)) == 2
    code, out, _ = await jobherald("reports", "--json", "-c", path)
    assert code == 0
    (listed,) = json.loads(out)
    assert listed["last_run"] == (first + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")


async def test_a_run_missed_by_more_than_misfire_grace_is_said_and_not_sent(
    sim: Simulator,
    receiver: Receiver,
    configs: ConfigWriter,
    daemons: Daemons,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = report_config(configs, [], misfire_grace="10s")
    first = await sent_once_then_stopped(path, receiver, daemons)
    daemons(config_module.load(path), Shifted.at(first + timedelta(minutes=1, seconds=30)))
    await wait_for(lambda: "was missed" in caplog.text, 30, "the missed run said")
    await asyncio.sleep(2)
    assert len(reports_of(receiver)) == 1


async def test_report_prints_what_send_sends(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    path = report_config(configs, [], window="1h")
    code, printed, err = await jobherald("report", "minutely", "-c", path)
    assert code == 0, err
    code, sent, err = await jobherald("report", "minutely", "--send", "-c", path)
    assert code == 0, err
    # What was sent is what --send printed; and what `report` printed a moment before,
    # but for the window's times (a minute may have turned in between).
    (message,) = receiver.messages
    assert f"{message['title']}\n\n{message['message']}\n" == sent

    def timeless(text: str) -> str:
        return re.sub(r"From \S+ \S+ to \S+ \S+", "From ... to ...", text)

    assert timeless(sent) == timeless(printed) and "From " in printed
    code, _, err = await jobherald("report", "nightly", "-c", path)
    assert code == 2 and "unknown report 'nightly' (known: minutely)" in err


async def test_check_config_refuses_a_bad_cron_and_a_template_that_loops(
    configs: ConfigWriter,
) -> None:
    path = report_config(
        configs,
        [],
        cron="0 7 * *",
        notifiers=["ops", "pager"],
        body="{% for i in range(10**9) %}{% for j in range(10**9) %}x{% endfor %}{% endfor %}",
    )
    code, _, err = await jobherald("check-config", "-c", path, timeout=60)
    assert code == 2
    lines = err.splitlines()
    assert lines[0].startswith(f"{path}: reports.minutely.cron: '0 7 * *': ")
    assert lines[0].endswith('(five fields: minute hour day month weekday, e.g. "0 7 * * 1-5")')
    assert lines[1] == (
        f"{path}: reports.minutely.notifiers[1]: unknown notifier 'pager' (known: ops)"
    )
    assert lines[2].startswith(f"{path}: reports.minutely.body: template ")
    assert len(lines) == 3


@pytest.mark.timeout(120)
async def test_two_replicas_on_postgres_send_each_report_once(
    postgres: str, sim: Simulator, receiver: Receiver, configs: ConfigWriter, daemons: Daemons
) -> None:
    configs.extra = ["[reports.minutely]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in MINUTELY.items()
    )]  # fmt: skip
    clock = Shifted()
    replicas = []
    for name in ("a", "b"):
        settings = {"database": postgres, "poll_interval": "300ms", "lease": "4s", "replica": name}
        replicas.append(daemons(configs.load([], daemon=settings), clock))
    await wait_for(lambda: all(d.ready for d in replicas), 30, "two replicas")
    clock.before_next_minute(8)
    await wait_for(lambda: len(reports_of(receiver)) >= 1, 30, "the report")
    await asyncio.sleep(6)  # both have looked again since
    assert [r["title"] for r in reports_of(receiver)] == ["Report minutely: nothing finished"]
    sent = sum(int(d.metrics.reports_sent.labels("minutely")._value.get()) for d in replicas)
    assert sent == 1


async def test_a_report_tells_new_failures_slow_runs_late_jobs_and_sources_in_error(
    tmp_path: Any,
) -> None:
    """A day of history written into a real SQLite database as the daemon writes it; the
    report of that day says each part of it."""
    import sqlalchemy as sa

    from jobherald.notify.reports import default_report, report_data
    from jobherald.quiet import zone_named
    from jobherald.store import Store
    from jobherald.store.schema import durations, events, jobs, source_health, transitions

    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'jobherald.db'}")
    end = datetime(2026, 12, 8, 7, 0, tzinfo=UTC)
    start = end - timedelta(days=1)
    h = timedelta(hours=1)

    def job(
        key: str, name: str, state: str, began: datetime, ended: datetime | None
    ) -> dict[str, Any]:
        reasons = [
            {
                "resource_type": "task",
                "resource_name": "sync",
                "error_code": "E1",
                "error_msg": "broke",
            }
        ]
        return {
            "id": key, "name": name, "source": "roma", "instance_id": "i", "configured": True,
            "state": state, "created_at": began, "begin_time": began, "end_time": ended,
            "running_since": began, "reasons": json.dumps(reasons) if state == "failed" else None,
        }  # fmt: skip

    rows = [
        job("old-export", "export", "succeeded", start - 3 * h, start - 2 * h),
        job("export-2", "export", "failed", start + h, start + 2 * h),  # new: the last succeeded
        job("import-1", "import", "failed", start - 5 * h, start - 4 * h),
        job("import-2", "import", "failed", start + 3 * h, start + 4 * h),  # failed before too
        job("backup-1", "backup", "succeeded", start + 2 * h, start + 7 * h),  # 5h, usually 1h
        job("sync-9", "sync", "running", end - 5 * h, None),  # running 5h+, usually 2h
    ]
    async with store.engine.begin() as conn:
        await conn.execute(sa.insert(jobs), rows)
        await conn.execute(
            sa.insert(transitions),
            [
                {"job_id": r["id"], "at": r["end_time"], "from_state": "running", "to_state": r["state"]}
                for r in rows
                if r["end_time"] is not None
            ],
        )  # fmt: skip
        await conn.execute(
            sa.insert(durations),
            [{"name": "backup", "source": "roma", "job_id": f"b{i}", "seconds": 3600.0, "at": start - i * h} for i in range(1, 4)]
            + [{"name": "sync", "source": "roma", "job_id": f"s{i}", "seconds": 7200.0, "at": start - i * h} for i in range(1, 4)],
        )  # fmt: skip
        for kind, at in (
            ("error", start + 4 * h),
            ("recovered", start + 4 * h + timedelta(minutes=35)),
        ):
            payload = {"source": {"name": "roma", "error": "HTTP 503"}}
            await conn.execute(
                sa.insert(events).values(
                    id=f"{kind}-event", job_id=None, source="roma", kind=kind, at=at, payload=json.dumps(payload)
                )
            )  # fmt: skip
        await conn.execute(sa.insert(source_health).values(source="roma", error=None))
    cfg_report = config_module.Report(
        name="morning", cron="0 7 * * *", zone=zone_named("UTC"), notifiers=("ops",)
    )
    try:
        data = await report_data(store, cfg_report, start, end, end, "https://jobs.example.com")
    finally:
        await store.close()
    assert data["counts"] == {"succeeded": 1, "failed": 2}
    assert data["before"] == {"succeeded": 1, "failed": 1, "lost": 0}
    assert [(f["name"], f["new"]) for f in data["failed"]] == [("export", True), ("import", False)]
    assert data["failed"][0]["url"] == "https://jobs.example.com/jobs/export-2"
    assert [(s["name"], s["seconds"], s["typical"]) for s in data["slowest"]] == [
        ("backup", 5 * 3600.0, 3600.0)
    ]
    assert [(o["name"], o["typical"]) for o in data["overdue"]] == [("sync", 7200.0)]
    assert data["sources"] == [{"name": "roma", "seconds": 35 * 60.0, "error": "HTTP 503"}]
    text = default_report(data, zone_named("UTC"), "text").body
    assert "- export: task sync: E1: broke (new) https://jobs.example.com/jobs/export-2" in text
    assert "- backup 5h, usually 1h" in text
    assert "- roma: 35m (HTTP 503)" in text


@pytest.mark.timeout(150)
async def test_kill_9_during_a_reports_send_repeats_it_at_most_once(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    """A daemon in a process of its own, killed while its report is being sent (the
    receiver takes 3 s to answer): after a restart the report comes again, once."""
    import signal
    import sqlite3

    from tests.conftest import spawn_daemon

    path = Path(report_config(configs, []))
    receiver.delay = 3.0
    log = configs.folder / "daemon.log"
    proc = await spawn_daemon(path, log)
    try:
        await wait_for(lambda: "watching 0 jobs" in log.read_text(), 30, "the daemon")
        # Its first report comes at the next minute's start.
        await wait_for(lambda: len(receiver.attempts) >= 1, 75, "the report's send")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        proc = await spawn_daemon(path, log)
        await wait_for(lambda: len(reports_of(receiver)) >= 1, 40, "the report sent again")
        await asyncio.sleep(4)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # Tried twice (the first cut off by the kill, its answer never read): received once,
    # or twice had the receiver taken the first whole; never more.
    assert len(receiver.attempts) == 2
    titles = [r["title"] for r in reports_of(receiver)]
    assert titles in (["Report minutely: nothing finished"] * n for n in (1, 2))
    with sqlite3.connect(configs.folder / "jobherald.db") as conn:
        runs = conn.execute("select count(*) from report_runs").fetchone()[0]
        sent = conn.execute(
            "select state from deliveries join events on events.id = deliveries.event_id "
            "where events.kind = 'report'"
        ).fetchall()
    assert sent == [("delivered",)] and runs == 1
