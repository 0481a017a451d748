"""Notifications through real channels: SMTP, json:// and form:// webhooks, ntfy; per-URL delivery."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator

import pytest

from jobherald.service import Daemon
from jobherald.sources.simulator import SimJob, Simulator, failed, http_error, running, succeeded
from tests.conftest import Clock, ConfigWriter, Receiver, jobherald
from tests.fakes import FakeNtfy, Mailbox

REASONS = [
    {
        "resource_type": "application",
        "resource_name": "orders-app",
        "error_code": "ROMA.7",
        "error_msg": "taken",
    },
]


@pytest.fixture
async def ntfy() -> AsyncIterator[FakeNtfy]:
    fake = FakeNtfy()
    await fake.start()
    yield fake
    await fake.stop()


async def passes(cfg: object, clock: Clock, count: int, step: float) -> None:
    for _ in range(count):
        await Daemon(cfg, clock).run_once()  # type: ignore[arg-type]
        clock.advance(step)


def deliveries(configs: ConfigWriter) -> list[tuple[object, ...]]:
    with sqlite3.connect(configs.folder / "jobherald.db") as conn:
        return conn.execute(
            "select notifier, url, state, attempts from deliveries order by id"
        ).fetchall()


async def test_an_email_reads_well_and_carries_the_event_id(
    sim: Simulator, mailbox: Mailbox, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(SimJob("imp", [running(0.5), failed()], type="importAsset", reasons=REASONS))
    cfg = configs.load(
        [{"id": "imp", "name": "orders import"}], notifiers={"mail": {"urls": [mailbox.url()]}}
    )
    await passes(cfg, clock, 2, 60)
    (mail,) = mailbox.messages
    assert mail["Subject"] == "orders import failed"
    assert mail["To"] == "ops@example.com"
    text = mail.get_body(("plain",)).get_content()
    assert "Job orders import failed." in text
    assert "1 reason:\r\n- application orders-app: ROMA.7: taken" in text
    assert "\nevent " in text


async def test_form_and_ntfy_channels_get_the_message(
    sim: Simulator, receiver: Receiver, ntfy: FakeNtfy, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(SimJob("exp", [succeeded()], archive_id="arch-9"))
    cfg = configs.load(
        ["exp"],
        notifiers={"ops": {"urls": [receiver.url("form", scheme="form"), ntfy.url("jobs")]}},
    )
    await passes(cfg, clock, 1, 60)
    (form,) = receiver.messages
    assert (form["title"], form["type"]) == ("exp succeeded", "success")
    assert "archive_id: arch-9" in form["message"]
    (pushed,) = ntfy.messages
    assert (pushed["topic"], pushed["title"]) == ("jobs", "exp succeeded")
    assert "archive_id: arch-9" in pushed["message"]


async def test_one_failing_url_is_retried_alone(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(SimJob("a", [succeeded()]))
    cfg = configs.load(
        ["a"], notifiers={"ops": {"urls": [receiver.url("good"), receiver.url("flaky")]}}
    )
    receiver.fail_paths["/flaky"] = 500
    await passes(cfg, clock, 3, 10)
    assert receiver.paths == ["/good"]
    states = deliveries(configs)
    assert states[0][2:] == ("delivered", 1)
    assert states[1][2] == "pending"
    assert states[1][1] == f"json://127.0.0.1:{receiver.port}/flaky"
    del receiver.fail_paths["/flaky"]
    await passes(cfg, clock, 6, 600)
    assert receiver.paths == ["/good", "/flaky"]
    assert [s[2] for s in deliveries(configs)] == ["delivered", "delivered"]


async def test_retries_back_off_and_stop_after_retry_for(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(SimJob("a", [succeeded()]))
    cfg = configs.load(["a"], notifiers={"ops": {"urls": [receiver.url()], "retry_for": "2h"}})
    receiver.fail_with = 502
    await passes(cfg, clock, 24 * 6, 60)  # a pass a minute for 2.4 hours
    attempts = len(receiver.attempts)
    assert 6 <= attempts <= 10, attempts  # 30 s doubling to an hour, not once a minute
    ((_, _, state, tried),) = deliveries(configs)
    assert (state, tried) == ("abandoned", attempts)
    code, out, _ = await jobherald("deliveries", "--json", "-c", str(cfg.path))
    assert code == 0
    (row,) = json.loads(out)
    assert (row["state"], row["kind"], row["job_id"], row["notifier"]) == (
        "abandoned",
        "succeeded",
        "a",
        "ops",
    )
    assert row["last_error"].startswith("Failed to send JSON POST notification")


async def test_deliveries_can_be_retried_and_dropped_by_hand(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(SimJob("a", [succeeded()]))
    sim.add(SimJob("b", [succeeded()]))
    cfg = configs.load(["a", "b"])
    receiver.fail_with = 503
    await passes(cfg, clock, 1, 1)
    code, out, _ = await jobherald("deliveries", "-c", str(cfg.path))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["ID", "STATE", "EVENT", "ABOUT", "NOTIFIER"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["1", "pending", "succeeded"],
        ["2", "pending", "succeeded"],
    ]
    code, out, _ = await jobherald("status", "-c", str(cfg.path))
    assert out.splitlines()[-1] == "deliveries: 2 pending, 0 abandoned (see `jobherald deliveries`)"
    code, out, _ = await jobherald("deliveries", "drop", "2", "-c", str(cfg.path))
    assert (code, out) == (0, "1 deliveries dropped\n")
    receiver.fail_with = None
    code, out, _ = await jobherald("deliveries", "retry", "--all", "-c", str(cfg.path))
    assert (code, out) == (0, "1 deliveries will be tried again\n")
    clock.advance(60)  # the command used the real clock, made due "now"
    await Daemon(cfg, clock).run_once()
    assert receiver.titles() == ["a succeeded"]
    code, out, _ = await jobherald("deliveries", "-c", str(cfg.path))
    assert out == "no deliveries pending, silenced or abandoned\n"
    code, _, err = await jobherald("deliveries", "retry", "-c", str(cfg.path))
    assert (code, err) == (2, "jobherald: give delivery ids, or --all\n")


async def test_templates_shape_title_and_body(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(SimJob("exp", [running(0.5), succeeded()], archive_id="arch-1"))
    cfg = configs.load(
        [{"id": "exp", "name": "nightly"}],
        notifiers={
            "chat": {
                "urls": [receiver.url()],
                "format": "markdown",
                "title": "[{{ job.source }}] {{ job.name }}: {{ event.kind | upper }}",
                "body": "**{{ job.name }}** ({{ job.type }}) {{ job.previous_state }} → {{ job.state }}"
                " in {{ job.duration | duration }}, archive {{ job.archive_id }}, at {{ job.progress | percent }}",
            }
        },
    )
    await passes(cfg, clock, 2, 60)
    (message,) = receiver.messages
    assert message["title"] == "[roma] nightly: SUCCEEDED"
    body, footer = message["message"].rsplit("\n\n", 1)
    assert (
        body == "**nightly** (exportAsset) running → succeeded in 4m 12s, archive arch-1, at 100%"
    )
    assert footer.startswith("event ") and len(footer) == len("event ") + 32


async def test_a_template_that_does_not_render_is_a_config_error(configs: ConfigWriter) -> None:
    path = configs.write(
        ["a"],
        notifiers={
            "ops": {"urls": ["json://127.0.0.1:9/x"], "body": "{{ job.nmae }}", "title": "{% if %}"}
        },
    )
    code, _, err = await jobherald("check-config", "-c", str(path))
    assert code == 2
    assert err.splitlines() == [
        f"{path}: notifiers.ops.title: template does not compile: Expected an expression, got 'end of statement block'",
        f"{path}: notifiers.ops.body: template does not render: 'dict object' has no attribute 'nmae'",
    ]


async def test_templates_cannot_reach_outside_the_sandbox(configs: ConfigWriter) -> None:
    path = configs.write(
        ["a"],
        notifiers={
            "ops": {"urls": ["json://127.0.0.1:9/x"], "body": "{{ job.__class__.__mro__ }}"}
        },
    )
    code, _, err = await jobherald("check-config", "-c", str(path))
    assert code == 2
    assert "notifiers.ops.body: template does not render" in err


async def test_notifiers_can_pick_jobs_by_name_and_sources(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    for job_id in ("n1", "n2", "other"):
        sim.add(SimJob(job_id, [succeeded()]))
    cfg = configs.load(
        [{"id": "n1", "name": "nightly-a"}, {"id": "n2", "name": "nightly-b"}, "other"],
        notifiers={
            "nightly": {"urls": [receiver.url("nightly")], "jobs": ["nightly-*"]},
            "by-id": {"urls": [receiver.url("by-id")], "jobs": ["other"]},
            "roma": {"urls": [receiver.url("roma")], "sources": ["roma"]},
        },
    )
    await passes(cfg, clock, 1, 60)
    assert receiver.titles("nightly") == ["nightly-a succeeded", "nightly-b succeeded"]
    assert receiver.titles("by-id") == ["other succeeded"]
    assert len(receiver.titles("roma")) == 3


async def test_an_unresolved_problem_is_said_again_at_the_reminder_interval(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(SimJob("a", [running(0.3)] + [http_error(503)] * 20 + [running(0.4)]))
    cfg = configs.load(
        ["a"],
        notifiers={
            "pager": {"urls": [receiver.url("pager")], "reminder": "1h"},
            "quiet": {"urls": [receiver.url("quiet")]},
        },
        daemon={"error_after": "10m", "retries": 0},
    )
    await passes(cfg, clock, 22, 900)  # 5.5 hours, failing from the second pass to the 21st
    pager = [
        m["title"] for m, p in zip(receiver.messages, receiver.paths, strict=True) if p == "/pager"
    ]
    assert pager == ["a error", "a error", "a error", "a error", "a error", "a recovered"]
    reminder = [m for m, p in zip(receiver.messages, receiver.paths, strict=True) if p == "/pager"][
        1
    ]
    assert reminder["message"].startswith(
        "Polling job a fails: polling still fails (last said 1h ago)."
    )
    assert receiver.titles("quiet") == ["a error", "a recovered"]
