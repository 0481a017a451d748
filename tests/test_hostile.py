"""What an upstream or a config says cannot stop, crash or deceive the daemon."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobherald import config as config_module
from jobherald.errors import ConfigError
from jobherald.fetch import parse_retry_after
from jobherald.simulator import Answer, SimJob, Simulator, http_error
from tests.conftest import ConfigWriter, jobherald

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
