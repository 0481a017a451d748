"""The daemon's HTTP listener: health, metrics (checked by prometheus_client's parser and by
promtool), the JSON API, the pages, the token rules, a secrets scan; the dead man's switch."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from jobherald import config as config_module
from jobherald.errors import ConfigError
from jobherald.service import Daemon
from jobherald.sources.simulator import SimJob, Simulator, failed, running, succeeded
from tests.conftest import (
    ConfigWriter,
    LocalApp,
    Receiver,
    jobherald,
    spawn_daemon,
    wait_for,
)

TOKEN = "http-s3cret-token"
REQUIRED = {
    "jobherald_jobs",
    "jobherald_polls",
    "jobherald_poll_duration_seconds",
    "jobherald_events",
    "jobherald_deliveries",
    "jobherald_deliveries_pending",
    "jobherald_schedule_lag_seconds",
    "jobherald_source_up",
    "jobherald_build_info",
    "process_resident_memory_bytes",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_section(port: int, token: str | None = TOKEN) -> str:
    return f'\n[http]\nlisten = "127.0.0.1:{port}"\n' + (f'token = "{token}"\n' if token else "")


async def get(
    url: str, token: str | None = None, basic: str | None = None
) -> tuple[int, str, dict[str, str]]:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if basic is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, allow_redirects=False) as response,
    ):
        return response.status, await response.text(), dict(response.headers)


class Served:
    def __init__(self, proc: asyncio.subprocess.Process, base: str, log: Path) -> None:
        self.proc = proc
        self.base = base
        self.log = log


@pytest.fixture
async def served(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> AsyncIterator[Served]:
    sim.add(SimJob("exp", [running(0.2), running(0.6), succeeded()], archive_id="arch-1"))
    sim.add(SimJob("imp", [running(0.3), failed()], type="importAsset"))
    sim.add(SimJob("slow", [running(0.1), running(0.2), running(0.3), running(0.4)]))
    port = free_port()
    configs.extra = [http_section(port)]
    config = configs.write(
        [{"id": "exp", "name": "nightly export"}, "imp", "slow"],
        daemon={"poll_interval": "300ms"},
    )
    log = configs.folder / "daemon.log"
    proc = await spawn_daemon(config, log)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_for(lambda: "status page, metrics and API at" in _read(log), 30, "listener")
        yield Served(proc, base, log)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 20)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def test_every_route_answers_and_only_health_is_open(
    served: Served, sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    base = served.base
    for _ in range(100):
        if (await get(f"{base}/readyz"))[0] == 200:
            break
        await asyncio.sleep(0.1)
    status, text, _ = await get(f"{base}/healthz")
    assert (status, text) == (200, "ok\n")
    status, text, _ = await get(f"{base}/readyz")
    assert (status, text) == (200, "ready\n")
    await wait_for(lambda: len(receiver.messages) == 2, 30, "the two outcomes")

    for path in (
        "/metrics",
        "/",
        "/jobs/exp",
        "/api/jobs",
        "/api/jobs/exp/history",
        "/api/replicas",
    ):
        status, _, headers = await get(base + path)
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith("Basic realm=")
        assert (await get(base + path, token="wrong"))[0] == 401, path
        assert (await get(base + path, basic="me:wrong"))[0] == 401, path
        status, _, headers = await get(base + path, token=TOKEN)
        assert status == 200, path
        assert headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert (await get(base + path, basic=f"anyone:{TOKEN}"))[0] == 200, path

    # The API gives what the command line gives.
    _, text, _ = await get(f"{base}/api/jobs", token=TOKEN)
    api = {j["id"]: j for j in json.loads(text)}
    code, out, _ = await jobherald("status", "--json", "-c", str(configs.folder / "config.toml"))
    assert code == 0
    cli = {j["id"]: j for j in json.loads(out)}
    assert set(api) == set(cli) == {"exp", "imp", "slow"}
    for job_id in api:
        assert set(api[job_id]) == set(cli[job_id])
        for key in ("name", "source", "status", "archive_id", "reasons", "typical_duration"):
            assert api[job_id][key] == cli[job_id][key], (job_id, key)
    assert (api["exp"]["status"], api["imp"]["status"], api["slow"]["status"]) == (
        "succeeded",
        "failed",
        "running",
    )
    _, text, _ = await get(f"{base}/api/jobs/exp/history", token=TOKEN)
    _code, out, _ = await jobherald(
        "history", "exp", "--json", "-c", str(configs.folder / "config.toml")
    )
    assert json.loads(text) == json.loads(out)
    status, text, _ = await get(f"{base}/api/jobs/nope/history", token=TOKEN)
    assert status == 404 and "no job" in text
    _, text, _ = await get(f"{base}/api/replicas", token=TOKEN)
    (replica,) = json.loads(text)
    assert replica["live"] is True and set(replica) == {
        "name",
        "host",
        "pid",
        "started_at",
        "heartbeat_at",
        "jobs",
        "live",
    }

    # The pages: every job, a filter, a job's transitions and chart.
    _, page, headers = await get(f"{base}/", token=TOKEN)
    assert headers["Content-Type"].startswith("text/html")
    for name in ("nightly export", "imp", "slow"):
        assert name in page
    assert '<script src="/static/page.js"' in page and "https://" not in page.split("Sources:")[0]
    _, page, _ = await get(f"{base}/?state=failed", token=TOKEN)
    assert 'data-id="imp"' in page and 'data-id="exp"' not in page
    _, page, _ = await get(f"{base}/jobs/exp", token=TOKEN)
    assert '<svg id="chart"' in page and "<polyline" in page
    assert "arch-1" in page and "succeeded" in page
    status, _, _ = await get(f"{base}/jobs/nope", token=TOKEN)
    assert status == 404
    for name in ("page.js", "style.css"):
        status, body, _ = await get(f"{base}/static/{name}", token=TOKEN)
        assert status == 200 and body
    assert (await get(f"{base}/static/../config.toml", token=TOKEN))[0] == 404

    # No secret on any page or answer: the source token, the http token, the hook's URL.
    secrets = [sim.token, TOKEN, receiver.url(), f"127.0.0.1:{receiver.port}/hook"]
    for path in (
        "/",
        "/?state=running",
        "/jobs/exp",
        "/jobs/imp",
        "/jobs/slow",
        "/api/jobs",
        "/api/jobs/exp/history",
        "/api/replicas",
        "/metrics",
        "/healthz",
        "/readyz",
    ):
        _, body, _ = await get(base + path, token=TOKEN)
        for secret in secrets:
            assert secret not in body, (path, secret)
    assert TOKEN not in _read(served.log) and sim.token not in _read(served.log)


async def test_metrics_follow_the_exposition_format_and_survive_a_reload(
    served: Served, receiver: Receiver
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    await wait_for(lambda: len(receiver.messages) == 2, 30, "the two outcomes")
    delivered = ("jobherald_deliveries_total", (("notifier", "ops"), ("result", "delivered")))
    # A delivery is counted once it is marked delivered, a moment after the receiver has it.
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        _, text, headers = await get(f"{served.base}/metrics", token=TOKEN)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in families.values()
            for s in f.samples
        }
        if samples.get(delivered) == 2 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert set(families) >= REQUIRED, REQUIRED - set(families)
    assert samples[("jobherald_jobs", (("state", "succeeded"),))] == 1
    assert samples[("jobherald_jobs", (("state", "failed"),))] == 1
    assert samples[("jobherald_jobs", (("state", "running"),))] == 1
    assert samples[("jobherald_source_up", (("source", "roma"),))] == 1
    assert samples[("jobherald_events_total", (("kind", "succeeded"),))] == 1
    assert samples[("jobherald_events_total", (("kind", "failed"),))] == 1
    assert samples[delivered] == 2
    assert samples[("jobherald_build_info", (("version", "0.1.0"),))] == 1
    polls = samples[("jobherald_polls_total", (("outcome", "ok"), ("source", "roma")))]
    assert polls >= 5
    assert samples[("jobherald_poll_duration_seconds_count", (("source", "roma"),))] == polls
    assert samples[("jobherald_schedule_lag_seconds_count", ())] >= polls
    # Bounded labels: no job id is a label value anywhere.
    for family in families.values():
        for sample in family.samples:
            assert not {"exp", "imp", "slow"} & set(sample.labels.values()), sample
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing (make test installs Debian's prometheus package)"
    proc = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    said, _ = await proc.communicate(text.encode())
    assert proc.returncode == 0, said.decode()

    served.proc.send_signal(signal.SIGHUP)
    await wait_for(lambda: "reloaded " in _read(served.log), 20, "the reload")
    _, text, _ = await get(f"{served.base}/metrics", token=TOKEN)
    after = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert after[("jobherald_polls_total", (("outcome", "ok"), ("source", "roma")))] >= polls
    assert after[("jobherald_events_total", (("kind", "succeeded"),))] == 1


async def test_a_port_in_use_is_one_line_at_start(configs: ConfigWriter) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        configs.extra = [http_section(port, None)]
        config = configs.write([])
        code, _out, err = await jobherald("run", "-c", str(config), timeout=30)
    assert code == 1
    lines = [line for line in err.splitlines() if not line[:4].isdigit()]
    assert lines == [
        f"jobherald: http.listen: cannot listen on 127.0.0.1:{port}: address already in use "
        '(another jobherald? give [http] listen another port, or "" to turn the listener off)'
    ], err
    # The port is taken before anything else: the database was neither made nor migrated.
    assert not (configs.folder / "jobherald.db").exists()


@pytest.mark.parametrize(
    ("section", "says"),
    [
        (
            'listen = "0.0.0.0:9781"',
            "http: listen '0.0.0.0:9781' is not a loopback address: give token or token_file",
        ),
        ('listen = ":9781"', "http: listen ':9781' is not a loopback address"),
        ('listen = "localhost"', "http.listen: 'localhost': give host:port, e.g. 127.0.0.1:9781"),
        ('listen = "127.0.0.1:99999"', "http.listen: port 99999 is not between 1 and 65535"),
        ('listen = "[::1]:9781"\ntoken = ""', "http.token: is empty"),
    ],
)
async def test_check_config_refuses_a_listener_it_cannot_guard(
    configs: ConfigWriter, section: str, says: str
) -> None:
    configs.extra = [f"[http]\n{section}\n"]
    config = configs.write([])
    with pytest.raises(ConfigError) as refused:
        config_module.load(config)
    assert says in str(refused.value)
    code, _, err = await jobherald("check-config", "-c", str(config))
    assert code == 2 and says in err and len(err.splitlines()) == 1


async def test_a_token_file_guards_a_listener_on_every_address(
    configs: ConfigWriter, tmp_path: Path
) -> None:
    (tmp_path / "http.token").write_text("from-a-file\n")
    configs.extra = ['[http]\nlisten = "0.0.0.0:9781"\ntoken_file = "http.token"\n']
    cfg = config_module.load(configs.write([]))
    assert cfg.http is not None and cfg.http.token is not None
    assert (cfg.http.host, cfg.http.port, cfg.http.token.get_secret_value()) == (
        "0.0.0.0",
        9781,
        "from-a-file",
    )
    configs.extra = ['[http]\nlisten = ""\n']
    assert config_module.load(configs.write([])).http is None


class Pings(LocalApp):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.failed = 0
        self.fail = False
        self.app.router.add_get("/ping/{uuid}", self._ping)

    async def _ping(self, request: web.Request) -> web.Response:
        if self.fail:
            self.failed += 1
            return web.Response(status=503)
        self.count += 1
        return web.Response(text="OK")


async def test_healthz_fails_and_the_dead_mans_switch_goes_quiet_when_polling_stops(
    sim: Simulator, configs: ConfigWriter, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="jobherald")
    pings = Pings()
    await pings.start()
    sim.add(SimJob("slow", [running(0.1)]))
    port = free_port()
    configs.extra = [http_section(port, None)]
    cfg = configs.load(
        ["slow"],
        daemon={
            "poll_interval": "200ms",
            "heartbeat_url": f"{pings.base_url}/ping/0f3c-uuid",
            "heartbeat_every": "1s",
        },
    )
    daemon = Daemon(cfg)
    task = asyncio.create_task(daemon.run())
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_for(lambda: daemon.ready, 30, "the daemon")
        await wait_for(lambda: pings.count >= 2, 10, "heartbeats")
        assert (await get(f"{base}/healthz"))[:2] == (200, "ok\n")
        # The receiver of pings fails: one warning for the outage, not one per ping.
        pings.fail = True
        await wait_for(lambda: pings.failed >= 3, 10, "three failing heartbeats")
        warnings = [r.getMessage() for r in caplog.records if "heartbeat to" in r.getMessage()]
        assert warnings == ["heartbeat to 127.0.0.1 failed: HTTP 503"]
        pings.fail = False
        await wait_for(
            lambda: "heartbeat to 127.0.0.1 works again" in caplog.text, 10, "heartbeats again"
        )
        # A poller dies: /healthz says so, and no heartbeat goes out while it is so.
        assert daemon.pool is not None
        daemon.pool.pollers[0].cancel()
        await wait_for(lambda: daemon.problem() is not None, 5, "the stopped poller seen")
        status, text, _ = await get(f"{base}/healthz")
        assert (status, text) == (503, "stuck: poller 0 has stopped\n")
        seen = pings.count

        async def skipped() -> float:
            text = (await get(f"{base}/metrics"))[1]
            found = re.search(r'^jobherald_heartbeats_total\{result="skipped"\} (\S+)$', text, re.M)
            return float(found[1]) if found else 0.0

        # Two heartbeats came due while it is stuck (each skipped, said by the counter):
        # neither reached the receiver.
        before = await skipped()
        deadline = asyncio.get_running_loop().time() + 10
        while await skipped() < before + 2:
            assert asyncio.get_running_loop().time() < deadline, "no heartbeat came due"
            await asyncio.sleep(0.1)
        assert pings.count == seen
        assert "0f3c-uuid" not in caplog.text
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 20)
        await pings.stop()


# The demo takes 127.0.0.1:9781 when it is free: never beside the test that holds it.
@pytest.mark.xdist_group("port-9781")
async def test_the_demo_serves_metrics_while_it_runs_and_keeps_its_archives() -> None:
    import os
    import re
    import sys

    from prometheus_client.parser import text_string_to_metric_families

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobherald",
        "demo",
        "--speed",
        "2",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )
    assert proc.stdout is not None
    said: list[str] = []
    try:
        address = None
        while address is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            said.append(line)
            assert line, "the demo ended before it printed its address"
            if found := re.search(r"status page (http://127\.0\.0\.1:\d+)/", line):
                address = found[1]
        # The page is served as soon as the daemon listens; its jobs come with the first
        # sync, a moment later on a busy machine.
        deadline = asyncio.get_running_loop().time() + 30
        page = ""
        while "nightly export" not in page:
            assert asyncio.get_running_loop().time() < deadline, page[-2000:]
            await asyncio.sleep(0.1)
            try:
                status, page, _ = await get(f"{address}/")
            except aiohttp.ClientConnectionError:  # not listening yet
                continue
            assert status == 200, page[-500:]
        status, text, _ = await get(f"{address}/metrics")
        assert status == 200
        names = {f.name for f in text_string_to_metric_families(text)}
        assert names >= REQUIRED
        said.append((await asyncio.wait_for(proc.stdout.read(), 90)).decode())
        # Its output ended: let it finish exiting (a kill now would be the test's doing).
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, "".join(said)[-3000:]
    # It kept its exports' archives, and says so.
    out = "".join(said)
    assert "full backup archived" in out and "nightly export archived" in out
    assert "4 jobs watched, 2 export archives kept, 6 messages sent" in " ".join(out.split())
    # Its next steps are commands that run as printed from here.
    prefix = f"{os.path.relpath(sys.executable)} -m jobherald"
    for step in ("init jobherald.toml", "simulate", "run -c jobherald.toml"):
        assert f"  {prefix} {step}" in out, out[-800:]


async def test_malformed_requests_are_one_line_at_most_a_minute(served: Served) -> None:
    port = int(served.base.rsplit(":", 1)[1])
    for path in (b"/jobs/a\x00b", b"/\x00", b"/x\x00y") * 3:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.0 400")
        writer.close()
    async with aiohttp.ClientSession() as http, http.get(f"{served.base}/readyz") as answer:
        assert answer.status in (200, 503)  # the listener goes on serving
        assert (await answer.text()) in ("ready\n", "starting\n")
    logged = _read(served.log)
    assert "Traceback" not in logged
    lines = [ln for ln in logged.splitlines() if "malformed HTTP request" in ln]
    assert len(lines) == 1, lines
    assert "WARNING" in lines[0] and "Invalid char in url path" in lines[0]


async def test_a_flood_of_slow_request_heads_holds_no_descriptors_nor_health_polls_or_reloads(
    sim: Simulator, configs: ConfigWriter
) -> None:
    sim.add(SimJob("slow", [running(0.1)]))
    port = free_port()
    configs.extra = [
        http_section(port, token=None) + 'header_timeout = "2s"\nmax_connections = 64\n'
    ]
    config = configs.write(["slow"], daemon={"poll_interval": "300ms"})
    log = configs.folder / "daemon.log"
    proc = await spawn_daemon(config, log)
    base = f"http://127.0.0.1:{port}"
    opened: list[asyncio.StreamWriter] = []
    try:
        await wait_for(lambda: "watching 1 job" in _read(log), 30, "the daemon")
        async with aiohttp.ClientSession() as http:  # one kept-alive client, two requests
            for _ in range(2):
                async with http.get(f"{base}/healthz") as answer:
                    assert answer.status == 200
        descriptors = len(os.listdir(f"/proc/{proc.pid}/fd"))
        first = None
        for _ in range(2000):  # request heads that never end
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nX-Slow: 1\r\n")
            opened.append(writer)
            first = first or reader
        assert first is not None
        # The longest-waiting ones made room for the newer: the first is closed already.
        assert await asyncio.wait_for(first.read(), 5) == b""
        held = len(os.listdir(f"/proc/{proc.pid}/fd"))
        assert held <= descriptors + 64 + 8, (descriptors, held)
        # Health answers, polls go on and a reload works, all during the flood.
        status, text, _ = await get(f"{base}/healthz")
        assert (status, text) == (200, "ok\n")
        polled = sim.polls("slow")
        await wait_for(lambda: sim.polls("slow") >= polled + 2, 10, "polls during the flood")
        proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: "reloaded" in _read(log), 10, "a reload during the flood")
        # Past header_timeout, the slow ones left are closed too.
        await wait_for(
            lambda: len(os.listdir(f"/proc/{proc.pid}/fd")) <= descriptors + 2,
            15,
            "the slow connections closed",
        )
    finally:
        for writer in opened:
            writer.close()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
    logged = _read(log)
    assert "64 connections open: closed the one waiting longest for its request" in logged
    assert "closed a connection that sent no whole request in 2 s" in logged
    assert len([ln for ln in logged.splitlines() if "http: " in ln]) <= 4, "a line a minute"
    assert "Traceback" not in logged and "Too many open files" not in logged
