"""Knowing when it will end: ETAs from recent progress, typical durations, slow_after."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from jobherald.eta import estimate_eta, eta_samples, job_eta
from jobherald.model import (
    EventKind,
    JobView,
    Rules,
    Snapshot,
    State,
    observe,
    typical_duration,
)
from jobherald.service import Daemon
from jobherald.sources.simulator import SimJob, Simulator, succeeded
from jobherald.sources.simulator import running as sim_running
from tests.conftest import ConfigWriter, Receiver, jobherald

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_steady_job_ends_when_its_pace_says() -> None:
    # 10 % a minute since the start: 40 % at minute 4, so 6 minutes to go.
    samples = [(at(0), 0.0), (at(60), 0.1), (at(120), 0.2), (at(180), 0.3), (at(240), 0.4)]
    assert estimate_eta(samples, at(240)) == at(600)


def test_the_estimate_follows_the_recent_pace() -> None:
    # Slow at first, then fast: the last dozen samples set the pace.
    slow = [(at(i * 600), i * 0.01) for i in range(10)]
    fast = [(at(6000 + i * 10), 0.1 + i * 0.01) for i in range(1, 13)]
    eta = estimate_eta(slow + fast, at(6120))
    assert eta is not None and at(6120) < eta < at(6120 + 1200)


@pytest.mark.parametrize(
    "samples",
    [
        [],
        [(at(0), 0.2)],
        [(at(0), 0.3), (at(60), 0.3), (at(120), 0.3)],  # not moving
        [(at(0), 0.5), (at(60), 0.4)],  # going back
        [(at(0), 0.2), (at(0), 0.4)],  # no time between
        [(at(0), 0.2), (at(60), 1.0)],  # done
    ],
)
def test_no_estimate_when_progress_does_not_tell(samples: list[tuple[datetime, float]]) -> None:
    assert estimate_eta(samples, at(60)) is None


def test_an_estimate_is_never_in_the_past() -> None:
    samples = [(at(0), 0.0), (at(60), 0.5)]
    assert estimate_eta(samples, at(3600)) == at(3600)


def test_a_job_stuck_since_its_last_change_gets_a_later_eta_at_each_poll() -> None:
    view = JobView(
        "j",
        state=State.RUNNING,
        progress=0.5,
        begin_time=at(0),
        progress_changed_at=at(300),
    )
    early = job_eta(view, [], at(310), at(310))
    late = job_eta(view, [], at(1200), at(1200))
    assert early is not None and late is not None and late > early
    assert eta_samples(at(0), 0.5, at(300), [(at(150), 0.25)], at(1200)) == [
        (at(0), 0.0),
        (at(150), 0.25),
        (at(300), 0.5),
        (at(1200), 0.5),
    ]
    assert job_eta(replace(view, state=State.SUCCEEDED), [], at(400), at(400)) is None
    assert job_eta(replace(view, progress=None), [], at(400), at(400)) is None


def test_typical_duration_is_the_median_of_earlier_runs() -> None:
    assert typical_duration([]) is None
    assert typical_duration([300.0]) == 300.0
    assert typical_duration([100.0, 300.0, 200.0]) == 200.0
    assert typical_duration([100.0, 200.0, 300.0, 4000.0]) == 250.0
    assert typical_duration([0.0, -5.0]) is None


def running(progress: float) -> Snapshot:
    return Snapshot(state=State.RUNNING, raw_status="RUNNING", progress=progress, begin_time=at(0))


def test_a_job_slower_than_usual_is_said_once() -> None:
    rules = Rules(slow_after=2.0, stall_after=None, max_duration=None, progress_steps=())
    view = observe(JobView("j"), running(0.1), at(10), rules, typical=600.0).job
    quiet = observe(view, running(0.2), at(1100), rules, typical=600.0)
    assert [e.kind for e in quiet.events] == []
    slow = observe(quiet.job, running(0.3), at(1201), rules, typical=600.0)
    assert [(e.kind, e.detail) for e in slow.events] == [
        (
            EventKind.STALLED,
            "slower than usual: running for 20m 1s, 2.0 times its typical 10m",
        )
    ]
    again = observe(slow.job, running(0.4), at(2400), rules, typical=600.0)
    assert again.events == ()
    # Off, or nothing to go by: nothing said.
    off = replace(rules, slow_after=None)
    assert observe(quiet.job, running(0.3), at(5000), off, typical=600.0).events == ()
    assert observe(quiet.job, running(0.3), at(5000), rules, typical=None).events == ()


async def test_a_run_slower_than_earlier_runs_of_its_name_is_stalled_once(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    now = datetime.now(UTC)
    # Last night's run took 10 minutes; tonight's has run for 25 and is at 40 %.
    sim.add(
        SimJob(
            "mon",
            [succeeded()],
            begin_time=now - timedelta(days=1),
            duration=timedelta(minutes=10),
        )
    )
    sim.add(SimJob("tue", [sim_running(0.4)], begin_time=now - timedelta(minutes=25)))
    body = (
        "{{ job.name }}: {{ event.detail }}; typical {{ job.typical_duration | duration }}; "
        "eta {{ job.eta or 'none' }}\nevent {{ event.id }}"
    )
    cfg = configs.load(
        [{"id": "mon", "name": "nightly"}, {"id": "tue", "name": "nightly"}],
        notifiers={"ops": {"urls": [receiver.url()], "on": ["stalled"], "body": body}},
    )
    code, _, err = await jobherald("check-config", "-c", str(cfg.path))
    assert code == 0, err
    await Daemon(cfg).run_once()  # records last night's run (and tonight's first look)
    assert receiver.messages == []  # nothing to compare with yet when tonight's was first seen
    await Daemon(cfg).run_once()
    await Daemon(cfg).run_once()
    (message,) = receiver.messages
    assert re.match(
        r"nightly: slower than usual: running for 25m( \d+s)?, 2\.5 times its typical 10m; "
        r"typical 10m; eta 20\d\d-",
        message["message"],
    ), message["message"]
    code, out, err = await jobherald("status", "--json", "-c", str(cfg.path))
    assert code == 0, err
    rows = {r["id"]: r for r in json.loads(out)}
    assert rows["tue"]["typical_duration"] == 600.0
    assert rows["mon"]["typical_duration"] is None  # no other finished run of its name
    assert rows["tue"]["eta"] is not None
    eta = datetime.fromisoformat(rows["tue"]["eta"].replace("Z", "+00:00"))
    # 40 % in 25 minutes: about 37 more minutes at that pace.
    assert timedelta(minutes=30) < eta - now < timedelta(minutes=45)


def test_the_demos_etas_fit_the_demos_pace() -> None:
    from jobherald.sources.demo import demo_jobs

    interval = 1.0
    for name, job, _ in demo_jobs(interval):
        start = datetime.now(UTC)
        samples = [(job.begin_time, 0.0)]
        end = job.begin_time + job.duration
        for k, answer in enumerate(job.script):
            at = start + timedelta(seconds=k * interval)
            if answer.status not in ("RUNNING", "Running") or answer.progress is None:
                continue
            samples.append((at, answer.progress))
            eta = estimate_eta(samples, at)
            if eta is not None:  # never hours ahead of a show that lasts seconds
                assert eta - end < timedelta(seconds=5 * interval), (name, k, eta - end)
        assert job.duration < timedelta(seconds=30), name
