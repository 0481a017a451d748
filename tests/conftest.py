"""Shared test parts: the ROMA Connect simulator, a webhook receiver, config files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from jobherald import config as config_module
from jobherald.sources.simulator import Simulator


class LocalApp:
    """An aiohttp app served on 127.0.0.1 at a free port."""

    def __init__(self) -> None:
        self.app = web.Application()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def spawn_daemon(
    config: Path, log: Path, env: dict[str, str | None] | None = None
) -> asyncio.subprocess.Process:
    """`jobherald run -c CONFIG` in a child process, its output appended to LOG (``env``:
    variables to set, or with None to unset)."""
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jobherald",
            "run",
            "-c",
            str(config),
            stdout=out,
            stderr=out,
            env={k: v for k, v in environ.items() if v is not None},
        )


class Running:
    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
async def daemons(tmp_path: Path) -> AsyncIterator[list[Running]]:
    started: list[Running] = []
    yield started
    for d in started:
        if d.proc.returncode is None:
            d.proc.kill()
            await d.proc.wait()


async def start(
    daemons: list[Running], config: Path, env: dict[str, str | None] | None = None
) -> Running:
    log = config.parent / f"daemon-{len(daemons)}.log"
    proc = await spawn_daemon(config, log, env)
    running_daemon = Running(proc, log)
    daemons.append(running_daemon)
    return running_daemon


class NotifyListener:
    """A NOTIFY_SOCKET of our own: what a service tells systemd, message by message."""

    def __init__(self, folder: Path) -> None:
        import socket

        self.address = str(folder / "notify.sock")
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.address)
        self._socket.setblocking(False)
        self.heard: list[str] = []

    def drain(self) -> list[str]:
        """Every message heard so far, the newest last."""
        while True:
            try:
                self.heard.append(self._socket.recv(4096).decode())
            except BlockingIOError:
                return self.heard

    def close(self) -> None:
        self._socket.close()


class Receiver(LocalApp):
    """A webhook receiver on 127.0.0.1: what apprise's json:// URLs post to."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.fail_with: int | None = None
        self.fail_paths: dict[str, int] = {}
        self.attempts: list[str] = []
        self.delay = 0.0
        self.delays: dict[str, float] = {}
        self.received_at: list[float] = []
        self.app.router.add_post("/{tail:.*}", self._post)

    def url(self, path: str = "hook", scheme: str = "json") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/{path}"

    async def _post(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        self.attempts.append(request.path)
        if delay := self.delays.get(request.path, self.delay):
            await asyncio.sleep(delay)
        status = self.fail_paths.get(request.path, self.fail_with)
        if status is not None:
            return web.Response(status=status, text="receiver is down")
        if request.content_type == "application/x-www-form-urlencoded":
            payload: dict[str, Any] = dict(await request.post())
        else:
            payload = await request.json()
        self.messages.append(payload)
        self.paths.append(request.path)
        self.received_at.append(arrived)  # when the request came, not when it was answered
        return web.Response(text="ok")

    def titles(self, path: str | None = None) -> list[str]:
        return sorted(
            m["title"]
            for m, p in zip(self.messages, self.paths, strict=True)
            if path is None or p == f"/{path}"
        )

    def event_ids(self, path: str | None = None) -> list[str]:
        """The event ids the messages carried (a digest carries many), in arrival order."""
        return [
            event_id
            for m, p in zip(self.messages, self.paths, strict=True)
            if path is None or p == f"/{path}"
            for event_id in carried(m["message"])
        ]

    def event_times(self) -> list[tuple[str, float]]:
        """Each event id a message carried, with when that message came."""
        return [
            (event_id, at)
            for m, at in zip(self.messages, self.received_at, strict=True)
            for event_id in carried(m["message"])
        ]


def carried(text: str) -> list[str]:
    """The event ids one message carries: its footer line, ``event ID`` or, for a digest,
    ``events ID ID ...``."""
    last = text.strip().splitlines()[-1].strip()
    if last.startswith("events "):
        return last.split()[1:]
    return [last.rsplit("event ", 1)[1].strip()]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator()
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def mailbox() -> AsyncIterator[Any]:
    """A real SMTP server on 127.0.0.1 keeping what it is sent (tests.fakes.Mailbox)."""
    from tests.fakes import Mailbox

    box = Mailbox()
    await box.start()
    yield box
    await box.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    await rec.start()
    yield rec
    await rec.stop()


@dataclass
class ConfigWriter:
    """Writes a config.toml for the simulator and receiver, and loads it."""

    folder: Path
    sim: Simulator | None = None
    receiver: Receiver | None = None
    extra: list[str] = field(default_factory=list)

    def write(
        self,
        jobs: Sequence[str | dict[str, Any]],
        *,
        notifiers: dict[str, dict[str, Any]] | None = None,
        daemon: dict[str, Any] | None = None,
        source: dict[str, Any] | None = None,
    ) -> Path:
        sim_url = self.sim.url if self.sim else "http://127.0.0.1:9"
        project = self.sim.project_id if self.sim else "p"
        instance = next(iter(self.sim.instances)) if self.sim else "i"
        token = self.sim.token if self.sim else "t"
        if notifiers is None:
            url = self.receiver.url() if self.receiver else "json://127.0.0.1:9/hook"
            notifiers = {"ops": {"urls": [url]}}
        settings = {
            "database": "sqlite:///jobherald.db",
            "poll_interval": "1s",
            "shutdown_timeout": "5s",
            **(daemon or {}),
        }
        text = "[daemon]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
        text += textwrap.dedent(
            f"""\

            [sources.roma]
            type = "roma-connect"
            endpoint = "{sim_url}"
            project_id = "{project}"
            instance_id = "{instance}"
            token = "{token}"
            timeout = "2s"
            """
        )
        text += "".join(f"{k} = {json.dumps(v)}\n" for k, v in (source or {}).items())
        for name, options in notifiers.items():
            text += f"\n[notifiers.{name}]\n"
            for key, value in options.items():
                text += f"{key} = {json.dumps(value)}\n"
        for job in jobs:
            spec = {"id": job} if isinstance(job, str) else dict(job)
            spec.setdefault("source", "roma")
            text += "\n[[jobs]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in spec.items())
        text += "\n".join(self.extra)
        if not any("[http]" in e for e in self.extra):
            # Daemons of one test run side by side: none takes the default port.
            text += '\n[http]\nlisten = ""\n'
        path = self.folder / "config.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def load(self, *args: Any, **kwargs: Any) -> config_module.Config:
        return config_module.load(self.write(*args, **kwargs))


@pytest.fixture
def configs(tmp_path: Path, request: pytest.FixtureRequest) -> ConfigWriter:
    sim = request.getfixturevalue("sim") if "sim" in request.fixturenames else None
    rec = request.getfixturevalue("receiver") if "receiver" in request.fixturenames else None
    return ConfigWriter(tmp_path, sim, rec)


class Clock:
    """Injected time: starts now, moves only when told."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def jobherald(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30, cwd: Path | None = None
) -> tuple[int, str, str]:
    """Run the jobherald command line in a child process; return (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobherald",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def wait_for(
    predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition"
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 for this test session; yields its base URL."""
    import glob
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.fail(
            "PostgreSQL server binaries are missing (make test installs the postgresql package)"
        )
    bindir = Path(bins[-1]).parent
    user = pwd.getpwnam("postgres")
    folder = Path(tempfile.mkdtemp(prefix="jobherald-pg-", dir="/var/tmp"))
    os.chown(folder, user.pw_uid, user.pw_gid)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def as_postgres(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)

    as_postgres(
        str(bindir / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "jobherald"
    )
    as_postgres(
        str(bindir / "pg_ctl"),
        "-D",
        str(folder / "data"),
        "-l",
        str(folder / "log"),
        "-w",
        "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off",
        "start",
    )
    try:
        yield f"postgresql://jobherald@127.0.0.1:{port}"
    finally:
        as_postgres(str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def postgres(postgres_server: str) -> AsyncIterator[str]:
    """A fresh database on the session's PostgreSQL server; yields its URL."""
    import uuid

    import asyncpg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(f"{postgres_server}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield f"{postgres_server}/{name}"
    admin = await asyncpg.connect(f"{postgres_server}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# -- markers: what a test needs beyond Python, and the quick loop ------------------------

# Modules whose every test needs a system part (or runs for long); `make test` runs
# everything.
_MODULE_NEEDS = {
    "test_systemd": "systemd",
    "test_browser": "browser",
    "test_chaos": "slow",
    "test_soak": "slow",
    "test_postgres": "postgres",
}
# Modules whose tests measure time (takeovers, gaps, bursts, rates): `make test` runs them
# alone, after the others have run two at a time.
_SERIAL = {"test_replicas", "test_chaos", "test_soak", "test_systemd", "test_lanes", "test_budget"}
_TEST_NEEDS = {"test_metrics_follow_the_exposition_format_and_survive_a_reload": "prometheus"}
# The modules of the quick loop (`make test-quick`, under a minute): the model, the
# config, the store on SQLite and the sources against the simulator, no daemon started.
_QUICK = {
    "test_model",
    "test_queue",
    "test_config",
    "test_eta",
    "test_fuzz",
    "test_notify",
    "test_store",
    "test_auth",
    "test_sources",
    "test_faults",
    "test_huawei_job",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, what in (
        ("postgres", "a real PostgreSQL server"),
        ("systemd", "a real systemd, booted in namespaces of its own"),
        ("browser", "Chromium, driven by Playwright"),
        ("prometheus", "promtool, Prometheus' own checker"),
        ("slow", "many daemon restarts (soak and chaos)"),
        ("quick", "nothing but Python and local fakes (make test-quick)"),
        ("serial", "a machine to itself: it measures time (make test runs it alone)"),
    ):
        config.addinivalue_line("markers", f"{name}: needs {what}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        owner = getattr(item, "module", None)
        module = owner.__name__.rsplit(".", 1)[-1] if owner is not None else ""
        needs = {_MODULE_NEEDS.get(module), _TEST_NEEDS.get(getattr(item, "originalname", ""))}
        if "postgres" in getattr(item, "fixturenames", ()):
            needs.add("postgres")
        elif module in _QUICK:
            needs.add("quick")
        if module in _SERIAL:
            needs.add("serial")
        for need in needs - {None}:
            assert need is not None
            item.add_marker(getattr(pytest.mark, need))
