"""``jobherald demo``: the simulator, a few jobs, a throwaway database, messages in the terminal."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jobherald import config as config_module
from jobherald.sources.simulator import (
    Answer,
    SimJob,
    Simulator,
    failed,
    http_error,
    running,
    succeeded,
)

DEMO_SCHEME = "jhdemo"
TIME_LIMIT = 55.0

_inbox: list[tuple[str, str, str]] = []
_inbox_lock = threading.Lock()


def _register_plugin() -> None:
    from apprise.decorators import notify

    @notify(on=DEMO_SCHEME, name="jobherald demo terminal")  # type: ignore[untyped-decorator,no-untyped-call]
    def show(body: str, title: str, notify_type: str, *args: Any, **kwargs: Any) -> bool:
        with _inbox_lock:
            _inbox.append((title, body, str(notify_type)))
        return True


def demo_jobs(interval: float = 1.0) -> list[tuple[str, SimJob, str]]:
    """(name, simulated job, source) of each demo job."""
    now = datetime.now(UTC)
    export_steps: list[Answer] = [running(p / 10) for p in range(1, 9)] + [succeeded()]
    import_steps: list[Answer] = [
        running(0.2, "Running"),
        running(0.5, "Running"),
        http_error(503, "APIG.9999", "Service temporarily unavailable"),
        running(0.7, "Running"),
        failed("Failed", reasons_key="reason"),
    ]
    slow_steps: list[Answer] = [running(p / 40, "Running") for p in range(0, 40, 2)]
    slow_steps.append(succeeded("Success"))
    servers_steps: list[Answer] = [running(p / 4) for p in range(0, 4)] + [succeeded()]

    def paced(polls_before: int, steps: list[Answer]) -> dict[str, Any]:
        # Begun and lasting as the show goes (a poll a step): ETAs and durations fit it.
        return {
            "begin_time": now - timedelta(seconds=interval * polls_before),
            "duration": timedelta(seconds=interval * (polls_before + len(steps))),
        }

    return [
        (
            "nightly export",
            SimJob(
                id="ff8080814dbd65d7014dbe0d84db0013",
                script=export_steps,
                type="exportAsset",
                archive_id="ff8080814dbd65d7014dbe0d84db0014",
                **paced(1, export_steps),
            ),
            "demo",
        ),
        (
            "orders import",
            SimJob(
                id="ff8080814dbd65d7014dbe0d84db0021",
                script=import_steps,
                type="importAsset",
                reasons=[
                    {
                        "resource_type": "application",
                        "resource_name": "orders-app",
                        "error_code": "ROMA.00110027",
                        "error_msg": "An application with the same name already exists.",
                    },
                    {
                        "resource_type": "task",
                        "resource_name": "sync-orders",
                        "error_code": "ROMA.00110104",
                        "error_msg": "The data source of the task does not exist.",
                    },
                ],
                **paced(1, import_steps),
            ),
            "demo",
        ),
        (
            "full backup",
            SimJob(
                id="ff8080814dbd65d7014dbe0d84db0035",
                script=slow_steps,
                type="exportAsset",
                archive_id="ff8080814dbd65d7014dbe0d84db0036",
                **paced(0, slow_steps),
            ),
            "demo",
        ),
        (
            "web servers (ECS)",
            SimJob(
                id="ff808082739334d80173943ec9b42130",
                script=servers_steps,
                type="createServers",
                sub_jobs_total=4,
                **paced(0, servers_steps),
            ),
            "ecs",
        ),
    ]


def _listen_port() -> int:
    """9781 (the default) when it is free, else any free port."""
    import socket

    for port in (9781, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


def _write_config(
    folder: Path,
    url: str,
    sim: Simulator,
    jobs: list[tuple[str, SimJob, str]],
    interval: float,
    port: int,
) -> Path:
    lines = [
        "[daemon]",
        'database = "sqlite:///demo.db"',
        f'poll_interval = "{int(interval * 1000)}ms"',
        'log_level = "error"',
        'shutdown_timeout = "3s"',
        "",
        "[sources.demo]",
        'type = "roma-connect"',
        f'endpoint = "{url}"',
        f'project_id = "{sim.project_id}"',
        f'instance_id = "{next(iter(sim.instances))}"',
        f'token = "{sim.token}"',
        f'archive_dir = "{folder / "archives"}"',
        "",
        "[sources.ecs]",
        'type = "huawei-job"',
        f'endpoint = "{url}"',
        f'project_id = "{sim.project_id}"',
        f'token = "{sim.token}"',
        "",
        "[http]",
        f'listen = "127.0.0.1:{port}"',
        "",
        "[notifiers.terminal]",
        f'urls = ["{DEMO_SCHEME}://terminal"]',
        'on = ["succeeded", "failed", "archived"]',
        "digest_after = 0  # each message shown on its own",
        "",
    ]
    for name, job, source in jobs:
        lines += ["[[jobs]]", f'id = "{job.id}"', f'source = "{source}"', f'name = "{name}"', ""]
    path = folder / "config.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _view(rows: list[dict[str, Any]]) -> Any:
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    table = Table(
        title="jobherald demo: simulated ROMA Connect jobs and a Huawei Cloud ECS job",
        expand=False,
    )
    for column in ("job", "state", "progress", "", "status", "last error"):
        table.add_column(column)
    styles = {"succeeded": "green", "failed": "red", "running": "cyan", "unknown": "yellow"}
    for row in rows:
        progress = row["progress"] or 0.0
        table.add_row(
            row["name"],
            f"[{styles.get(row['status'], 'white')}]{row['status']}[/]",
            ProgressBar(total=1.0, completed=progress, width=24),
            f"{progress * 100:3.0f}%",
            row["raw_status"] or "-",
            row["error"] or "",
        )
    return table


async def _snapshot(cfg: config_module.Config) -> list[dict[str, Any]]:
    from jobherald.store import Store

    store = await Store.open(cfg.database_url, migrate=False)
    try:
        return [
            {
                "name": r.name,
                "status": r.state,
                "progress": r.progress,
                "raw_status": r.raw_status,
                "error": r.error,
            }
            for r in await store.status()
        ]
    finally:
        await store.close()


def _print_messages(console: Any) -> int:
    from rich.panel import Panel

    with _inbox_lock:
        messages = list(_inbox)
        _inbox.clear()
    for title, body, kind in messages:
        style = {"success": "green", "failure": "red"}.get(kind, "blue")
        console.print(Panel(body, title=f"[bold]{title}[/]", border_style=style, expand=False))
    return len(messages)


async def run_demo(speed: float = 1.0) -> int:
    from rich.console import Console
    from rich.live import Live

    from jobherald.service import Daemon, setup_logging

    _register_plugin()
    console = Console()
    interval = max(0.2, 1.0 / max(speed, 0.01))
    sim = Simulator()
    jobs = demo_jobs(interval)
    for _, job, _ in jobs:
        sim.add(job)
    url = await sim.start()
    received = 0
    # One message per finished job, and one per export archive kept.
    expected = len(jobs) + sum(1 for _, job, _ in jobs if job.archive_id)
    with tempfile.TemporaryDirectory(prefix="jobherald-demo-") as folder:
        port = _listen_port()
        cfg = config_module.load(_write_config(Path(folder), url, sim, jobs, interval, port))
        setup_logging(cfg.log_level)
        console.print(
            f"simulated ROMA Connect and Huawei Cloud job API at {url}; database {cfg.database_url}"
        )
        console.print(
            f"status page http://127.0.0.1:{port}/ , metrics http://127.0.0.1:{port}/metrics "
            "(while the demo runs)"
        )
        daemon = Daemon(cfg)
        task = asyncio.create_task(daemon.run())
        started = time.monotonic()
        rows: list[dict[str, Any]] = []
        with Live(_view(rows), console=console, refresh_per_second=4) as live:
            while time.monotonic() - started < TIME_LIMIT and not task.done():
                await asyncio.sleep(0.25)
                try:
                    rows = await _snapshot(cfg)
                except Exception:  # the daemon may still be creating the schema
                    rows = []
                live.update(_view(rows))
                received += _print_messages(live.console)
                finished = rows and all(r["status"] in ("succeeded", "failed") for r in rows)
                if finished and received >= expected:
                    break
        daemon.stop()
        await task
        received += _print_messages(console)
        await sim.stop()
    if received != expected:
        console.print(f"[red]demo: expected {expected} messages, got {received}[/]")
        return 1
    console.print()
    console.print(
        f"demo done in {time.monotonic() - started:.0f}s: {len(jobs)} jobs watched, "
        f"{len(sim.downloaded)} export archives kept, {received} messages sent."
    )
    return 0


async def serve_simulator(host: str, port: int) -> None:
    """The demo's jobs (paced for one poll a second) and a webhook at ``/hook`` that prints
    each message it is sent, served on ``host:port`` until cancelled."""
    import json

    from aiohttp import web

    sim = Simulator()
    for _, job, _ in demo_jobs(1.0):
        sim.add(job)

    async def hook(request: web.Request) -> web.Response:
        try:
            message = json.loads(await request.read())
        except ValueError:
            return web.Response(status=400, text="not JSON")
        title = str(message.get("title", "")) if isinstance(message, dict) else ""
        body = str(message.get("message", "")) if isinstance(message, dict) else ""
        print(
            f"message: {title}", *(f"  {line}" for line in body.splitlines()), sep="\n", flush=True
        )
        return web.Response(status=200)

    sim.app.router.add_post("/hook", hook)
    url = await sim.start(host, port)
    print(
        f"simulated ROMA Connect and Huawei Cloud jobs at {url} "
        f"(project {sim.project_id}, instance {next(iter(sim.instances))}, token {sim.token}); "
        f"messages sent to {url}/hook are printed here. Ctrl-C stops it.",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
