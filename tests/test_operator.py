"""Operator commands: db, watch, forget, status --watch."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from jobherald.service import Daemon
from jobherald.sources.simulator import SimJob, Simulator, running
from jobherald.store import Store, head_revision
from tests.conftest import ConfigWriter, Receiver, Running, jobherald, start, wait_for


async def test_db_current_and_upgrade(configs: ConfigWriter) -> None:
    path = configs.write([])
    code, out, _ = await jobherald("db", "current", "-c", str(path))
    assert (code, out) == (
        0,
        f"no database yet at sqlite+aiosqlite:///{configs.folder}/jobherald.db\n",
    )
    old = await Store.open(f"sqlite+aiosqlite:///{configs.folder}/jobherald.db", migrate=False)
    await old.migrate("0001")
    await old.close()
    code, out, _ = await jobherald("db", "current", "-c", str(path))
    assert out == f"0001 (newest is {head_revision()}: run `jobherald db upgrade`)\n"
    code, out, err = await jobherald("db", "upgrade", "-c", str(path))
    assert code == 0
    assert out.startswith(f"database at {head_revision()} (newest)")
    assert (
        f"copied {configs.folder}/jobherald.db to {configs.folder}/jobherald.db.before-0001" in err
    )
    code, out, _ = await jobherald("db", "current", "-c", str(path))
    assert out == f"{head_revision()} (newest)\n"


async def test_watch_writes_a_checked_drop_in_and_forget_removes_it(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    sim.add(SimJob("n1", [running(0.4)]))
    path = configs.write(["a"], daemon={"include": ["jobs.d/*.toml"]})
    code, out, _ = await jobherald(
        "watch", "n1", "--source", "roma", "--name", "nightly", "-c", str(path)
    )
    assert code == 0
    dropin = configs.folder / "jobs.d" / "n1.toml"
    assert out == f"watching n1 (nightly) from roma: wrote {dropin}\n"
    assert dropin.read_text() == '[[jobs]]\nid = "n1"\nsource = "roma"\nname = "nightly"\n'
    counts = await Daemon(configs.load(["a"], daemon={"include": ["jobs.d/*.toml"]})).run_once()
    assert counts == {"pending": 1, "running": 1}
    code, _, err = await jobherald("watch", "n1", "--source", "roma", "-c", str(path))
    assert (code, err) == (
        2,
        "jobherald: job n1 is already watched (jobs.d/n1.toml: jobs[0] (id 'n1'))\n",
    )
    code, _, err = await jobherald("watch", "n2", "--source", "roma-prd", "-c", str(path))
    assert (code, err) == (
        2,
        "jobs.d/n2.toml: jobs[0] (id 'n2').source: unknown source 'roma-prd' (known: roma)\n",
    )
    assert sorted(p.name for p in (configs.folder / "jobs.d").iterdir()) == ["n1.toml"]
    code, out, _ = await jobherald("forget", "n1", "-c", str(path))
    assert (code, out) == (0, f"forgot n1: removed {dropin} (its history is kept)\n")
    code, _, err = await jobherald("forget", "a", "-c", str(path))
    assert (code, err) == (
        2,
        f"jobherald: job a is in {path} itself: remove its [[jobs]] table there\n",
    )
    code, out, _ = await jobherald("history", "n1", "--json", "-c", str(path))
    assert code == 0 and out.startswith("[")


async def test_status_watch_redraws_when_a_job_changes(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    sim.add(SimJob("a", [running(0.2), running(0.7)]))
    cfg = configs.load([{"id": "a", "name": "nightly"}])
    await Daemon(cfg).run_once()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobherald",
        "status",
        "--watch",
        "--every",
        "0.2",
        "-c",
        str(cfg.path),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.stdout is not None
    seen: list[str] = []

    async def read_until(text: str) -> None:
        while not any(text in line for line in seen):
            seen.append((await asyncio.wait_for(proc.stdout.readline(), 10)).decode())  # type: ignore[union-attr]

    try:
        await read_until("20%")
        await Daemon(cfg).run_once()
        await read_until("70%")
    finally:
        proc.terminate()
        await proc.wait()
    bars = [line for line in seen if "nightly" in line]
    assert "██░░░░░░░░ 20%" in bars[0]
    assert "███████░░░ 70%" in bars[-1]


def test_the_unit_file_is_what_the_service_needs() -> None:
    unit = (Path(__file__).parent.parent / "systemd" / "jobherald.service").read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/local/bin/jobherald run",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=jobherald",
        "ConfigurationDirectory=jobherald",
    ):
        assert line in unit.splitlines()
    assert any(line.startswith("WatchdogSec=") for line in unit.splitlines())


async def test_the_state_directory_holds_the_database_under_systemd(
    configs: ConfigWriter, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = configs.write([])
    code, out, _ = await jobherald(
        "db", "upgrade", "-c", str(path), env={"STATE_DIRECTORY": str(state)}
    )
    assert code == 0
    assert out.endswith(f"sqlite+aiosqlite:///{state}/jobherald.db\n")
    with sqlite3.connect(state / "jobherald.db") as conn:
        assert conn.execute("select version_num from alembic_version").fetchall() == [
            (head_revision(),)
        ]


async def test_watch_reload_without_systemd_signals_the_daemon_holding_the_database(
    sim: Simulator, configs: ConfigWriter, daemons: list[Running]
) -> None:
    sim.add(SimJob("a", [running(0.4)]))
    sim.add(SimJob("late", [running(0.7)]))
    path = configs.write(["a"], daemon={"include": ["jobs.d/*.toml"]})
    code, _, err = await jobherald("watch", "x", "--source", "roma", "--reload", "-c", str(path))
    # No systemd here and no daemon: the drop-in is written, the reload says why not.
    assert code == 1 and "no jobherald daemon holds" in err, err
    (configs.folder / "jobs.d" / "x.toml").unlink()
    daemon = await start(daemons, path)
    await wait_for(lambda: "watching 1 job " in daemon.output(), 20, "the daemon")
    code, out, err = await jobherald(
        "watch", "late", "--source", "roma", "--reload", "-c", str(path)
    )
    assert code == 0, err
    assert f"sent SIGHUP to the jobherald daemon (pid {daemon.proc.pid}): it reloads" in out
    await wait_for(lambda: sim.polls("late") >= 1, 20, "the new job polled after the reload")
    assert await daemon.stop() == 0


async def test_commands_run_by_hand_read_the_credentials_the_unit_loads(
    sim: Simulator, receiver: Receiver, tmp_path: Path
) -> None:
    sim.add(SimJob("a", [running(0.4)]))
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "roma.token").write_text(sim.token + "\n")
    units = tmp_path / "units"
    (units / "jobherald.service.d").mkdir(parents=True)
    (units / "jobherald.service").write_text("[Service]\nExecStart=/usr/local/bin/jobherald run\n")
    (units / "jobherald.service.d" / "secrets.conf").write_text(
        f"[Service]\nLoadCredential=roma.token:{secrets / 'roma.token'}\n"
    )
    config = tmp_path / "config.toml"
    config.write_text(
        '[daemon]\ndatabase = "sqlite:///jh.db"\ninclude = ["jobs.d/*.toml"]\n\n[http]\nlisten = ""\n\n'
        f'[sources.roma]\ntype = "roma-connect"\nendpoint = "{sim.url}"\n'
        f'project_id = "{sim.project_id}"\ninstance_id = "{next(iter(sim.instances))}"\n'
        'token_file = "${CREDENTIALS_DIRECTORY}/roma.token"\n\n'
        f'[notifiers.ops]\nurls = ["{receiver.url()}"]\n\n[[jobs]]\nid = "a"\nsource = "roma"\n',
        encoding="utf-8",
    )
    env = {"JOBHERALD_UNIT_DIR": str(units)}
    assert "CREDENTIALS_DIRECTORY" not in os.environ
    code, out, err = await jobherald("check-config", "-c", str(config), env=env)
    assert code == 0 and out.endswith(": ok (1 job, 1 source, 1 notifier)\n"), err
    code, out, err = await jobherald("watch", "b", "--source", "roma", "-c", str(config), env=env)
    assert code == 0 and out.startswith("watching b from roma"), err
    code, _, err = await jobherald("run", "--once", "-c", str(config), env=env)
    assert code == 0, err
    assert sim.polls("a") == 1  # authorised with the credential's token
    # A credential the unit does not load is one line, naming it.
    (units / "jobherald.service.d" / "secrets.conf").write_text("[Service]\n")
    code, _, err = await jobherald("check-config", "-c", str(config), env=env)
    assert (code, err) == (
        2,
        f"{config}: sources.roma.token_file: environment variable CREDENTIALS_DIRECTORY is not "
        "set, and the installed jobherald.service loads no credential 'roma.token' "
        "(LoadCredential=)\n",
    )
    # The commands that send nothing read no secret: they work without the credential.
    code, out, err = await jobherald("status", "--json", "-c", str(config), env=env)
    assert code == 0 and '"id": "a"' in out, err


async def test_commands_that_send_nothing_never_read_a_secret(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[daemon]\ndatabase = "sqlite:///jh.db"\nheartbeat_url = "${JH_UNSET_PING}"\n\n'
        '[http]\nlisten = "127.0.0.1:9781"\ntoken_file = "/nonexistent/http.token"\n\n'
        '[sources.roma]\ntype = "roma-connect"\nendpoint = "https://roma.example"\n'
        'project_id = "p"\ninstance_id = "i"\ntoken_file = "/nonexistent/roma.token"\n\n'
        '[sources.api]\ntype = "http-json"\nurl = "https://api.example/jobs/{job_id}"\n'
        'status = "state"\nsucceeded = ["done"]\nfailed = ["broken"]\n'
        'headers = { X-Key = "${JH_UNSET_KEY}" }\n'
        'auth = { method = "basic", user = "me", password = "${JH_UNSET_PASSWORD}" }\n\n'
        '[notifiers.ops]\nurls = ["json://127.0.0.1:9/x"]\n\n'
        '[[jobs]]\nid = "a"\nsource = "roma"\n\n[[jobs]]\nid = "b"\nsource = "api"\n',
        encoding="utf-8",
    )
    for command in (
        ("status",),
        ("status", "--json"),
        ("history", "a"),
        ("deliveries",),
        ("replicas",),
        ("db", "current"),
    ):
        code, out, err = await jobherald(*command, "-c", str(config))
        assert code == 0, (command, err)
        assert "nonexistent" not in out + err and "JH_UNSET" not in out + err, command
    # What needs them says which ones are missing, one line each.
    code, _, err = await jobherald("check-config", "-c", str(config))
    assert code == 2
    assert "environment variable JH_UNSET_PASSWORD is not set" in err
    assert "environment variable JH_UNSET_PING is not set" in err
    env = {"JH_UNSET_PING": "https://ping.example", "JH_UNSET_KEY": "k", "JH_UNSET_PASSWORD": "p"}
    code, _, err = await jobherald("check-config", "-c", str(config), env=env)
    assert code == 2
    assert "sources.roma.token_file: cannot read /nonexistent/roma.token" in err
    assert "http.token_file: cannot read /nonexistent/http.token" in err


@pytest.mark.xdist_group("port-9781")  # run on the demo's worker: never beside it
async def test_the_suite_s_daemons_need_no_fixed_port(
    sim: Simulator, configs: ConfigWriter, daemons: list[Running]
) -> None:
    """On a machine where jobherald already listens on its default 127.0.0.1:9781, a
    daemon started the way every test starts one runs all the same."""
    import socket

    holder = socket.socket()
    try:
        try:
            holder.bind(("127.0.0.1", 9781))
            holder.listen()
        except OSError:
            pass  # something holds it already: the case this test is about
        sim.add(SimJob("a", [running(0.4)]))
        daemon = await start(daemons, configs.write(["a"]))
        await wait_for(lambda: "watching 1 job " in daemon.output(), 20, "the daemon")
        assert await daemon.stop() == 0
    finally:
        holder.close()


async def test_init_writes_a_starter_config_that_runs_as_written_against_simulate(
    tmp_path: Path,
) -> None:
    """The newcomer's next step after the demo: `init`, then `simulate` and `run` as
    printed; the simulator's webhook prints each message the daemon sends."""
    from tests.test_http import free_port

    simulator, listen = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    path = tmp_path / "jobherald.toml"
    code, out, err = await jobherald(
        "init", str(path), "--simulator", simulator, "--listen", listen, cwd=tmp_path
    )
    assert code == 0, err
    assert f" simulate --listen {simulator}" in out and f" run -c {path}" in out
    text = path.read_text()
    assert "For a real ROMA Connect instance" in text and (tmp_path / "jobs.d").is_dir()
    # A second init keeps the file it would overwrite.
    code, _, err = await jobherald("init", str(path), cwd=tmp_path)
    assert (
        code == 2
        and err == f"jobherald: {path}: already exists; give another path (nothing was written)\n"
    )
    assert path.read_text() == text
    code, out, err = await jobherald("check-config", "-c", str(path))
    assert code == 0, err
    assert out.endswith(": ok (4 jobs, 2 sources, 1 notifier)\n")

    procs = []
    log = (tmp_path / "run.log").open("wb")
    try:
        for args, out_to in (
            (("simulate", "--listen", simulator), asyncio.subprocess.PIPE),
            (("run", "-c", str(path)), log),
        ):
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "jobherald",
                    *args,
                    cwd=tmp_path,
                    stdout=out_to,
                    stderr=asyncio.subprocess.STDOUT,
                )
            )
        printed = ""
        stdout = procs[0].stdout
        assert stdout is not None
        while "nightly export archived" not in printed or "orders import failed" not in printed:
            line = await asyncio.wait_for(stdout.readline(), 60)
            assert line, printed + (tmp_path / "run.log").read_text()
            printed += line.decode()
        assert "message: orders import failed" in printed
        assert "message: nightly export archived" in printed
        assert "ROMA.00110027" in printed
    finally:
        for proc in reversed(procs):
            if proc.returncode is None:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 20)
        log.close()
    assert (tmp_path / "jobherald.db").exists()
    assert list((tmp_path / "archives").glob("nightly export-*.zip"))
