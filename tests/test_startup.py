"""A lean start: each command loads only what it uses; the daemon's loop is chosen by config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from jobherald.sources.simulator import SimJob, Simulator, running, succeeded

from .conftest import ConfigWriter, Receiver, jobherald, spawn_daemon, wait_for

HEAVY = ("alembic", "apprise", "apscheduler", "jinja2")

# Runs the command line, then says which of the heavy libraries were imported.
PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('LOADED', sorted({m.split('.')[0] for m in sys.modules}"
    f" & {set(HEAVY)!r}), file=sys.stderr))\n"
    "from jobherald.cli import main\n"
    "main()\n"
)


async def loaded(*args: str) -> list[str]:
    code, _, err = await jobherald_python(*args)
    assert code == 0, err
    line = next(line for line in err.splitlines() if line.startswith("LOADED"))
    return list(json.loads(line.removeprefix("LOADED ").replace("'", '"')))


async def jobherald_python(*args: str) -> tuple[int, str, str]:
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PROBE,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_pass_with_nothing_to_send_loads_no_apprise_alembic_jinja_or_scheduler(
    sim: Simulator, configs: ConfigWriter
) -> None:
    sim.add(SimJob("a", [running(0.2)]))
    path = configs.write(["a"], notifiers={"ops": {"urls": ["json://127.0.0.1:9/x"]}})
    assert await loaded("run", "--once", "-c", str(path)) == ["alembic"]  # creates the schema
    # On a current schema, a pass that changes nothing worth a message needs none of them.
    assert await loaded("run", "--once", "-c", str(path)) == []
    assert await loaded("status", "-c", str(path)) == []


async def test_a_pass_with_a_message_to_send_loads_apprise_to_send_it(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    sim.add(SimJob("a", [succeeded()]))
    path = configs.write(["a"])
    assert await loaded("run", "--once", "-c", str(path)) == ["alembic", "apprise"]
    assert receiver.titles() == ["a succeeded"]


async def test_check_config_still_asks_apprise_about_every_url(configs: ConfigWriter) -> None:
    path = configs.write(["a"], notifiers={"ops": {"urls": ["json://h/x", "nosuch://x"]}})
    code, _, err = await jobherald("check-config", "-c", str(path))
    assert code == 2
    assert "notifiers.ops.urls[1]: apprise knows no nosuch:// service" in err


async def test_a_url_apprise_cannot_use_fails_its_delivery_in_a_pass_with_the_reason(
    sim: Simulator, receiver: Receiver, configs: ConfigWriter
) -> None:
    sim.add(SimJob("a", [succeeded()]))
    path = configs.write(["a"], notifiers={"ops": {"urls": [receiver.url(), "nosuch://x"]}})
    code, _, err = await jobherald("run", "--once", "-c", str(path))
    assert code == 0
    assert receiver.titles() == ["a succeeded"]
    assert "apprise cannot use this URL" in err


async def test_the_daemon_runs_on_uvloop_unless_told_otherwise(
    sim: Simulator, configs: ConfigWriter
) -> None:
    sim.add(SimJob("a", [running(0.2)]))
    for wanted, expected in ((None, "uvloop"), ("asyncio", "asyncio")):
        settings = {"event_loop": wanted} if wanted else {}
        cfg = configs.load(["a"], daemon=settings)
        assert cfg.event_loop == expected
    path = configs.write(["a"], daemon={"event_loop": "uvloop"})
    log = configs.folder / "daemon.log"
    proc = await spawn_daemon(path, log)
    try:
        await wait_for(lambda: "pollers on the uvloop loop" in log.read_text(), 20, "start line")
        await wait_for(lambda: sim.polls("a") >= 2, 10, "two polls")
    finally:
        proc.terminate()
        assert await proc.wait() == 0


def test_every_module_imports_on_its_own_with_no_import_cycle() -> None:
    """Each module imported first, in a fresh set of jobherald modules: a cycle between two
    of them fails whichever is imported first."""
    script = (
        "import importlib, pkgutil, sys\n"
        "import jobherald\n"
        "names = [m.name for m in pkgutil.walk_packages(jobherald.__path__, 'jobherald.')\n"
        "         if '.migrations' not in m.name and m.name != 'jobherald.__main__']\n"
        "for name in names:\n"
        "    for loaded in [k for k in sys.modules if k.startswith('jobherald.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) > 30


# A vendor's modules, and its words (ROMA, IAM, Huawei) or auth method (AK/SK signing).
VENDOR_MODULE = re.compile(r"^jobherald\.sources\.(roma|roma_assets|huawei\w*)$")
VENDOR_WORD = re.compile(r"\bROMA\b|Roma|\bIAM\b|(?i:huawei|aksk)")


def test_no_module_outside_the_sources_knows_a_vendor() -> None:
    """Vendor knowledge lives in ``sources/`` (and the CLI's ``roma`` group): no other
    module imports a vendor's module or speaks of it. The names users type, a source type
    (``type = "roma-connect"``) and a command (``jobherald roma``), may appear."""
    import ast

    import jobherald

    package = Path(jobherald.__file__).parent
    looked = 0
    for path in sorted(package.rglob("*.py")):
        inside = path.relative_to(package)
        if inside.parts[0] == "sources" or inside == Path("cli/roma.py"):
            continue
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {
            f"{n.module}.{a.name}"
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module
            for a in n.names
        }
        assert not [m for m in imported if VENDOR_MODULE.match(m)], (inside, imported)
        words = [m[0] for m in VENDOR_WORD.finditer(text)]
        assert not words, (inside, words)
        looked += 1
    assert looked > 30
