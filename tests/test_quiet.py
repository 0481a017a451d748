"""Quiet when asked: silences (command line and API) and quiet hours hold messages while
the watching goes on, and what they held is told in one summary when they end; real
daemons against the simulator and a webhook receiver."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from jobherald.config import Config
from jobherald.quiet import QuietHours, Silence, SilenceError, parse_window, silence_span
from jobherald.service import Daemon
from jobherald.sources.simulator import SimJob, Simulator, failed, running, succeeded
from tests.conftest import ConfigWriter, Receiver, jobherald, spawn_daemon, wait_for
from tests.test_http import free_port

BERLIN = "Europe/Berlin"


# -- quiet hours and silences, as read ---------------------------------------------------


def at(text: str) -> datetime:
    """A time in Berlin (winter: UTC+1), e.g. "2026-12-11 21:30" (a Friday)."""
    from zoneinfo import ZoneInfo

    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(BERLIN))


def test_quiet_hours_hold_their_days_and_cross_midnight() -> None:
    from jobherald.quiet import zone_named

    quiet = QuietHours(
        (parse_window("Mon-Fri 20:00-08:00"), parse_window("Sat-Sun")),
        zone_named(BERLIN),
        frozenset({"failed"}),
    )
    assert quiet.holds(at("2026-12-11 21:30"))  # Friday night
    assert quiet.holds(at("2026-12-12 07:59"))  # Saturday: the whole day
    assert quiet.holds(at("2026-12-14 07:59"))  # Monday before eight: a weekday's night
    assert not quiet.holds(at("2026-12-14 08:00"))
    assert not quiet.holds(at("2026-12-09 12:00"))  # a Wednesday noon
    # The zone decides, not UTC: 19:30 UTC is 20:30 in Berlin.
    assert quiet.holds(datetime(2026, 12, 9, 19, 30, tzinfo=UTC))
    assert not quiet.holds_kind("failed", at("2026-12-11 21:30"))
    assert quiet.holds_kind("succeeded", at("2026-12-11 21:30"))
    start, end = quiet.next_period(at("2026-12-09 12:00")) or (None, None)
    assert (start, end) == (at("2026-12-09 20:00"), at("2026-12-10 08:00"))
    # Friday evening's period runs on through the weekend to Monday morning.
    assert quiet.next_period(at("2026-12-11 12:00")) == (
        at("2026-12-11 20:00"),
        at("2026-12-14 08:00"),
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Mon-Fry 20:00-08:00", "'fry' is not a day (Mon Tue Wed Thu Fri Sat Sun)"),
        ("20:00-24:00", "'20:00-24:00': 24:00 is not a time of day (00:00 to 23:59)"),
        ("nights", "'nights' is not a day (Mon Tue Wed Thu Fri Sat Sun)"),
        ("8-20", "'8-20': give [DAYS ]HH:MM-HH:MM or DAYS"),
        ("Mon 08:00-08:00", "'Mon 08:00-08:00': the range starts and ends at 08:00: it is empty"),
    ],
)
def test_a_malformed_quiet_hours_entry_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_window(text)
    assert str(caught.value).startswith(problem)


async def test_check_config_refuses_bad_quiet_hours_and_shows_the_next_period(
    configs: ConfigWriter,
) -> None:
    bad = configs.write(
        [],
        notifiers={
            "oncall": {
                "urls": ["json://127.0.0.1:9/x"],
                "quiet_hours": ["Mon-Fri 20:00-08:00", "Sat-Sunday"],
                "timezone": "Europe/Berlinn",
            }
        },
    )
    code, _, err = await jobherald("check-config", "-c", str(bad))
    assert code == 2
    assert err.splitlines() == [
        f"{bad}: notifiers.oncall.quiet_hours[1]: 'sunday' is not a day "
        "(Mon Tue Wed Thu Fri Sat Sun)",
        f"{bad}: notifiers.oncall.timezone: 'Europe/Berlinn' is not a time zone name "
        "(e.g. Europe/Berlin, UTC)",
    ]
    good = configs.write(
        [],
        notifiers={
            "oncall": {
                "urls": ["json://127.0.0.1:9/x"],
                "quiet_hours": ["Mon-Sun 20:00-08:00"],
                "timezone": BERLIN,
                "urgent": ["failed"],
            }
        },
    )
    code, out, err = await jobherald("check-config", "-c", str(good))
    assert code == 0, err
    line = out.splitlines()[1]
    assert line.startswith("notifiers.oncall: quiet ")
    assert "20:00 to " in line or line.startswith("notifiers.oncall: quiet now, until ")
    assert line.endswith(" 08:00 (Europe/Berlin); urgent: failed")


def test_a_silence_matches_only_where_every_matcher_does() -> None:
    now = datetime.now(UTC)
    silence = Silence(
        id=1,
        job="nightly-*",
        source="roma",
        notifier=None,
        kinds=("failed",),
        everything=False,
        starts_at=now,
        ends_at=now + timedelta(hours=1),
        created_by="ops",
        reason="maintenance",
        created_at=now,
    )
    job = {"job": {"name": "nightly-7", "key": "j7", "id": "j7", "source": "roma"}}
    assert silence.matches("ops", "failed", job)
    assert not silence.matches("ops", "succeeded", job)
    other = {"job": {"name": "daily-7", "key": "d7", "id": "d7", "source": "roma"}}
    assert not silence.matches("ops", "failed", other)
    assert silence.active(now) and not silence.active(now + timedelta(hours=1))
    with pytest.raises(SilenceError, match="is in the past"):
        silence_span(None, "2020-01-01T00:00Z", now)
    start, end = silence_span("2h", None, now)
    assert end - start == timedelta(hours=2)


# -- real daemons -------------------------------------------------------------------------


@pytest.fixture
async def running_daemon() -> AsyncIterator[Callable[..., Daemon]]:
    started: list[tuple[Daemon, asyncio.Task[None]]] = []

    def run(cfg: Config, clock: Callable[[], datetime] | None = None) -> Daemon:
        daemon = Daemon(cfg, clock) if clock is not None else Daemon(cfg)
        started.append((daemon, asyncio.create_task(daemon.run())))
        return daemon

    yield run
    for daemon, _ in started:
        daemon.stop()
    await asyncio.wait_for(asyncio.gather(*(task for _, task in started)), 30)


def waiting_jobs(sim: Simulator, ids: list[str], ends: Callable[[str], object]) -> list[SimJob]:
    """Jobs that run until told to finish (their finish_at set)."""
    return [sim.add(SimJob(i, [running(0.4), ends(i)], finish_at=math.inf)) for i in ids]  # type: ignore[list-item]


def finish(jobs: list[SimJob]) -> None:
    for job in jobs:
        job.finish_at = time.monotonic()


async def test_a_silence_holds_its_jobs_messages_and_its_end_tells_them_once(
    sim: Simulator,
    receiver: Receiver,
    configs: ConfigWriter,
    running_daemon: Callable[..., Daemon],
) -> None:
    from jobherald import config as config_module

    ids = ["nightly-1", "nightly-2", "nightly-3", "other"]
    jobs = waiting_jobs(sim, ids, lambda i: failed() if i == "nightly-3" else succeeded())
    config = configs.write(ids, daemon={"poll_interval": "300ms"})
    daemon = running_daemon(config_module.load(config))
    await wait_for(lambda: daemon.ready, 20, "the daemon")
    code, out, err = await jobherald(
        "silence", "add", "-c", str(config), "--job", "nightly-*", "--for", "1h",
        "--reason", "nightly batch moved", "--by", "ops",
    )  # fmt: skip
    assert code == 0, err
    silence_id = int(out)
    assert out == f"{silence_id}\n"
    await asyncio.sleep(1.2)  # the lanes read silences again within a second
    finish(jobs)
    await wait_for(lambda: len(receiver.messages) >= 1, 20, "the unsilenced job's message")
    await wait_for(lambda: daemon.metrics.silenced.labels("ops")._value.get() >= 3, 20, "holds")
    assert [m["title"] for m in receiver.messages] == ["other succeeded"]
    code, out, _ = await jobherald("deliveries", "--json", "-c", str(config))
    held = [d for d in json.loads(out) if d["state"] == "silenced"]
    assert sorted(d["job_id"] for d in held) == ["nightly-1", "nightly-2", "nightly-3"]
    assert {d["held_by"] for d in held} == {f"silence:{silence_id}"}
    # The watching went on: the held jobs' ends are recorded.
    code, out, _ = await jobherald("status", "--json", "-c", str(config))
    assert {j["key"]: j["status"] for j in json.loads(out)}["nightly-3"] == "failed"

    code, out, err = await jobherald("silence", "expire", str(silence_id), "-c", str(config))
    assert code == 0, err
    await wait_for(lambda: len(receiver.messages) >= 2, 20, "the summary")
    await asyncio.sleep(1.0)  # nothing more comes
    assert len(receiver.messages) == 2
    summary = receiver.messages[1]
    assert summary["title"] == "While silenced: 3 jobs: 2 succeeded, 1 failed"
    body = summary["message"]
    assert f"Silence {silence_id} by ops ended (nightly batch moved): 3 messages held." in body
    for d in held:
        assert d["event_id"] in body
    code, out, _ = await jobherald("silence", "list", "--json", "-c", str(config))
    (shown,) = json.loads(out)
    assert shown["id"] == silence_id and not shown["active"] and shown["expired_at"]
    code, out, _ = await jobherald("deliveries", "--all", "--json", "-c", str(config))
    states = {d["job_id"]: d["state"] for d in json.loads(out) if d["job_id"]}
    assert states == {
        "nightly-1": "summarized",
        "nightly-2": "summarized",
        "nightly-3": "summarized",
        "other": "delivered",
    }
    metrics = daemon.metrics.render().decode()
    assert 'jobherald_silenced_total{notifier="ops"} 3.0' in metrics


async def test_quiet_hours_hold_all_but_urgent_kinds_and_tell_the_rest_when_they_end(
    sim: Simulator,
    receiver: Receiver,
    configs: ConfigWriter,
    running_daemon: Callable[..., Daemon],
) -> None:
    """The daemon's clock is set 15 seconds before a minute's end, and quiet hours are
    that minute: failures go out at once, the rest waits for one message at its end."""
    from jobherald import config as config_module

    ids = ["a", "b", "broke"]
    jobs = waiting_jobs(sim, ids, lambda i: failed() if i == "broke" else succeeded())
    offset = timedelta(0)

    def clock() -> datetime:
        return datetime.now(UTC) + offset

    real = datetime.now(UTC)
    minute_end = real.replace(second=0, microsecond=0) + timedelta(minutes=2)
    window = f"{minute_end - timedelta(minutes=1):%H:%M}-{minute_end:%H:%M}"
    notifier = {
        "urls": [receiver.url()],
        "quiet_hours": [window],
        "timezone": "UTC",
        "urgent": ["failed"],
    }
    # A second notifier on the same hours drops what they held.
    dropping = {**notifier, "urls": [receiver.url("drop")], "on_quiet_end": "drop"}
    cfg = config_module.load(
        configs.write(
            ids,
            daemon={"poll_interval": "300ms"},
            notifiers={"ops": notifier, "dropping": dropping},
        )
    )
    daemon = running_daemon(cfg, clock)
    await wait_for(lambda: daemon.ready, 20, "the daemon")
    quiet_ends = time.monotonic() + 15
    offset = (minute_end - timedelta(seconds=15)) - datetime.now(UTC)
    finish(jobs)
    await wait_for(lambda: len(receiver.messages) >= 2, 10, "the urgent messages")
    assert [m["title"] for m in receiver.messages] == ["broke failed"] * 2
    assert time.monotonic() < quiet_ends, "the machine was too slow for the window"
    await wait_for(lambda: len(receiver.messages) >= 3, 30, "the quiet hours' summary")
    assert time.monotonic() >= quiet_ends - 0.5
    await asyncio.sleep(6.0)  # the end of the quiet was looked for again since
    assert len(receiver.messages) == 3
    summary = receiver.messages[2]
    assert receiver.paths[2] == "/hook"
    assert summary["title"] == "During quiet hours: 2 jobs: 2 succeeded"
    assert "Quiet hours ended: 2 messages held." in summary["message"]
    code, out, _ = await jobherald("deliveries", "--all", "--json", "-c", str(cfg.path))
    assert code == 0
    states = sorted((d["notifier"], d["state"]) for d in json.loads(out) if d["kind"] != "summary")
    assert states == [
        ("dropping", "delivered"),
        ("dropping", "dropped"),
        ("dropping", "dropped"),
        ("ops", "delivered"),
        ("ops", "summarized"),
        ("ops", "summarized"),
    ]


async def test_the_api_takes_silences_only_with_its_token(
    sim: Simulator, configs: ConfigWriter, running_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    from jobherald import config as config_module

    port = free_port()
    token_file = tmp_path / "api.token"
    token_file.write_text("s3cret-api\n")
    base = f"http://127.0.0.1:{port}"
    configs.extra = [f'[http]\nlisten = "127.0.0.1:{port}"\napi_token_file = "{token_file}"\n']
    daemon = running_daemon(config_module.load(configs.write(["a"])))
    sim.add(SimJob("a", [running(0.5)]))
    await wait_for(lambda: daemon.ready, 20, "the daemon")
    body = {"job": "nightly-*", "for": "2h", "reason": "deploy", "by": "ci"}
    async with aiohttp.ClientSession() as http:

        async def post(headers: dict[str, str], payload: object = body) -> tuple[int, object]:
            async with http.post(f"{base}/api/silences", json=payload, headers=headers) as r:
                return r.status, await r.json()

        assert (await post({}))[0] == 401
        assert (await post({"Authorization": "Bearer wrong"}))[0] == 401
        good = {"Authorization": "Bearer s3cret-api"}
        status, added = await post(good)
        assert status == 201, added
        assert isinstance(added, dict) and added["job"] == "nightly-*"
        assert added["created_by"] == "ci" and added["active"]
        status, problem = await post(good, {"for": "2h", "reason": "x"})
        assert status == 400
        assert problem == {
            "error": "give at least one of job, source, notifier and kind "
            "(or all, to silence everything)"
        }
        status, problem = await post(good, {"all": True, "for": "soon", "reason": "x"})
        assert status == 400 and str(problem).startswith("{'error': \"for: bad duration 'soon'")
        async with http.get(f"{base}/api/silences") as r:
            listed = await r.json()
        assert [s["id"] for s in listed] == [added["id"]]
        async with http.get(f"{base}/") as r:
            assert 'data-silence="' in await r.text()
        async with http.delete(f"{base}/api/silences/{added['id']}") as r:
            assert r.status == 401
        async with http.delete(f"{base}/api/silences/{added['id']}", headers=good) as r:
            assert r.status == 200
            assert (await r.json())["active"] is False
        async with http.delete(f"{base}/api/silences/999", headers=good) as r:
            assert r.status == 404


async def test_without_an_api_token_the_api_takes_no_writes(
    sim: Simulator, configs: ConfigWriter, running_daemon: Callable[..., Daemon]
) -> None:
    from jobherald import config as config_module

    port = free_port()
    configs.extra = [f'[http]\nlisten = "127.0.0.1:{port}"\n']
    daemon = running_daemon(config_module.load(configs.write([])))
    await wait_for(lambda: daemon.ready, 20, "the daemon")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{port}/api/silences",
            json={"all": True, "for": "1h", "reason": "x"},
            headers={"Authorization": "Bearer anything"},
        ) as r,
    ):
        assert r.status == 403
        assert "api_token_file" in (await r.json())["error"]


async def test_silence_add_refuses_what_it_cannot_do_in_one_line(configs: ConfigWriter) -> None:
    config = configs.write(["a"])
    for args, said in [
        (["--for", "1h", "--reason", "x"], "give at least one of job, source, notifier"),
        (["--all", "--job", "a", "--for", "1h", "--reason", "x"], "--all: a silence of"),
        (["--source", "nope", "--for", "1h", "--reason", "x"], "--source: unknown source"),
        (["--kind", "finished", "--for", "1h", "--reason", "x"], "--kind: unknown kind"),
        (["--job", "a", "--reason", "x"], "give one of for"),
        (["--job", "a", "--for", "1h"], "--reason: say why"),
        (["--job", "a", "--until", "yesterday", "--reason", "x"], "--until: 'yesterday' is"),
        (["--job", "x" * 201, "--for", "1h", "--reason", "x"], "--job: give a pattern of 1 to"),
    ]:
        code, out, err = await jobherald("silence", "add", "-c", str(config), *args)
        assert code == 2 and out == "", (args, err)
        assert err.startswith("jobherald: silence add: ") and said in err, err
        assert len(err.splitlines()) == 1
    code, out, _ = await jobherald("silence", "list", "-c", str(config))
    assert out == "no silences\n"


# -- across replicas and kills ----------------------------------------------------------


async def _held(url: str) -> int:
    from tests.test_replicas import fetch

    rows = await fetch(url, "select count(*) as n from deliveries where state = 'silenced'")
    return int(rows[0]["n"]) if rows else 0


@pytest.mark.timeout(120)
async def test_two_replicas_honour_a_silence_and_tell_its_end_once(
    postgres: str, sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    from tests.test_replicas import fetch, live_replicas, stop_all, wait_until

    ids = [f"nightly-{i:02d}" for i in range(20)]
    jobs = waiting_jobs(sim, [*ids, "other"], lambda i: succeeded())
    config = configs.write(
        [*ids, "other"],
        daemon={"database": postgres, "poll_interval": "500ms", "lease": "4s"},
    )
    logs = [configs.folder / f"replica-{n}.log" for n in range(2)]
    procs = [await spawn_daemon(config, log) for log in logs]
    try:
        await wait_until(lambda: _count_live(live_replicas(postgres), 2), 60, "two live replicas")
        code, out, err = await jobherald(
            "silence", "add", "-c", str(config), "--job", "nightly-*", "--for", "1h",
            "--reason", "upgrade", "--by", "ops",
        )  # fmt: skip
        assert code == 0, err
        await asyncio.sleep(1.5)
        finish(jobs)
        await wait_for(lambda: len(receiver.messages) >= 1, 30, "the unsilenced message")
        await wait_until(lambda: _at_least(_held(postgres), 20), 30, "20 held deliveries")
        code, _, err = await jobherald("silence", "expire", out.strip(), "-c", str(config))
        assert code == 0, err
        await wait_for(lambda: len(receiver.messages) >= 2, 30, "the summary")
        await asyncio.sleep(6)  # each replica has looked for ended silences since
        titles = [m["title"] for m in receiver.messages]
        assert titles == ["other succeeded", "While silenced: 20 jobs: 20 succeeded"]
        summaries = await fetch(postgres, "select id from events where kind = 'summary'")
        assert len(summaries) == 1
        assert await stop_all(procs) == [0, 0]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert "Traceback" not in "".join(log.read_text() for log in logs)


async def _count_live(rows: Any, n: int) -> bool:
    return len(await rows) >= n


async def _at_least(count: Any, n: int) -> bool:
    return int(await count) >= n


@pytest.mark.timeout(120)
async def test_kill_9_while_a_silence_ends_loses_and_repeats_nothing(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    import signal
    import sqlite3

    ids = [f"nightly-{i:02d}" for i in range(30)]
    jobs = waiting_jobs(sim, ids, lambda i: succeeded())
    config = configs.write(ids, daemon={"poll_interval": "500ms"})
    database = configs.folder / "jobherald.db"
    log = configs.folder / "daemon.log"

    def held() -> int:
        with sqlite3.connect(database) as conn:
            return int(
                conn.execute("select count(*) from deliveries where state = 'silenced'").fetchone()[
                    0
                ]
            )

    proc = await spawn_daemon(config, log)
    try:
        await wait_for(lambda: "watching 30 jobs" in log.read_text(), 30, "the daemon")
        code, out, err = await jobherald(
            "silence", "add", "-c", str(config), "--all", "--for", "1h", "--reason", "r"
        )
        assert code == 0, err
        await asyncio.sleep(1.5)
        finish(jobs)
        await wait_for(lambda: held() == 30, 30, "30 held deliveries")
        code, _, err = await jobherald("silence", "expire", out.strip(), "-c", str(config))
        assert code == 0, err
        # Killed somewhere in the five seconds in which the daemon looks for its end.
        await asyncio.sleep(2.5)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        proc = await spawn_daemon(config, log)
        await wait_for(lambda: len(receiver.messages) >= 1, 30, "the summary")
        await asyncio.sleep(6)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    with sqlite3.connect(database) as conn:
        events = dict(conn.execute("select id, kind from events").fetchall())
        states = [r[0] for r in conn.execute("select state from deliveries")]
    summaries = [i for i, kind in events.items() if kind == "summary"]
    assert len(summaries) == 1
    assert sorted(states) == ["delivered"] + ["summarized"] * 30
    # One summary reached the receiver (a second only had the kill cut a send short),
    # carrying every held event.
    assert 1 <= len(receiver.messages) <= 2
    body = receiver.messages[0]["message"]
    assert receiver.messages[0]["title"] == "While silenced: 30 jobs: 30 succeeded"
    assert all(event_id in body for event_id, kind in events.items() if kind == "succeeded")
