"""A lane per notifier URL and digests: a burst of finishes reaches chat at chat's pace,
email as a few digests; a slow or dead URL holds back nobody; kill -9 mid-digest loses
nothing (real daemons, a local SMTP server and webhook receiver)."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from jobherald import config as config_module
from jobherald.errors import ConfigError
from jobherald.service import Daemon
from jobherald.sources.simulator import SimJob, Simulator, failed, running, succeeded
from tests.conftest import (
    Clock,
    ConfigWriter,
    Receiver,
    Running,
    carried,
    jobherald,
    start,
    wait_for,
)
from tests.fakes import Mailbox
from tests.test_http import free_port

REASONS = [
    {"resource_type": "app", "resource_name": "orders", "error_code": "ROMA.7", "error_msg": "x"}
]


def rows(db: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(query).fetchall()


def wall(monotonic: float) -> float:
    """A time.monotonic() stamp on the wall clock."""
    return monotonic + time.time() - time.monotonic()


def event_times(db: Path) -> dict[str, tuple[str, float]]:
    """Each finishing event: its job and when it was recorded (wall clock)."""
    return {
        str(event_id): (str(job), datetime.fromisoformat(str(at)).replace(tzinfo=UTC).timestamp())
        for event_id, job, at in rows(
            db, "select id, job_id, at from events where kind in ('succeeded', 'failed')"
        )
    }


def mail_ids(box: Mailbox) -> list[str]:
    return [i for m in box.messages for i in carried(m.get_body(("plain",)).get_content())]


@pytest.mark.timeout(120)
async def test_a_burst_reaches_chat_at_once_and_email_as_a_few_digests(
    sim: Simulator,
    receiver: Receiver,
    mailbox: Mailbox,
    configs: ConfigWriter,
    daemons: list[Running],
) -> None:
    burst = 150
    began = time.monotonic()
    for i in range(burst):
        answers = [running(0.5), failed() if i % 10 == 0 else succeeded()]
        sim.add(SimJob(f"b{i:03d}", answers, reasons=REASONS, finish_at=began + 4))
    sim.add(SimJob("late", [running(0.5), succeeded()], finish_at=began + 9))
    receiver.delays["/slow"] = 3.0
    receiver.fail_paths["/dead"] = 503
    port = free_port()
    configs.extra = [f'[http]\nlisten = "127.0.0.1:{port}"\n']
    config = configs.write(
        [f"b{i:03d}" for i in range(burst)] + ["late"],
        notifiers={
            "chat": {"urls": [receiver.url("chat")], "on": ["succeeded", "failed"]},
            "mail": {"urls": [mailbox.url()], "on": ["succeeded", "failed"]},
            "hooks": {
                "urls": [receiver.url("slow"), receiver.url("dead")],
                "on": ["succeeded", "failed"],
            },
        },
        daemon={"poll_interval": "1s", "concurrency": 32},
    )
    daemon = await start(daemons, config)
    db = configs.folder / "jobherald.db"
    expected = burst + 1
    await wait_for(lambda: len(receiver.event_ids("chat")) >= expected, 60, "chat to hear all")
    chat_done = time.monotonic()
    slow_then = set(receiver.event_ids("slow"))
    await wait_for(lambda: len(set(mail_ids(mailbox))) >= expected, 30, "mail to carry all")

    events = event_times(db)
    assert len(events) == expected
    # Chat carried every event exactly once, in single messages and digests.
    assert Counter(receiver.event_ids("chat")) == dict.fromkeys(events, 1)
    firsts: dict[str, float] = {}
    for m, path, at in zip(receiver.messages, receiver.paths, receiver.received_at, strict=True):
        for event_id in carried(m["message"]) if path == "/chat" else ():
            firsts.setdefault(event_id, wall(at))
    late = next(e for e, (job, _) in events.items() if job == "late")
    burst_ends = max(at for e, (_, at) in events.items() if e != late)
    burst_reached = max(firsts[e] for e in events if e != late)
    assert burst_reached - burst_ends < 8.0, burst_reached - burst_ends
    assert firsts[late] - events[late][1] < 3.0, firsts[late] - events[late][1]
    # ...while the slow URL was still working through the burst and the dead one failing.
    assert len(slow_then) < expected and late not in slow_then, len(slow_then)
    assert "/dead" in receiver.attempts and receiver.attempts.count("/dead") < 10

    # Email: a few digests carry the 151 events, none lost.
    assert len(mailbox.messages) <= 10, len(mailbox.messages)
    assert set(mail_ids(mailbox)) == set(events)
    digest = next(
        m for m in mailbox.messages if len(carried(m.get_body(("plain",)).get_content())) > 1
    )
    title = str(digest["Subject"])
    count = len(carried(digest.get_body(("plain",)).get_content()))
    assert title.startswith(f"{count} jobs: "), title
    assert "succeeded" in title

    # Visible: the metrics, the page and the log.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as answer:
            metrics = await answer.text()
        async with http.get(f"http://127.0.0.1:{port}/") as answer:
            page = await answer.text()
    assert f'jobherald_delivery_lag_seconds_count{{notifier="chat"}} {expected}.0' in metrics
    pending_hooks = rows(
        db, "select count(*) from deliveries where notifier = 'hooks' and state = 'pending'"
    )
    assert int(str(pending_hooks[0][0])) > 0  # the dead URL's, waiting for their retry
    assert 'jobherald_deliveries_pending{notifier="hooks"}' in metrics
    assert 'jobherald_deliveries_pending{notifier="chat"} 0.0' in metrics
    assert "Deliveries pending:" in page and 'data-pending="hooks"' in page
    assert await daemon.stop() == 0
    log = daemon.output()
    assert "sent a digest of " in log and " events to mail (127.0.0.1)" in log
    print(
        f"burst: chat {len([p for p in receiver.paths if p == '/chat'])} messages, "
        f"burst reached chat {burst_reached - burst_ends:.1f}s after its last finish, "
        f"late {firsts[late] - events[late][1]:.1f}s; {len(mailbox.messages)} emails; "
        f"chat done {chat_done - began:.1f}s after the start"
    )


@pytest.mark.timeout(90)
async def test_kill_9_in_the_middle_of_a_digest_loses_no_event(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, daemons: list[Running]
) -> None:
    began = time.monotonic()
    for i in range(12):
        sim.add(SimJob(f"k{i:02d}", [running(0.5), succeeded()], finish_at=began + 2))
    receiver.delay = 2.0
    config = configs.write(
        [f"k{i:02d}" for i in range(12)],
        notifiers={"ops": {"urls": [receiver.url()], "on": ["succeeded"]}},
    )
    first = await start(daemons, config)
    db = configs.folder / "jobherald.db"
    # The first event goes alone; the rest, due meanwhile, go as one digest: kill the
    # daemon while the receiver holds that digest's request.
    await wait_for(lambda: len(receiver.attempts) >= 2, 30, "the digest to be sent")
    first.proc.send_signal(signal.SIGKILL)
    await first.proc.wait()
    interrupted = int(
        str(rows(db, "select count(*) from deliveries where state = 'pending'")[0][0])
    )
    assert interrupted >= 5  # the digest's rows were not marked delivered
    receiver.delay = 0.0
    second = await start(daemons, config)
    await wait_for(
        lambda: rows(db, "select count(*) from deliveries where state = 'delivered'")[0][0] == 12,
        30,
        "every delivery marked delivered",
    )
    assert await second.stop() == 0
    events = {str(e) for (e,) in rows(db, "select id from events where kind = 'succeeded'")}
    assert len(events) == 12
    assert set(receiver.event_ids()) == events  # at least once: nothing lost
    code, out, _ = await jobherald("deliveries", "--all", "--json", "-c", str(config))
    assert code == 0
    listed = json.loads(out)
    digests = Counter(row["digest_id"] for row in listed if row["digest_id"])
    # One digest carried the interrupted rows after the restart, and each row counts once.
    assert sum(digests.values()) >= interrupted
    assert all(len(d) == 32 for d in digests)
    assert len(listed) == 12 and all(row["state"] == "delivered" for row in listed)


async def passes(cfg: config_module.Config, clock: Clock, count: int = 1) -> None:
    for _ in range(count):
        await Daemon(cfg, clock).run_once()
        clock.advance(60)


async def test_a_backlog_is_one_digest_with_links_and_a_single_event_is_today_s_message(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    for i in range(7):
        answers = [failed()] if i < 2 else [succeeded()]
        sim.add(SimJob(f"d{i}", answers, reasons=REASONS))
    configs.extra = ['[http]\nlisten = ""\npublic_url = "https://jobs.example.com/"\n']
    cfg = configs.load(
        [{"id": f"d{i}", "name": f"nightly {i}"} for i in range(7)],
        notifiers={"ops": {"urls": [receiver.url()], "format": "markdown"}},
    )
    await passes(cfg, clock)
    (digest,) = receiver.messages
    assert digest["title"] == "7 jobs: 5 succeeded, 2 failed"
    assert digest["type"] == "failure"
    lines = digest["message"].splitlines()
    assert "- [nightly 0](https://jobs.example.com/jobs/d0): failed: app orders: ROMA.7: x" in lines
    assert "- [nightly 6](https://jobs.example.com/jobs/d6): succeeded in 4m 12s" in lines
    assert "status page: [https://jobs.example.com/](https://jobs.example.com/)" in lines
    assert len(carried(digest["message"])) == 7

    sim.add(SimJob("one", [succeeded()]))
    cfg = configs.load(
        [{"id": "one", "name": "alone"}, *({"id": f"d{i}"} for i in range(7))],
        notifiers={"ops": {"urls": [receiver.url()]}},
    )
    await passes(cfg, clock)
    assert receiver.messages[1]["title"] == "alone succeeded"
    assert receiver.messages[1]["message"].splitlines()[0] == "Job alone succeeded."


async def test_a_long_backlog_is_cut_into_digests_of_digest_max_with_fifty_lines_each(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    for i in range(130):
        sim.add(SimJob(f"m{i:03d}", [succeeded()]))
    cfg = configs.load(
        [f"m{i:03d}" for i in range(130)],
        notifiers={"ops": {"urls": [receiver.url()], "digest_max": 60}},
        daemon={"concurrency": 32},
    )
    await passes(cfg, clock)
    assert [m["title"] for m in receiver.messages] == [
        "60 jobs: 60 succeeded",
        "60 jobs: 60 succeeded",
        "10 jobs: 10 succeeded",
    ]
    body = receiver.messages[0]["message"].splitlines()
    assert sum(line.startswith("- m") for line in body) == 50
    assert "and 10 more" in body
    assert sorted(receiver.event_ids()) == sorted(
        str(e) for (e,) in rows(configs.folder / "jobherald.db", "select id from events")
    )


async def test_one_url_s_messages_leave_in_event_order(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    for i in range(8):
        sim.add(SimJob(f"o{i}", [succeeded()]))
    cfg = configs.load(
        [f"o{i}" for i in range(8)],
        notifiers={"ops": {"urls": [receiver.url()], "digest_after": 0}},
    )
    await passes(cfg, clock)
    in_order = [
        str(e)
        for (e,) in rows(
            configs.folder / "jobherald.db", "select event_id from deliveries order by id"
        )
    ]
    assert receiver.event_ids() == in_order
    assert len(receiver.messages) == 8


async def test_digest_templates_see_events_and_counts(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    for i in range(5):
        sim.add(SimJob(f"t{i}", [failed() if i == 0 else succeeded()], reasons=REASONS))
    cfg = configs.load(
        [f"t{i}" for i in range(5)],
        notifiers={
            "ops": {
                "urls": [receiver.url()],
                "digest_title": "{{ counts.succeeded }} ok, {{ counts.failed }} not",
                "digest_body": "{% for e in events %}{{ e.job.id }}={{ e.event.kind }} {% endfor %}",
            }
        },
    )
    await passes(cfg, clock)
    (digest,) = receiver.messages
    assert digest["title"] == "4 ok, 1 not"
    first, *_ = digest["message"].splitlines()
    assert first.split() == [
        "t0=failed",
        "t1=succeeded",
        "t2=succeeded",
        "t3=succeeded",
        "t4=succeeded",
    ]
    assert len(carried(digest["message"])) == 5  # the ids are added when a template leaves them out


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (
            {
                "digest_body": "{% for a in events %}{% for b in events %}{% for c in events %}"
                "{% if c.job.name == 'x' %}x{% endif %}{% endfor %}{% endfor %}{% endfor %}"
            },
            "notifiers.ops.digest_body: template took longer than 2s: stopped on a sample event",
        ),
        (
            {"digest_title": "{{ events[0].nope }}"},
            "notifiers.ops.digest_title: template does not render",
        ),
        (
            {"digest_after": -1},
            "notifiers.ops.digest_after: Input should be greater than or equal to 0",
        ),
        (
            {"max_in_flight": 0},
            "notifiers.ops.max_in_flight: Input should be greater than or equal to 1",
        ),
    ],
)
async def test_check_config_refuses_digest_settings_that_cannot_work(
    configs: ConfigWriter, settings: dict[str, object], problem: str
) -> None:
    path = configs.write(["a"], notifiers={"ops": {"urls": ["json://127.0.0.1:9/x"], **settings}})
    with pytest.raises(ConfigError) as raised:
        config_module.load(path)
    assert any(problem in line for line in raised.value.problems), raised.value.problems


@pytest.mark.parametrize(
    "url",
    ["jobs.example.com", "ftp://jobs.example.com", "https://user:pw@jobs.example.com", "/status"],
)
async def test_public_url_must_be_an_absolute_http_url(configs: ConfigWriter, url: str) -> None:
    configs.extra = [f'[http]\nlisten = ""\npublic_url = "{url}"\n']
    path = configs.write(["a"])
    with pytest.raises(ConfigError) as raised:
        config_module.load(path)
    (line,) = raised.value.problems
    assert "http.public_url:" in line
    assert "pw" not in line  # a password is never echoed


async def test_what_is_due_for_a_url_its_notifier_dropped_is_given_up_at_once(
    sim: Simulator,
    receiver: Receiver,
    configs: ConfigWriter,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for i in range(3):
        sim.add(SimJob(f"g{i}", [succeeded()]))
    jobs = [f"g{i}" for i in range(3)]
    receiver.fail_paths["/old"] = 503
    await passes(configs.load(jobs, notifiers={"ops": {"urls": [receiver.url("old")]}}), clock)
    clock.advance(3600)  # every retry due
    await passes(configs.load(jobs, notifiers={"ops": {"urls": [receiver.url("new")]}}), clock)
    states = rows(
        configs.folder / "jobherald.db",
        "select state, last_error from deliveries where url like '%/old' order by id",
    )
    assert states == [("abandoned", "notifier 'ops' no longer has this URL")] * 3
    assert receiver.paths == []  # neither URL was sent the old rows
    dropped = [r for r in caplog.records if "no longer has that URL" in r.getMessage()]
    assert len(dropped) == 3
    assert not [r for r in caplog.records if r.name.startswith("jobherald") and r.exc_info]
