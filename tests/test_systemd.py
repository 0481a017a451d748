"""jobherald under a real systemd: install, start, readiness, delivery, reload, stop.

systemd boots as PID 1 of a fresh PID+mount namespace (tests/systemd/init.sh), in a cgroup
of its own, on a target that starts nothing but the journal. `make install` runs inside it:
/etc, /opt and /usr/local are overlays there, so the machine itself is never changed.
A machine where systemd cannot boot makes this test fail, saying why: it never passes quietly.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobherald.sources.simulator import SimJob, Simulator, running, succeeded
from tests.conftest import Receiver, wait_for
from tests.test_http import free_port, get

ROOT = Path(__file__).resolve().parent.parent
INIT = Path(__file__).resolve().parent / "systemd" / "init.sh"
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")


class NamespacedSystemd:
    def __init__(self) -> None:
        self.cgroup = CGROUP_ROOT / f"jobherald-test-{os.getpid()}"
        self.proc: asyncio.subprocess.Process | None = None
        self.pid = 0

    async def boot(self) -> None:
        missing = [
            tool
            for tool in ("unshare", "nsenter", "setpriv", "systemctl")
            if not shutil.which(tool)
        ]
        if missing or not Path("/lib/systemd/systemd").exists():
            pytest.fail(f"cannot boot systemd here: missing {missing or '/lib/systemd/systemd'}")
        if os.geteuid() != 0:
            pytest.fail("cannot boot systemd here: the systemd test needs root")
        if not CGROUP_ROOT.is_dir():
            pytest.fail(f"cannot boot systemd here: no cgroup2 hierarchy at {CGROUP_ROOT}")
        self.cgroup.mkdir(exist_ok=True)
        command = (
            f"echo $$ > {self.cgroup}/cgroup.procs && JOBHERALD_SRC={ROOT} exec setpriv --pdeathsig KILL "
            "unshare --pid --fork --kill-child --mount --mount-proc --uts --ipc --cgroup "
            f"--propagation private {INIT}"
        )
        self.proc = await asyncio.create_subprocess_exec(
            "sh", "-c", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                output = (await self.proc.stdout.read()).decode() if self.proc.stdout else ""
                pytest.fail(
                    f"cannot boot systemd here: the namespace ended at once: {output[-500:]}"
                )
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if pids:
                self.pid = int(pids[0])
                _, state = await self.run("systemctl", "is-system-running", check=False)
                if state.strip() in ("running", "degraded"):
                    return
            await asyncio.sleep(0.2)
        pytest.fail(f"cannot boot systemd here: not running after 30 s (pid {self.pid})")

    async def run(
        self, *args: str, stdin: bytes | None = None, check: bool = True, timeout: float = 60
    ) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            "nsenter",
            "-t",
            str(self.pid),
            "-m",
            "-p",
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout)
        assert proc.returncode is not None
        text = out.decode()
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {text[-2000:]}")
        return proc.returncode, text

    async def show(self, unit: str) -> dict[str, str]:
        _, text = await self.run(
            "systemctl",
            "show",
            unit,
            "-p",
            "ActiveState,SubState,StatusText,MainPID,Result,NRestarts",
        )
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    async def poweroff(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            if self.pid:
                await self.run("systemctl", "poweroff", "--no-block", check=False)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                if self.pid:
                    os.kill(self.pid, 9)
                self.proc.kill()
                await self.proc.wait()
        for _ in range(50):
            try:
                # systemd made cgroups of its own below ours: remove the deepest first.
                for folder in sorted(self.cgroup.rglob("*/"), key=lambda p: -len(p.parts)):
                    if folder.is_dir():
                        folder.rmdir()
                self.cgroup.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise AssertionError(f"could not remove {self.cgroup}")


@pytest.fixture
async def systemd() -> AsyncIterator[NamespacedSystemd]:
    ns = NamespacedSystemd()
    try:
        await ns.boot()
        yield ns
    finally:
        await ns.poweroff()


CONFIG = """\
[daemon]
poll_interval = "500ms"
include = ["jobs.d/*.toml"]

[sources.roma]
type = "roma-connect"
endpoint = "{url}"
project_id = "sim-project"
instance_id = "sim-instance"
token = "sim-token"
archive_dir = "{archive_dir}"

[notifiers.ops]
urls = ["{hook}"]
# Rendered in the render process, under the unit's sandbox.
title = "{{{{ job.name }}}} {{{{ event.kind }}}} (templated)"

[http]
listen = "127.0.0.1:{port}"
token = "http-token"

[[jobs]]
id = "a"
source = "roma"
name = "nightly export"
"""


@pytest.mark.timeout(600)
async def test_the_installed_service_runs_reloads_and_stops_under_systemd(
    systemd: NamespacedSystemd, sim: Simulator, receiver: Receiver
) -> None:
    sim.add(SimJob("a", [running(0.2), running(0.6), succeeded()], archive_id="arch-1"))
    sim.add(SimJob("c", [running(0.4), succeeded()]))
    # The machine itself is never changed: what make install writes goes to the overlays.
    outside = [Path("/usr/lib/sysusers.d/jobherald.conf"), Path("/etc/sysusers.d/jobherald.conf")]
    before = [p.exists() for p in outside]
    await systemd.run("make", "-C", "/run/jobherald-src", "install", timeout=400)
    assert [p.exists() for p in outside] == before
    unit = "/etc/systemd/system/jobherald.service"
    # The config may hold secrets: the service's group reads it, nobody else.
    _, out = await systemd.run("stat", "-c", "%a %U:%G", "/etc/jobherald/config.toml")
    assert out.strip() == "640 root:jobherald", out

    code, out = await systemd.run("systemd-analyze", "verify", unit, check=False)
    assert (code, out) == (0, ""), out
    # The daily prune (drop-ins of jobs past forget_after) is installed, not enabled.
    prune = [
        "/etc/systemd/system/jobherald-prune.service",
        "/etc/systemd/system/jobherald-prune.timer",
    ]
    code, out = await systemd.run("systemd-analyze", "verify", *prune, check=False)
    assert (code, out) == (0, ""), out
    _, out = await systemd.run("systemctl", "is-enabled", "jobherald-prune.timer", check=False)
    assert out.strip() == "disabled", out
    _, out = await systemd.run("systemd-analyze", "security", "--offline=true", unit)
    level = float(re.findall(r"Overall exposure level for jobherald.service: ([0-9.]+)", out)[0])
    assert level <= 1.5, out[-1500:]

    # A folder the unit's sandbox keeps read-only is refused, with what to do instead.
    port = free_port()
    config = CONFIG.format(
        url=sim.url, hook=receiver.url(), archive_dir="/srv/roma-archives", port=port
    )
    await systemd.run("sh", "-c", "cat > /etc/jobherald/config.toml", stdin=config.encode())
    code, out = await systemd.run("jobherald", "check-config", check=False)
    assert (code, out) == (
        2,
        "/etc/jobherald/config.toml: sources.roma.archive_dir: /srv/roma-archives is read-only "
        "for jobherald.service (ProtectSystem=strict): use a folder under /var/lib/jobherald, "
        "or add ReadWritePaths=/srv/roma-archives with `systemctl edit jobherald`\n",
    )
    config = CONFIG.format(
        url=sim.url, hook=receiver.url(), archive_dir="/var/lib/jobherald/archives", port=port
    )
    await systemd.run("sh", "-c", "cat > /etc/jobherald/config.toml", stdin=config.encode())
    code, out = await systemd.run("jobherald", "check-config", check=False)
    assert code == 0, out
    code, out = await systemd.run("systemctl", "start", "jobherald", check=False)
    if code != 0:
        _, journal = await systemd.run("journalctl", "-u", "jobherald", "--no-pager", "-o", "cat")
        raise AssertionError(f"the service did not start: {journal[-3000:]}")
    state = await systemd.show("jobherald")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    assert state["StatusText"].startswith("watching 1 job"), state
    # The listener works inside the sandbox: health open, metrics behind the token.
    assert (await get(f"http://127.0.0.1:{port}/healthz"))[:2] == (200, "ok\n")
    assert (await get(f"http://127.0.0.1:{port}/metrics"))[0] == 401
    status, text, _ = await get(f"http://127.0.0.1:{port}/metrics", token="http-token")
    assert status == 200 and "jobherald_build_info" in text
    pid = state["MainPID"]
    await wait_for(
        lambda: (
            receiver.titles()
            == ["nightly export archived (templated)", "nightly export succeeded (templated)"]
        ),
        30,
        "the first messages",
    )

    _, out = await systemd.run("jobherald", "watch", "c", "--source", "roma", "--reload")
    assert out == (
        "watching c from roma: wrote /etc/jobherald/jobs.d/c.toml\nreloaded jobherald.service\n"
    )
    await wait_for(
        lambda: "c succeeded (templated)" in receiver.titles(),
        30,
        "the reloaded job",
    )

    # An export started from the command line, watched after the reload, its archive kept.
    _, out = await systemd.run(
        "jobherald", "roma", "export", "--source", "roma", "--app", "crm", "--name", "crm",
        "--reload",
    )  # fmt: skip
    job_id = out.splitlines()[0]
    assert sim.jobs[job_id].type == "exportAsset"
    assert out.splitlines()[-1] == "reloaded jobherald.service"
    await wait_for(
        lambda: "crm archived (templated)" in receiver.titles(), 30, "the export's archive"
    )
    archive_id = sim.jobs[job_id].archive_id
    _, listed = await systemd.run("sh", "-c", "cd /var/lib/jobherald/archives && sha256sum *")
    expected = sorted(
        [
            f"{hashlib.sha256(sim.archives[archive_id or '']).hexdigest()}  crm-{archive_id}.zip",
            f"{hashlib.sha256(sim.archives['arch-1']).hexdigest()}  nightly export-arch-1.zip",
        ]
    )
    assert sorted(listed.splitlines()) == expected
    assert receiver.titles() == [
        "c succeeded (templated)",
        "crm archived (templated)",
        "crm succeeded (templated)",
        "nightly export archived (templated)",
        "nightly export succeeded (templated)",
    ]
    state = await systemd.show("jobherald")
    assert state["MainPID"] == pid, "reload kept the same process"
    assert (state["ActiveState"], state["NRestarts"]) == ("active", "0"), state

    _, out = await systemd.run("jobherald", "status")
    assert "nightly export" in out and "succeeded" in out
    await systemd.run("systemctl", "stop", "jobherald")
    state = await systemd.show("jobherald")
    assert (state["ActiveState"], state["Result"]) == ("inactive", "success"), state
    _, journal = await systemd.run("journalctl", "-u", "jobherald", "--no-pager", "-o", "cat")
    assert "reloaded /etc/jobherald/config.toml: 2 jobs, 1 new or changed, 0 removed" in journal
    assert "reloaded /etc/jobherald/config.toml: 3 jobs, 1 new or changed, 0 removed" in journal
    assert "stopped after" in journal
    assert "database sqlite+aiosqlite:////var/lib/jobherald/jobherald.db" in journal
    assert "sim-token" not in journal
    _, where = await systemd.run(
        "sh", "-c", "ls /usr/local/bin/jobherald /opt/jobherald/bin/python3.11"
    )
    assert "/opt/jobherald/bin/python3.11" in where
    assert not Path("/usr/local/bin/jobherald").exists() or Path(
        "/usr/local/bin/jobherald"
    ).resolve() != Path("/opt/jobherald/bin/jobherald"), "the install stayed inside the namespace"
