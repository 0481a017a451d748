"""What an upstream or a config says cannot stop, crash or deceive the daemon."""

from __future__ import annotations

import gzip
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobherald import config as config_module
from jobherald.errors import ConfigError
from jobherald.fetch import parse_retry_after
from jobherald.simulator import Answer, SimJob, Simulator, http_error
from tests.conftest import ConfigWriter, Receiver, jobherald

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("-5", 0.0),
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
        "/dev/zero": "/dev/zero: not a regular file",
        str(
            folder
        ): f"{folder}: daemon.include[0]: jobs.d is a folder: name its files, e.g. jobs.d/*.toml",
    }
    for path, says in cases.items():
        code, out, err = await jobherald("check-config", "-c", path, timeout=20)
        assert (code, out, err) == (2, "", f"{says}\n"), path


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
    assert "reasons (3000):" in next(
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
