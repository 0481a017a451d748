"""The daemon end to end, mostly one pass at a time: simulator → store → apprise → receiver."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from pathlib import Path

from jobherald.service import Daemon
from jobherald.sources.simulator import (
    Answer,
    SimJob,
    Simulator,
    failed,
    http_error,
    running,
    succeeded,
)
from tests.conftest import Clock, ConfigWriter, Receiver, jobherald, wait_for

REASONS = [
    {
        "resource_type": "application",
        "resource_name": "orders-app",
        "error_code": "ROMA.00110027",
        "error_msg": "name taken",
    },
    {
        "resource_type": "task",
        "resource_name": "sync-orders",
        "error_code": "ROMA.00110104",
        "error_msg": "no data source",
    },
]


def mixed_jobs(sim: Simulator) -> None:
    sim.add(SimJob("exp", [running(0.5), succeeded()], archive_id="arch-77"))
    sim.add(
        SimJob(
            "imp",
            [running(0.5, "Running"), failed("Failed", reasons_key="reason")],
            type="importAsset",
            reasons=REASONS,
        )
    )
    sim.add(SimJob("slow", [running(0.1), running(0.2)]))
    sim.add(SimJob("odd", [Answer(status="Queued")]))
    sim.add(SimJob("broken", [http_error(500, "APIG.9999", "internal error")]))


def rows(db: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(query).fetchall()


async def test_each_finished_job_gives_one_message_per_notifier(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    mixed_jobs(sim)
    cfg = configs.load(
        [{"id": "exp", "name": "nightly export"}, "imp", "slow", "odd", "broken", "gone"],
        notifiers={
            "ops": {"urls": [receiver.url("ops")]},
            "audit": {"urls": [receiver.url("audit")], "on": ["failed"]},
        },
    )
    for _ in range(3):
        await Daemon(cfg).run_once()
    assert receiver.titles("ops") == ["gone lost", "imp failed", "nightly export succeeded"]
    assert receiver.titles("audit") == ["imp failed"]
    assert len(set(receiver.event_ids())) == 3


async def test_messages_carry_what_a_person_needs(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    mixed_jobs(sim)
    cfg = configs.load([{"id": "exp", "name": "nightly export"}, "imp"])
    await Daemon(cfg).run_once()
    await Daemon(cfg).run_once()
    by_title = {m["title"]: m for m in receiver.messages}
    ok = by_title["nightly export succeeded"]
    assert ok["type"] == "success"
    assert "id: exp" in ok["message"]
    assert "type: exportAsset" in ok["message"]
    assert "duration: 4m 12s" in ok["message"]
    assert "archive_id: arch-77" in ok["message"]
    bad = by_title["imp failed"]
    assert bad["type"] == "failure"
    assert "type: importAsset" in bad["message"]
    assert "- application orders-app: ROMA.00110027: name taken" in bad["message"]
    assert "- task sync-orders: ROMA.00110104: no data source" in bad["message"]
    assert bad["message"].splitlines()[-1].startswith("event ")


async def test_finished_jobs_are_not_polled_again_even_after_a_restart(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    mixed_jobs(sim)
    cfg = configs.load(["exp", "imp", "slow"])
    await Daemon(cfg).run_once()
    await Daemon(cfg).run_once()
    assert (sim.polls("exp"), sim.polls("imp"), sim.polls("slow")) == (2, 2, 2)
    for _ in range(3):
        await Daemon(cfg).run_once()
    assert (sim.polls("exp"), sim.polls("imp"), sim.polls("slow")) == (2, 2, 5)
    assert len(receiver.messages) == 2


async def test_a_job_registered_after_it_finished_is_reported_once(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    sim.add(SimJob("done", [succeeded("Finished")]))
    cfg = configs.load(["done"])
    await Daemon(cfg).run_once()
    await Daemon(cfg).run_once()
    assert receiver.titles() == ["done succeeded"]


async def test_a_job_only_tells_the_notifiers_it_names(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    sim.add(SimJob("a", [succeeded()]))
    cfg = configs.load(
        [{"id": "a", "notify": ["team"]}],
        notifiers={
            "ops": {"urls": [receiver.url("ops")]},
            "team": {"urls": [receiver.url("team")]},
        },
    )
    await Daemon(cfg).run_once()
    assert receiver.paths == ["/team"]


async def test_a_failed_delivery_is_retried_later_and_sent_once(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(SimJob("a", [succeeded()]))
    cfg = configs.load(["a"])
    receiver.fail_with = 500
    await Daemon(cfg, clock).run_once()
    assert receiver.messages == []
    db = configs.folder / "jobherald.db"
    assert rows(db, "select state, attempts from deliveries") == [("pending", 1)]
    receiver.fail_with = None
    await Daemon(cfg, clock).run_once()  # not due yet: nothing is sent
    assert receiver.messages == []
    clock.advance(120)
    await Daemon(cfg, clock).run_once()
    clock.advance(3600)
    await Daemon(cfg, clock).run_once()
    assert receiver.titles() == ["a succeeded"]
    assert rows(db, "select state, attempts from deliveries") == [("delivered", 2)]


async def test_a_delivery_is_abandoned_after_a_day_of_failures(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(SimJob("a", [succeeded()]))
    cfg = configs.load(["a"])
    receiver.fail_with = 503
    for _ in range(40):
        await Daemon(cfg, clock).run_once()
        clock.advance(3600)
    db = configs.folder / "jobherald.db"
    ((state, attempts, error),) = rows(db, "select state, attempts, last_error from deliveries")
    assert state == "abandoned"
    assert isinstance(attempts, int)
    assert 15 <= attempts <= 30
    assert error == "Failed to send JSON POST notification: Servers are overloaded., error=503."


async def test_polls_that_change_nothing_write_no_transitions(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    sim.add(SimJob("a", [running(0.1), running(0.15), running(0.15), running(0.3), running(0.3)]))
    sim.add(SimJob("b", [http_error(503)]))
    cfg = configs.load(["a", "b"])
    for _ in range(5):
        await Daemon(cfg).run_once()
    db = configs.folder / "jobherald.db"
    assert rows(
        db, "select job_id, from_state, to_state, progress from transitions order by id"
    ) == [
        ("a", None, "running", 0.1),
        ("a", "running", "running", 0.3),
    ]
    assert rows(db, "select id, state, progress from jobs order by id") == [
        ("a", "running", 0.3),
        ("b", "pending", None),
    ]


async def test_upstream_errors_are_recorded_and_do_not_stop_other_jobs(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    sim.add(SimJob("gone", [http_error(404, "ROMA.00110006", "The resource does not exist.")]))
    sim.add(SimJob("html", [Answer(raw_body=b"<html>oops</html>")]))
    sim.add(SimJob("ok", [succeeded()]))
    cfg = configs.load(["gone", "html", "ok", "missing"])
    await Daemon(cfg).run_once()
    code, out, _ = await jobherald("status", "--json", "-c", str(cfg.path))
    assert code == 0
    status = {s["id"]: s for s in json.loads(out)}
    assert status["ok"]["status"] == "succeeded"
    assert status["gone"]["error"].startswith(
        "HTTP 404 ROMA.00110006: The resource does not exist. (request "
    )
    assert status["html"]["error"].startswith("body: answer is not JSON: '<html>oops</html>'")
    assert status["missing"]["error"].startswith("HTTP 404 ROMA.00110006")
    assert receiver.titles() == ["ok succeeded"]


async def test_status_and_history_json_follow_the_contract(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    sim.add(
        SimJob(
            "imp",
            [running(0.5, "Running"), failed("Failed")],
            type="importAsset",
            reasons=REASONS[:1],
        )
    )
    sim.add(SimJob("odd", [Answer(status="Queued")]))
    cfg = configs.load([{"id": "imp", "name": "orders import"}, "odd", "never"])
    await Daemon(cfg).run_once()
    await Daemon(cfg).run_once()
    code, out, _ = await jobherald("status", "--json", "-c", str(cfg.path))
    assert code == 0
    status = {s["id"]: s for s in json.loads(out)}
    imp = status["imp"]
    assert set(imp) == {
        "id",
        "key",
        "name",
        "source",
        "status",
        "raw_status",
        "progress",
        "archive_id",
        "reasons",
        "last_polled_at",
        "last_changed_at",
        "error",
        "owner",
        "link",
        "archive_state",
        "archive_path",
        "archive_size",
        "archive_sha256",
        "archive_error",
        "eta",
        "typical_duration",
        "interval",
        "removed",
    }
    assert imp["removed"] is False  # a watched job (status --all adds the removed ones)
    assert imp["interval"] == 1.0  # the effective poll interval (no max_rate: the job's)
    # A source without archive_dir keeps no archives.
    assert (imp["archive_state"], imp["archive_path"]) == (None, None)
    # No daemon runs (one pass joins no replicas): nobody polls the unfinished job now.
    assert imp["owner"] is None and status["odd"]["owner"] is None
    assert (imp["name"], imp["source"], imp["status"], imp["raw_status"], imp["progress"]) == (
        "orders import",
        "roma",
        "failed",
        "Failed",
        1.0,
    )
    assert imp["reasons"] == REASONS[:1]
    assert imp["last_polled_at"].endswith("Z")
    assert imp["error"] is None
    assert (status["odd"]["status"], status["odd"]["raw_status"]) == ("unknown", "Queued")
    assert status["never"]["status"] == "pending"
    code, out, _ = await jobherald("history", "imp", "--json", "-c", str(cfg.path))
    assert code == 0
    history = json.loads(out)
    assert [(h["from"], h["to"], h["progress"], h["raw_status"]) for h in history] == [
        (None, "running", 0.5, "Running"),
        ("running", "failed", 1.0, "Failed"),
    ]
    assert history[0]["at"] <= history[1]["at"]


async def test_human_status_and_history_are_tables(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    sim.add(SimJob("a", [running(0.42)]))
    cfg = configs.load([{"id": "a", "name": "nightly export"}])
    await Daemon(cfg).run_once()
    code, out, _ = await jobherald("status", "-c", str(cfg.path))
    assert code == 0
    header, line = out.splitlines()
    assert header.split() == [
        "NAME",
        "ID",
        "SOURCE",
        "STATE",
        "PROGRESS",
        "ETA",
        "CHANGED",
        "POLLED",
        "OWNER",
        "ERROR",
    ]
    assert line.split()[:7] == ["nightly", "export", "a", "roma", "running", "████░░░░░░", "42%"]
    code, out, _ = await jobherald("history", "a", "-c", str(cfg.path))
    assert out.splitlines()[1].split()[1:4] == ["-", "running", "42%"]
    code, _, err = await jobherald("history", "nope", "-c", str(cfg.path))
    assert (code, err) == (1, "jobherald: no job 'nope' in the database or the config\n")


async def test_a_job_removed_from_the_config_keeps_its_history(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    sim.add(SimJob("a", [running(0.5)]))
    sim.add(SimJob("b", [running(0.5)]))
    await Daemon(configs.load(["a", "b"])).run_once()
    cfg = configs.load(["b"])
    await Daemon(cfg).run_once()
    assert sim.polls("a") == 1
    code, out, _ = await jobherald("history", "a", "--json", "-c", str(cfg.path))
    assert code == 0
    assert len(json.loads(out)) == 1
    code, out, _ = await jobherald("status", "--json", "-c", str(cfg.path))
    assert [s["id"] for s in json.loads(out)] == ["b"]  # the watched one
    code, out, _ = await jobherald("status", "--json", "--all", "-c", str(cfg.path))
    assert sorted((s["id"], s["removed"]) for s in json.loads(out)) == [("a", True), ("b", False)]


async def test_notify_test_reports_each_notifier(receiver: Receiver, configs: ConfigWriter) -> None:
    path = configs.write(
        [],
        notifiers={
            "good": {"urls": [receiver.url("good")]},
            "bad": {"urls": ["json://127.0.0.1:9/x"]},
        },
    )
    code, out, _ = await jobherald("notify-test", "good", "-c", str(path))
    assert code == 0
    assert out == f"good json://127.0.0.1:{receiver.port}/good: sent\n"
    assert receiver.titles() == ["jobherald test message"]
    code, out, _ = await jobherald("notify-test", "-c", str(path))
    assert code == 1
    assert "bad json://127.0.0.1:9/x: FAILED: " in out
    code, _, err = await jobherald("notify-test", "nosuch", "-c", str(path))
    assert (code, err) == (2, "jobherald: unknown notifier 'nosuch' (known: good, bad)\n")


async def test_the_counts_follow_each_poll_and_each_reload(
    sim: Simulator, configs: ConfigWriter
) -> None:
    # The counts behind the status line and the metrics are kept as views change (not
    # counted over every view at each look): they agree with the views at every step.
    sim.add(SimJob("a", [running(0.3)]))
    sim.add(SimJob("b", [http_error(503)]))
    sim.add(SimJob("c", [running(0.2), succeeded()]))
    sim.add(SimJob("d", [running(0.1)]))
    settings = {"poll_interval": "100ms", "retries": 0}
    daemon = Daemon(configs.load(["a", "b", "c"], daemon=settings, notifiers={}))
    task = asyncio.create_task(daemon.run())

    def recounted() -> tuple[dict[str, int], int]:
        assert daemon.watcher is not None
        views = daemon.watcher.views.values()
        states = Counter(v.state.value for v in views)
        return dict(states), sum(1 for v in views if v.error is not None)

    def kept() -> tuple[dict[str, int], int]:
        assert daemon.watcher is not None
        return daemon.watcher.counts(), daemon.watcher.failing()

    try:
        first = ({"pending": 1, "running": 1, "succeeded": 1}, 1)
        await wait_for(lambda: daemon.ready and kept() == first, 20, "three jobs polled")
        assert recounted() == first
        assert daemon.watcher is not None
        assert daemon.watcher.active_states() == {"pending": 1, "running": 1}
        configs.write(["a", "d"], daemon=settings, notifiers={})
        daemon.reload()
        await wait_for(lambda: kept() == ({"running": 2}, 0), 20, "the reloaded jobs polled")
        assert recounted() == ({"running": 2}, 0)
        assert daemon.watcher.active_states() == {"running": 2}
    finally:
        daemon.stop()
        await task


async def test_a_restart_polls_the_known_jobs_and_registers_the_changed_ones(
    sim: Simulator, configs: ConfigWriter
) -> None:
    # A start polls the unfinished jobs registered just as configured while it registers
    # every job: after a restart with a job renamed, one added, one removed and one
    # finished, each job still watched is polled, and the database says what the config does.
    for job_id in "abcd":
        sim.add(SimJob(job_id, [running(0.5)]))
    sim.add(SimJob("e", [succeeded()]))
    settings = {"poll_interval": "100ms"}
    await Daemon(configs.load(["a", "b", "c", "e"], daemon=settings, notifiers={})).run_once()
    changed = ["a", {"id": "b", "name": "renamed b"}, "d", "e"]
    daemon = Daemon(configs.load(changed, daemon=settings, notifiers={}))
    polled_before = {job_id: sim.polls(job_id) for job_id in "abcde"}
    task = asyncio.create_task(daemon.run())
    try:
        await wait_for(
            lambda: daemon.ready and all(sim.polls(j) >= polled_before[j] + 2 for j in "abd"),
            20,
            "a, b and d polled",
        )
        assert daemon.watcher is not None
        assert sorted(daemon.watcher.jobs) == ["a", "b", "d", "e"]
        assert daemon.watcher.counts() == {"running": 3, "succeeded": 1}
    finally:
        daemon.stop()
        await task
    assert sim.polls("c") == polled_before["c"] and sim.polls("e") == polled_before["e"]
    db = configs.folder / "jobherald.db"
    assert rows(db, "select id, name, configured from jobs order by id") == [
        ("a", "a", 1),
        ("b", "renamed b", 1),
        ("c", "c", 0),
        ("d", "d", 1),
        ("e", "e", 1),
    ]
