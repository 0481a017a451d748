"""Events that need a person, end to end: simulator → daemon passes at fixed times → receiver."""

from __future__ import annotations

import sqlite3

from jobherald.service import Daemon
from jobherald.sources.simulator import SimJob, Simulator, http_error, running, succeeded
from tests.conftest import Clock, ConfigWriter, Receiver

EVERYTHING = ["succeeded", "failed", "started", "progress", "stalled", "lost", "error", "recovered"]


def by_title(receiver: Receiver) -> dict[str, dict[str, str]]:
    return {m["title"]: m for m in receiver.messages}


async def passes(cfg: object, clock: Clock, count: int, step: float) -> None:
    for _ in range(count):
        await Daemon(cfg, clock).run_once()  # type: ignore[arg-type]
        clock.advance(step)


async def test_a_job_that_runs_passes_milestones_stalls_and_succeeds(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(SimJob("a", [running(0.1), running(0.6)] + [running(0.6)] * 6 + [succeeded()]))
    cfg = configs.load(
        [{"id": "a", "name": "nightly"}],
        notifiers={"ops": {"urls": [receiver.url()], "on": EVERYTHING}},
        daemon={"stall_after": "30m", "progress_steps": [0.5]},
    )
    await passes(cfg, clock, 10, 600)
    assert [m["title"] for m in receiver.messages] == [
        "nightly started",
        "nightly progress",
        "nightly stalled",
        "nightly succeeded",
    ]
    messages = by_title(receiver)
    assert messages["nightly progress"]["message"].startswith("Job nightly: the job passed 50%.")
    stalled = messages["nightly stalled"]
    assert stalled["type"] == "warning"
    assert stalled["message"].startswith("Job nightly stalled: no progress for 30m (at 60% since ")
    assert "Look at the job in the ROMA Connect console" in stalled["message"]
    assert messages["nightly started"]["type"] == "info"


async def test_a_vanished_job_is_lost_once_and_not_polled_again(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(
        SimJob(
            "a", [running(0.3), http_error(404, "ROMA.00110006", "The resource does not exist.")]
        )
    )
    cfg = configs.load(["a"], daemon={"lost_after": 3})
    await passes(cfg, clock, 8, 60)
    assert sim.polls("a") == 4
    (message,) = receiver.messages
    assert message["title"] == "a lost"
    assert message["type"] == "warning"
    assert message["message"].startswith(
        "Job a is lost: the service answered 'no such job' 3 times in a row."
    )
    with sqlite3.connect(configs.folder / "jobherald.db") as conn:
        assert conn.execute("select state from jobs").fetchall() == [("lost",)]


async def test_an_outage_gives_one_error_and_one_recovered(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(
        SimJob(
            "a", [running(0.3)] + [http_error(500, "APIG.9999", "internal")] * 12 + [running(0.4)]
        )
    )
    cfg = configs.load(["a"], daemon={"error_after": "5m", "retries": 0})
    await passes(cfg, clock, 16, 60)
    assert [m["title"] for m in receiver.messages] == ["a error", "a recovered"]
    error = receiver.messages[0]["message"]
    assert error.startswith("Polling job a fails: polling has failed for 5m.")
    assert "error: HTTP 500 APIG.9999: internal (request " in error
    assert "jobherald keeps trying, less often while it fails" in error
    assert receiver.messages[1]["type"] == "info"


async def test_an_outage_survives_a_restart_without_a_second_error(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(SimJob("a", [running(0.3)] + [http_error(503)] * 30))
    cfg = configs.load(["a"], daemon={"error_after": "2m", "retries": 0})
    await passes(cfg, clock, 30, 30)  # a new Daemon, as after a restart, on every pass
    assert [m["title"] for m in receiver.messages] == ["a error"]


async def test_bad_credentials_give_one_error_for_the_source_not_one_per_job(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    for i in range(6):
        sim.add(SimJob(f"j{i}", [running(0.3)]))
    sim.tokens = set()
    cfg = configs.load([f"j{i}" for i in range(6)], daemon={"error_after": "5m"})
    await passes(cfg, clock, 10, 60)
    assert [m["title"] for m in receiver.messages] == ["source roma error"]
    message = receiver.messages[0]
    assert message["type"] == "warning"
    assert message["message"].startswith(
        "Source roma: every poll of this source has failed for 5m."
    )
    assert (
        "error: HTTP 401 APIG.1002: Incorrect token or token resolution failed"
        in message["message"]
    )
    assert (
        "Token rejected: put a new token in token_file (or token) of source roma"
        in message["message"]
    )
    assert sim.token not in message["message"]
    sim.tokens = {sim.token}
    await passes(cfg, clock, 3, 60)
    assert [m["title"] for m in receiver.messages] == ["source roma error", "source roma recovered"]


async def test_a_notifier_hears_only_its_events(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(SimJob("a", [running(0.1), running(0.9), succeeded()]))
    cfg = configs.load(
        ["a"],
        notifiers={
            "chat": {"urls": [receiver.url("chat")], "on": ["started", "progress"]},
            "mail": {"urls": [receiver.url("mail")]},
        },
    )
    await passes(cfg, clock, 4, 60)
    assert receiver.titles("chat") == ["a progress", "a started"]
    assert receiver.titles("mail") == ["a succeeded"]


async def test_a_job_s_error_clock_starts_when_its_source_works_again(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, clock: Clock
) -> None:
    sim.add(SimJob("j", [http_error(500, "APIG.9999", "broken")]))
    cfg = configs.load(
        ["j"], notifiers={"ops": {"urls": [receiver.url()], "on": ["error", "recovered"]}}
    )
    good = set(sim.tokens)
    sim.tokens.clear()  # the token is revoked: every poll is refused (401)
    for _ in range(11):  # 10 minutes of a refused token: the source's error, not the job's
        await Daemon(cfg, clock).run_once()
        clock.advance(60)
    sim.tokens.update(good)  # a new token: the job's own trouble shows (HTTP 500)
    for _ in range(7):
        await Daemon(cfg, clock).run_once()
        clock.advance(60)
    titles = [m["title"] for m in receiver.messages]
    assert titles == ["source roma error", "source roma recovered", "j error"], titles
    job_error = receiver.messages[2]["message"]
    # Failing for five minutes of its own (error_after), not the fifteen since the token.
    assert "polling has failed for 5m" in job_error.splitlines()[0], job_error
