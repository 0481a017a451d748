"""What an upstream or a config says cannot stop, crash or deceive the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobherald import config as config_module
from jobherald.errors import ConfigError
from jobherald.fetch import parse_retry_after
from jobherald.sources.simulator import Answer, SimJob, Simulator, http_error, running, succeeded
from jobherald.store import SCHEMA_HEAD
from tests.conftest import ConfigWriter, Receiver, Running, jobherald, start, wait_for

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("-5", None),  # no pause: the usual backoff applies
        ("0", None),
        ("Sat, 28 Nov 2026 11:00:00 GMT", None),  # a date past
        ("inf", None),
        ("-inf", None),
        ("nan", None),
        ("1e400", None),
        ("1" * 23, float("1" * 23)),
        (
            "Fri, 31 Dec 9999 23:59:59 GMT",
            (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - NOW).total_seconds(),
        ),
        ("Mon, 99 Foo 12345 99:99:99 GMT", None),
        ("soon", None),
        ("", None),
    ],
)
def test_any_retry_after_is_a_number_of_seconds_or_nothing(
    value: str, seconds: float | None
) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    ("where", "value"),
    [("source", "instance_id"), ("source", "project_id"), ("job", "instance_id")],
)
@pytest.mark.parametrize("bad", [".", ".."])
def test_an_id_that_would_change_the_request_path_is_refused(
    configs: ConfigWriter, where: str, value: str, bad: str
) -> None:
    if where == "source":
        keys = {"project_id": "p", value: bad}
        configs.extra = [
            '[sources.other]\ntype = "roma-connect"\nendpoint = "http://127.0.0.1:9"\n'
            'token = "t"\n' + "".join(f'{k} = "{v}"\n' for k, v in keys.items())
        ]
        path = configs.write([])
    else:
        path = configs.write([{"id": "a", value: bad}])
    with pytest.raises(ConfigError) as refused:
        config_module.load(path)
    (line,) = refused.value.problems
    assert f"{value}: {bad!r} is not an id (it would change the request's path)" in line


async def test_upstream_text_reaches_the_terminal_as_text(
    sim: Simulator, configs: ConfigWriter, tmp_path: Path
) -> None:
    from jobherald.service import Daemon

    sim.add(SimJob("a", [http_error(400, "ROMA.1", "bad [/oops] input [bold red]x[/]")]))
    sim.add(SimJob("b", [Answer(status="\x1b]0;pwned\x07\x1b[2JQueued [bold]now[/bold]")]))
    cfg = configs.load(["a", "b"])
    await Daemon(cfg).run_once()
    code, out, err = await jobherald("status", "-c", str(cfg.path))
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out
    assert "bad [/oops] input [bold red]x[/]" in out
    assert "[bold]now[/bold]" in out


@pytest.mark.parametrize(
    ("snippet", "says"),
    [
        (
            '[daemon]\npoll_interval = "nan"\n',
            "daemon.poll_interval: duration 'nan' is not a number of seconds",
        ),
        (
            '[daemon]\npoll_interval = "inf"\n',
            "daemon.poll_interval: duration 'inf' is not a number of seconds",
        ),
        (
            "[daemon]\nerror_after = 1e400\n",
            "daemon.error_after: duration inf is not a number of seconds",
        ),
        (
            '[daemon]\nstall_after = "99999999999h"\n',
            "daemon.stall_after: duration '99999999999h' is longer than ten years",
        ),
        ("x = " + "[" * 600 + "]" * 600 + "\n", "not valid TOML: nested too deeply"),
    ],
)
async def test_numbers_no_clock_can_keep_are_one_line_each(
    tmp_path: Path, snippet: str, says: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(snippet)
    code, out, err = await jobherald("check-config", "-c", str(path))
    assert (code, out) == (2, "")
    assert err == f"{path}: {says}\n"


async def test_config_files_that_are_not_files_are_one_line_each(tmp_path: Path) -> None:
    loop = tmp_path / "loop.toml"
    loop.symlink_to(tmp_path / "loop.toml")
    folder = tmp_path / "main.toml"
    folder.write_text('[daemon]\ninclude = ["jobs.d"]\n')
    (tmp_path / "jobs.d").mkdir()
    cases = {
        str(loop): f"{loop}: cannot read it: Too many levels of symbolic links",
        "/dev/zero": "/dev/zero: not a regular file (a FIFO, a device...)",
        str(
            folder
        ): f"{folder}: daemon.include[0]: jobs.d is a folder: name its files, e.g. jobs.d/*.toml",
    }
    for path, says in cases.items():
        code, out, err = await jobherald("check-config", "-c", path, timeout=20)
        assert (code, out, err) == (2, "", f"{says}\n"), path


async def test_drop_ins_that_are_not_files_are_one_line_each_and_never_hang(
    tmp_path: Path,
) -> None:
    main = tmp_path / "config.toml"
    main.write_text('[daemon]\ninclude = ["jobs.d/*.toml"]\n')
    dropins = tmp_path / "jobs.d"
    dropins.mkdir()
    (dropins / "10-ok.toml").write_text('[[jobs]]\nid = "a"\nsource = "s"\n')
    os.mkfifo(dropins / "20-fifo.toml")
    (dropins / "30-zero.toml").symlink_to("/dev/zero")
    (dropins / "40-loop.toml").symlink_to(dropins / "40-loop.toml")
    code, out, err = await jobherald("check-config", "-c", str(main), timeout=20)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "jobs.d/20-fifo.toml: not a regular file (a FIFO, a device...)",
        "jobs.d/30-zero.toml: not a regular file (a FIFO, a device...)",
        "jobs.d/40-loop.toml: cannot read it: Too many levels of symbolic links",
    ]


async def test_watch_keeps_a_name_as_typed(configs: ConfigWriter) -> None:
    config = configs.write([], daemon={"include": ["jobs.d/*.toml"]})
    name = "nightly 🌙 export of ${HOME} for $$5"
    code, _, err = await jobherald("watch", "j1", "-s", "roma", "--name", name, "-c", str(config))
    assert code == 0, err
    (job,) = config_module.load(config).jobs
    assert job.name == name


def _raw(body: bytes, **headers: str) -> Answer:
    return Answer(raw_body=body, headers=headers)


async def test_no_answer_can_crash_or_bloat_a_poll(
    sim: Simulator, configs: ConfigWriter, receiver: Receiver
) -> None:
    from jobherald.service import Daemon

    many = [{"resource_name": f"t{i}", "error_msg": "x" * 1000} for i in range(3000)]
    bomb = b'{"status": "RUNNING", "pad": "' + b" " * (40 * 2**20) + b'"}'
    answers = {
        "big": _raw(b'{"status": "RUNNING", "x": "' + b"a" * (5 * 2**20) + b'"}'),
        "bomb": _raw(gzip.compress(bomb, 1), **{"Content-Encoding": "gzip"}),
        "deep": _raw(b"[" * 100_000 + b"]" * 100_000),
        "deep403": Answer(http_status=403, raw_body=b'{"error_code": ' + b"[" * 100_000),
        "digits": _raw(b'{"status": "RUNNING", "progress_percent": ' + b"7" * 400 + b"}"),
        "years": Answer(
            json_body={
                "status": "RUNNING",
                "progress_percent": 0.5,
                "begin_time": "0001-01-01T00:00:00+05:00",
                "end_time": "9999-12-31T23:59:59-05:00",
            }
        ),
        "reasons": Answer(json_body={"status": "FAILED", "reasons": many}),
        "long": Answer(json_body={"status": "SUCCEEDED", "archive_id": "z" * 2_000_000}),
    }
    for job_id, answer in answers.items():
        sim.add(SimJob(job_id, [answer]))
    cfg = configs.load(list(answers))
    await Daemon(cfg).run_once()
    code, out, err = await jobherald("status", "--json", "-c", str(cfg.path))
    assert code == 0, err
    jobs = {job["id"]: job for job in json.loads(out)}
    errors = {
        job_id: jobs[job_id]["error"].split(" (request ")[0]
        for job_id in ("big", "bomb", "deep", "digits")
    }
    assert errors == {
        "big": "body: answer larger than 4 MB (the source's max_body)",
        "bomb": "body: answer larger than 4 MB (the source's max_body)",
        "deep": "body: answer is not JSON: nested too deep",
        "digits": "body: unexpected answer: progress_percent "
        + repr(int("7" * 400))[:39]
        + "… is not a number",
    }
    assert jobs["deep403"]["error"].startswith("HTTP 403: forbidden (request ")
    assert (jobs["years"]["status"], jobs["years"]["error"]) == ("running", None)
    assert jobs["reasons"]["status"] == "failed"
    reasons = jobs["reasons"]["reasons"]
    assert len(reasons) == 20
    assert reasons[-1]["error_msg"] == "and 2,981 more"
    assert all(len(r["error_msg"]) <= 300 for r in reasons)
    assert len(jobs["long"]["archive_id"]) == 1000
    sizes = {m["title"].split()[0]: len(m["message"]) for m in receiver.messages}
    assert sizes["reasons"] < 10_000 and sizes["long"] < 3_000, sizes
    assert "3000 reasons:" in next(
        m["message"] for m in receiver.messages if "reasons" in m["title"]
    )


async def test_a_small_max_body_is_the_sources_own(sim: Simulator, configs: ConfigWriter) -> None:
    from jobherald.service import Daemon

    sim.add(SimJob("a", [Answer(json_body={"status": "RUNNING", "pad": "p" * 2000})]))
    cfg = configs.load(["a"], source={"max_body": "1KB"})
    await Daemon(cfg).run_once()
    code, out, err = await jobherald("status", "--json", "-c", str(cfg.path))
    assert code == 0, err
    (job,) = json.loads(out)
    assert job["error"] == "body: answer larger than 1 KB (the source's max_body)"


async def test_upstream_text_cannot_forge_or_flood_a_log_line(
    sim: Simulator, configs: ConfigWriter
) -> None:
    forged = "2026-12-01T00:00:00+0000 ERROR jobherald: database lost"
    sim.add(SimJob("a", [Answer(status=f"Weird\n{forged}\x1b[2J" + "w" * 100_000)]))
    path = configs.write(["a"])
    code, _, err = await jobherald("run", "--once", "-c", str(path))
    assert code == 0, err
    lines = err.splitlines()
    assert not [line for line in lines if line.startswith(forged)], err
    assert "\x1b" not in err
    (line,) = [line for line in lines if "job a (a)" in line and "unknown" in line]
    assert "Weird\\n2026-12-01" in line and "\\x1b[2J" in line
    assert len(line) < 2200


async def test_a_token_file_that_is_not_text_is_one_line(configs: ConfigWriter) -> None:
    secret = configs.folder / "token"
    secret.write_bytes(b"\xff\xfe token")
    path = configs.write(["a"], source={"token_file": str(secret)})
    path.write_text(re.sub(r"(?m)^token = .*\n", "", path.read_text()))
    code, out, err = await jobherald("check-config", "-c", str(path))
    assert (code, out) == (2, "")
    assert err == f"{path}: sources.roma.token_file: cannot read {secret}: not UTF-8 text\n"


HANG = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (HANG, "template took longer than 2s: stopped on a sample event"),
        (
            "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
            "template does not render: it recurses too deep",
        ),
        (
            "{{ 'x' * 10**9 }}",
            "template does not render: a product over 1048576 items is not allowed",
        ),
        ("{{ 2 ** 100000 }}", "template does not render: an exponent above 1000 is not allowed"),
        ("{{ 'x' | center(1000000000) }}", "template does not render: used more than 256 MB"),
        (
            "{% for r in job.reasons %}{% for s in job.reasons %}{{ r }}{% endfor %}{% endfor %}",
            "template renders more than 64 KB",
        ),
    ],
)
async def test_check_config_refuses_a_template_that_cannot_finish(
    configs: ConfigWriter, body: str, says: str
) -> None:
    path = configs.write([], notifiers={"ops": {"urls": ["json://127.0.0.1:9/x"], "body": body}})
    code, out, err = await jobherald("check-config", "-c", str(path))
    assert (code, out, err) == (2, "", f"{path}: notifiers.ops.body: {says}\n")


async def test_a_template_that_hangs_on_a_real_event_costs_only_its_message(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, daemons: list[Running]
) -> None:
    # Fine on every sample event and for the job "fine"; a hang for the jobs named evil*.
    body = "{% if job.id.startswith('evil') %}" + HANG + "{% endif %}{{ job.name }} by template"
    sim.add(SimJob("fine", [succeeded()]))
    sim.add(SimJob("evil1", [running(0.2), running(0.3), succeeded()]))
    sim.add(SimJob("evil2", [running(0.2)] * 20 + [succeeded()]))
    sim.add(SimJob("busy", [running(0.2)]))
    notifiers = {"ops": {"urls": [receiver.url()], "body": body}}
    config = configs.write(
        ["fine", "evil1", "evil2", "busy"], notifiers=notifiers, daemon={"poll_interval": "200ms"}
    )
    daemon = await start(daemons, config)
    await wait_for(lambda: sim.polls("evil1") >= 3, 20, "evil1's last answer")
    polls_then = sim.polls("busy")
    await wait_for(lambda: len(receiver.messages) >= 2, 30, "evil1's message")
    assert sim.polls("busy") - polls_then >= 5, "polling went on while the template ran"
    await wait_for(lambda: len(receiver.messages) >= 3, 30, "evil2's message")
    bodies = {m["title"]: m["message"] for m in receiver.messages}
    assert bodies["fine succeeded"].startswith("fine by template")
    # The template that ran out of time once is not tried again until it changes.
    assert bodies["evil1 succeeded"].startswith("Job evil1 succeeded.")
    assert bodies["evil2 succeeded"].startswith("Job evil2 succeeded.")
    assert await daemon.stop() == 0
    output = daemon.output()
    assert output.count("notifier ops: template took longer than 2s: stopped;") == 1, output
    assert output.count("notifier ops:") == 1, output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    "change",
    [
        '[notifiers.bad]\nurls = ["json://127.0.0.1:9/x"]\nbody = """'
        '{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"""\n',
        f'[notifiers.bad]\nurls = ["json://127.0.0.1:9/x"]\nbody = """{HANG}"""\n',
        "x = " + "[" * 600 + "]" * 600 + "\n",
    ],
    ids=["recursive macro", "endless loop", "deep toml"],
)
async def test_a_reload_of_a_hostile_config_keeps_the_running_one(
    sim: Simulator, configs: ConfigWriter, daemons: list[Running], change: str
) -> None:
    sim.add(SimJob("a", [running(0.3)]))
    config = configs.write(["a"], daemon={"poll_interval": "200ms"})
    daemon = await start(daemons, config)
    await wait_for(lambda: sim.polls("a") >= 2, 20, "polls")
    text = config.read_text()
    config.write_text(change + text if change.startswith("x =") else text + "\n" + change)
    daemon.proc.send_signal(signal.SIGHUP)
    await wait_for(lambda: "reload refused: still running" in daemon.output(), 20, "refusal")
    before = sim.polls("a")
    await wait_for(lambda: sim.polls("a") >= before + 3, 20, "polls after the refusal")
    assert await daemon.stop() == 0
    assert "Traceback" not in daemon.output()


async def test_a_reload_the_database_refuses_keeps_the_running_config(
    sim: Simulator, configs: ConfigWriter, daemons: list[Running]
) -> None:
    import sqlite3

    sim.add(SimJob("a", [running(0.3)]))
    sim.add(SimJob("b", [running(0.3)]))
    config = configs.write(["a"], daemon={"poll_interval": "200ms"})
    db = configs.folder / "jobherald.db"
    daemon = await start(daemons, config)
    await wait_for(lambda: sim.polls("a") >= 2, 20, "polls")
    with sqlite3.connect(db) as conn:  # polls of known jobs still write; a new job cannot
        conn.execute(
            "create trigger no_new before insert on jobs "
            "begin select raise(abort, 'no new jobs today'); end"
        )
    configs.write(["a", "b"], daemon={"poll_interval": "200ms"})
    daemon.proc.send_signal(signal.SIGHUP)
    await wait_for(lambda: "reload refused: still running" in daemon.output(), 20, "refusal")
    assert "reload refused: the database failed: no new jobs today" in daemon.output()
    before = sim.polls("a")
    await wait_for(lambda: sim.polls("a") >= before + 3, 20, "polls after the refusal")
    assert sim.polls("b") == 0

    with sqlite3.connect(db) as conn:
        conn.execute("drop trigger no_new")
    daemon.proc.send_signal(signal.SIGHUP)
    await wait_for(lambda: sim.polls("b") >= 2, 20, "the new job polled after a second reload")
    assert await daemon.stop() == 0
    assert "Traceback" not in daemon.output()


@pytest.mark.parametrize("job_id", ["a/b", "../../etc/evil", "..", ""])
async def test_watch_refuses_an_id_that_is_no_file_name(configs: ConfigWriter, job_id: str) -> None:
    config = configs.write([], daemon={"include": ["jobs.d/*.toml"]})
    (configs.folder / "jobs.d").mkdir()
    code, out, err = await jobherald("watch", job_id, "-s", "roma", "-c", str(config))
    assert (code, out) == (2, "")
    assert err.endswith(f"bad job id {job_id!r}: letters, digits and _.:- only\n"), err
    assert list((configs.folder / "jobs.d").iterdir()) == []


async def test_a_database_that_is_no_database_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "jh.db").write_bytes(b"\x13" * 10_000)
    newer = tmp_path / "newer"
    newer.mkdir()
    base = '[http]\nlisten = ""\n[daemon]\ndatabase = "{}"\n'
    config = tmp_path / "c.toml"
    config.write_text(base.format("sqlite:///jh.db"))
    for command in (["db", "current"], ["status"], ["run", "--once"]):
        code, out, err = await jobherald(*command, "-c", str(config))
        assert (code, out) == (1, ""), command
        db = tmp_path / "jh.db"
        assert (
            err
            == f"jobherald: cannot open database sqlite+aiosqlite:///{db}: file is not a database\n"
        )
    url = "postgresql://jh@127.0.0.1:1/jh?password=hunter2&sslmode=disable"
    config.write_text(base.format(url))
    for command in (["db", "current"], ["run", "--once"]):
        code, out, err = await jobherald(*command, "-c", str(config))
        assert (code, out) == (1, ""), command
        assert "hunter2" not in err and "Traceback" not in err
        assert err.startswith(
            "jobherald: cannot open database "
            "postgresql+asyncpg://jh@127.0.0.1:1/jh?password=***&sslmode=disable: "
        ), err
        assert len(err.splitlines()) == 1


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """PATH cannot be written, not even by root (a mode bit would not stop root)."""
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


async def test_a_database_that_is_read_only_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[http]\nlisten = ""\n[daemon]\ndatabase = "sqlite:///jh.db"\n')
    assert (await jobherald("run", "--once", "-c", str(config)))[0] == 0
    db = tmp_path / "jh.db"
    with immutable(db):
        assert (await jobherald("db", "current", "-c", str(config)))[1].startswith(SCHEMA_HEAD)
        assert (await jobherald("status", "-c", str(config)))[:2] == (0, "no jobs\n")
        for command in (["run", "--once"], ["run"]):
            code, out, err = await jobherald(*command, "-c", str(config))
            assert (code, out) == (1, ""), command
            assert err.splitlines()[-1] == (
                "jobherald: the database failed: attempt to write a readonly database"
            )
            assert "Traceback" not in err


async def test_a_database_newer_than_jobherald_is_left_alone(tmp_path: Path) -> None:
    import sqlite3

    config = tmp_path / "c.toml"
    config.write_text('[http]\nlisten = ""\n[daemon]\ndatabase = "sqlite:///jh.db"\n')
    assert (await jobherald("run", "--once", "-c", str(config)))[0] == 0
    with sqlite3.connect(tmp_path / "jh.db") as conn:
        conn.execute("update alembic_version set version_num = '0099'")
    code, out, err = await jobherald("db", "current", "-c", str(config))
    assert (code, err) == (0, "")
    assert out.startswith("0099 (newer than this jobherald knows, whose newest is 00")
    assert "db upgrade" not in out
    for command in (["status"], ["db", "upgrade"], ["run", "--once"]):
        code, out, err = await jobherald(*command, "-c", str(config))
        assert (code, out) == (1, ""), command
        assert err.startswith(
            f"jobherald: database sqlite+aiosqlite:///{tmp_path}/jh.db has schema 0099, newer than this "
            "jobherald knows"
        ), err
    assert sorted(p.name for p in tmp_path.iterdir() if "before" in p.name) == []


async def test_a_database_that_refuses_writes_is_logged_once_per_outage(
    sim: Simulator, configs: ConfigWriter, daemons: list[Running]
) -> None:
    import sqlite3

    sim.add(SimJob("a", [running(i / 100) for i in range(1, 100)]))
    sim.add(SimJob("b", [running(i / 100) for i in range(1, 100)]))
    config = configs.write(["a", "b"], daemon={"poll_interval": "100ms"})
    daemon = await start(daemons, config)
    await wait_for(lambda: sim.polls("a") >= 2, 20, "polls")
    with sqlite3.connect(configs.folder / "jobherald.db") as conn:
        conn.execute("drop table transitions")
    before = sim.polls("a")
    await wait_for(lambda: sim.polls("a") >= before + 10, 20, "polls during the outage")
    assert await daemon.stop() == 0
    output = daemon.output()
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1, output
    assert "no such table: transitions" in errors[0]
    assert "Traceback" not in output


async def test_a_database_with_damaged_pages_is_one_line_and_no_row_data(
    sim: Simulator, configs: ConfigWriter
) -> None:
    secret_name = "payroll of " + "x" * 300
    sim.add(SimJob("a", [running(0.5)]))
    jobs = [{"id": f"j{i}", "name": f"{secret_name} {i}"} for i in range(200)]
    config = configs.write([*jobs, "a"])
    assert (await jobherald("run", "--once", "-c", str(config), timeout=60))[0] == 0
    db = configs.folder / "jobherald.db"
    with db.open("r+b") as handle:  # every page after the first three: garbage
        handle.seek(3 * 4096)
        handle.write(b"\xde\xad" * ((db.stat().st_size - 3 * 4096) // 2))
    for command in (["status"], ["history", "a"], ["deliveries"], ["run", "--once"]):
        code, out, err = await jobherald(*command, "-c", str(config), timeout=60)
        assert (code, out) == (1, ""), (command, err)
        assert err.startswith("jobherald: ") and len(err.splitlines()) == 1, err
        assert err.endswith(": database disk image is malformed\n"), err
        assert "payroll" not in err


async def test_a_token_file_that_turns_to_binary_is_the_jobs_error(
    sim: Simulator, configs: ConfigWriter
) -> None:
    from jobherald.service import Daemon

    sim.add(SimJob("a", [running(0.5)]))
    secret = configs.folder / "token"
    secret.write_text(sim.token)
    path = configs.write(["a"], source={"token_file": str(secret)})
    path.write_text(re.sub(r"(?m)^token = .*\n", "", path.read_text()))
    cfg = config_module.load(path)
    secret.write_bytes(b"\xff\xfe" + sim.token.encode())  # an outside refresher gone wrong
    await Daemon(cfg).run_once()
    secret.write_text(sim.token)  # mended, so that `status` reads the config
    code, out, err = await jobherald("status", "--json", "-c", str(path))
    assert code == 0, err
    (job,) = json.loads(out)
    assert job["error"] == f"auth: cannot read token_file {secret}: not UTF-8 text"
    assert sim.polls("a") == 0


async def test_upstream_text_reaches_the_terminal_without_escapes(tmp_path: Path) -> None:
    """An archive given up with a reason that retitles the terminal (OSC 0) and turns
    text right to left (U+202E): `history` prints it with neither."""
    from jobherald.model import JobView, Outcome, State, Transition
    from jobherald.store import Claimer, JobIdentity, Store

    config = tmp_path / "c.toml"
    config.write_text('[http]\nlisten = ""\n[daemon]\ndatabase = "sqlite:///jh.db"\n')
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'jh.db'}")
    me = Claimer("token", "here")
    try:
        await store.sync_jobs([JobIdentity("exp", "export", "roma", "i")], NOW)
        view = JobView("exp", state=State.SUCCEEDED, raw_status="SUCCEEDED", archive_id="a1")
        t = Transition(NOW, None, State.SUCCEEDED, 1.0, "SUCCEEDED")
        await store.record("exp", Outcome(view, True, t), NOW, [], archive=("a1", "roma"))
        (claim,) = await store.claim_archives(NOW, me, 1)
        evil = "bad \x1b]0;owned\x07 archive \u202egnp.exe"
        assert await store.archive_failed(claim.job_id, me, evil, None, NOW, True, [], NOW)
    finally:
        await store.close()
    code, out, err = await jobherald("history", "exp", "-c", str(config))
    assert code == 0, err
    assert "archive given up" in out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "bad \N{REPLACEMENT CHARACTER}]0;owned\N{REPLACEMENT CHARACTER} archive" in out


async def test_a_planted_lock_gets_no_process_signalled(configs: ConfigWriter) -> None:
    """Whoever can write the database's folder can hold its lock and name another
    process in it: `--reload` outside systemd signals nothing then, and says what it
    found."""
    import asyncio
    import signal
    import socket
    import sys

    path = configs.write([], daemon={"include": ["jobs.d/*.toml"]})
    victim = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)"
    )
    lock = configs.folder / "jobherald.db.lock"
    planted = json.dumps(
        {"what": "the jobherald daemon", "host": socket.gethostname(), "pid": victim.pid}
    )
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        f"os.write(fd, {planted.encode()!r})\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert (await holder.stdout.readline()).strip() == b"held"
        code, _, err = await jobherald(
            "watch", "x", "--source", "roma", "--reload", "-c", str(path)
        )
        assert code == 1
        assert f"names pid {victim.pid}, but the kernel says that process does not hold" in err
        await asyncio.sleep(0.2)
        assert victim.returncode is None  # not signalled
    finally:
        for proc in (victim, holder):
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()


async def test_upstream_text_is_escaped_for_the_format_it_goes_into(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    """A reason holding HTML, markdown and a channel mention: html-escaped in html,
    shown as itself in markdown, unchanged in text but for the mention, which pings
    nobody in any format."""
    from jobherald.service import Daemon
    from jobherald.sources.simulator import failed

    evil = "<img src=x onerror=alert(1)> [click](http://evil) <!channel> @everyone"
    reasons = [
        {"resource_type": "app", "resource_name": "orders", "error_code": "E1", "error_msg": evil}
    ]
    sim.add(SimJob("f", [failed()], reasons=reasons))
    cfg = configs.load(
        [{"id": "f", "name": "nightly <b>"}],
        notifiers={
            # ?format=: the receiver takes the body as written (else apprise would turn
            # html into text for a json:// URL).
            f: {"urls": [receiver.url(f) + f"?format={f}"], "format": f, "digest_after": 0}
            for f in ("html", "markdown", "text")
        },
    )
    await Daemon(cfg).run_once()
    by_path = dict(zip(receiver.paths, receiver.messages, strict=True))
    html_body = by_path["/html"]["message"]
    assert "<img" not in html_body and "&lt;img src=x onerror=alert(1)&gt;" in html_body
    assert "nightly &lt;b&gt;" in html_body
    markdown_body = by_path["/markdown"]["message"]
    assert "\\<img src=x onerror=alert\\(1\\)\\> \\[click\\]\\(http://evil\\)" in markdown_body
    text_body = by_path["/text"]["message"]
    assert "<img src=x onerror=alert(1)> [click](http://evil)" in text_body
    for body in (html_body, markdown_body, text_body):
        assert "<!channel>" not in body and "@everyone" not in body
    assert by_path["/text"]["title"] == "nightly <b> failed"


class Trickler:
    """A webhook that answers `HTTP/1.1 200 OK` and then one header byte every half
    second, for ever: no read timeout of a client ever trips on it."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\n")
            while True:
                await writer.drain()
                await asyncio.sleep(0.5)
                writer.write(b"X")
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def trickler() -> AsyncIterator[Trickler]:
    server = Trickler()
    await server.start()
    yield server
    await server.stop()


async def test_a_trickling_webhook_fails_on_time_and_holds_nothing_else_up(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter, trickler: Trickler
) -> None:
    """64 URLs that trickle their answers (more than any pool of send threads): each
    attempt fails after send_timeout (and is retried later), the healthy notifier beside
    them has its message, and `run --once` returns."""
    import time

    from jobherald.service import Daemon
    from jobherald.store import Store

    sim.add(SimJob("a", [succeeded()]))
    slow = [f"json://127.0.0.1:{trickler.port}/hook{i}" for i in range(64)]
    notifiers = {"slow": {"urls": slow, "send_timeout": "2s"}, "ok": {"urls": [receiver.url()]}}
    cfg = configs.load(["a"], notifiers=notifiers)
    began = time.monotonic()
    await asyncio.wait_for(Daemon(cfg).run_once(), 30)
    assert time.monotonic() - began < 15
    assert receiver.titles() == ["a succeeded"]
    assert trickler.connections == 64
    store = await Store.open(cfg.database_url)
    try:
        rows = await store.deliveries(["pending"])
    finally:
        await store.close()
    assert len(rows) == 64
    assert {(r.notifier, r.attempts) for r in rows} == {("slow", 1)}
    assert {r.last_error for r in rows} == {"no answer within send_timeout (2s)"}


async def test_sigterm_ends_the_daemon_on_time_whatever_a_webhook_does(
    sim: Simulator,
    receiver: Receiver,
    configs: ConfigWriter,
    trickler: Trickler,
    daemons: list[Running],
) -> None:
    import time

    sim.add(SimJob("a", [succeeded()]))
    notifiers = {
        "slow": {"urls": [f"json://127.0.0.1:{trickler.port}/hook"]},  # send_timeout 30 s
        "ok": {"urls": [receiver.url()]},
    }
    path = configs.write(["a"], notifiers=notifiers, daemon={"shutdown_timeout": "2s"})
    daemon = await start(daemons, path)
    await wait_for(lambda: len(receiver.messages) == 1 and trickler.connections == 1, 20, "sends")
    began = time.monotonic()
    assert await daemon.stop(timeout=30) == 0
    assert time.monotonic() - began < 2 + 5, daemon.output()[-2000:]


async def test_a_slow_template_delays_only_its_own_notifier(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    """A title slow on real data (a loop over the job name's length cubed: quick on the
    samples check-config renders, half a second on these names) beside a trivial
    template: the trivial one's messages do not wait behind the slow one's renders."""
    from jobherald.service import Daemon

    names = [f"{'n' * 28}-{i:03d}" for i in range(5)]
    for i in range(5):
        sim.add(SimJob(f"j{i}", [succeeded()]))
    slow = (
        "{% set x = namespace(n=0) %}{% for i in range((job.name|length) ** 3) %}"
        "{% set x.n = x.n + 1 %}{% endfor %}{{ job.name }}"
    )
    notifiers = {
        "slow": {"urls": [receiver.url("slow")], "title": slow, "digest_after": 0},
        "fast": {"urls": [receiver.url("fast")], "title": "{{ job.name }} done", "digest_after": 0},
    }
    path = configs.write(
        [{"id": f"j{i}", "name": n} for i, n in enumerate(names)], notifiers=notifiers
    )
    code, _, err = await jobherald("check-config", "-c", str(path))
    assert code == 0, err
    await Daemon(
        configs.load([{"id": f"j{i}", "name": n} for i, n in enumerate(names)], notifiers=notifiers)
    ).run_once()
    arrived = {
        p: sorted(at for at, q in zip(receiver.received_at, receiver.paths, strict=True) if q == p)
        for p in ("/slow", "/fast")
    }
    assert len(arrived["/slow"]) == 5 and len(arrived["/fast"]) == 5, arrived
    assert arrived["/fast"][-1] < arrived["/slow"][1], arrived


async def test_healthz_is_degraded_while_a_message_is_long_overdue(
    configs: ConfigWriter, trickler: Trickler
) -> None:
    """A message due for eleven minutes (its URL trickles: the send in flight holds it):
    /healthz answers 503 "degraded", naming the notifier."""
    import aiohttp

    from jobherald.notify import Sender
    from jobherald.service import Daemon
    from jobherald.store import JobIdentity, NewEvent, Store
    from tests.test_http import free_port

    port = free_port()
    configs.extra = [f'[http]\nlisten = "127.0.0.1:{port}"\n']
    notifiers = {"slow": {"urls": [f"json://127.0.0.1:{trickler.port}/hook"]}}
    cfg = configs.load([], notifiers=notifiers, daemon={"shutdown_timeout": "1s"})
    store = await Store.open(cfg.database_url)
    try:
        long_ago = datetime.now(UTC) - timedelta(minutes=11)
        await store.sync_jobs([JobIdentity("a", "A", "roma", "i")], long_ago)
        (target,) = Sender(cfg.notifiers).targets("slow")
        event = NewEvent("succeeded", {"job": {"id": "a", "name": "A"}}, [target])
        await store.record_events([event], long_ago, job_id="a")
    finally:
        await store.close()
    daemon = Daemon(cfg)
    task = asyncio.create_task(daemon.run())
    try:
        await wait_for(lambda: daemon.ready and trickler.connections == 1, 20, "the send")
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/healthz") as answer,
        ):
            assert answer.status == 503
            assert (await answer.text()).startswith(
                "degraded: a message to notifier slow has been due for 11 minutes"
            )
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 30)
