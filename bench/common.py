"""What the benchmark scenarios share: the config they give the daemon, and percentiles."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path

from aiohttp import web


def write_config(
    folder: Path,
    base: str,
    jobs: Iterable[str] | Iterable[tuple[str, str]],
    notifiers: Mapping[str, Sequence[str]],
    *,
    interval: str = "1s",
    concurrency: int = 16,
    log_level: str = "warning",
    listen: str = "",
    source: Sequence[str] = (),
    daemon: Sequence[str] = (),
) -> Path:
    """A config.toml in ``folder``: one ROMA Connect source at ``base`` (its extra keys in
    ``source``), notifiers by name with their URLs (on succeeded and failed), and the jobs,
    each an id or an (id, name)."""
    lines = [
        "[daemon]",
        'database = "sqlite:///bench.db"',
        f'poll_interval = "{interval}"',
        f"concurrency = {concurrency}",
        f'log_level = "{log_level}"',
        *daemon,
        "",
        "[http]",
        f'listen = "{listen}"',
        "",
        "[sources.roma]",
        'type = "roma-connect"',
        f'endpoint = "{base}"',
        'project_id = "p"',
        'instance_id = "i"',
        'token = "t"',
        *source,
    ]
    for name, urls in notifiers.items():
        quoted = ", ".join(f'"{url}"' for url in urls)
        lines += ["", f"[notifiers.{name}]", f"urls = [{quoted}]", 'on = ["succeeded", "failed"]']
    for job in jobs:
        job_id, name = job if isinstance(job, tuple) else (job, "")
        lines.append(f'[[jobs]]\nid = "{job_id}"\nsource = "roma"')
        if name:
            lines.append(f'name = "{name}"')
    path = folder / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of some values; nan when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """An aiohttp app on 127.0.0.1 at a free port, for the scenario's length; its port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def daemon(python: str, config: Path, code: Path | None = None) -> AsyncIterator[None]:
    """``jobherald run`` on ``config`` (the tree at ``code``, else the installed one), for
    as long as the block runs; stopped with SIGTERM (killed if it does not stop)."""
    import asyncio
    import os
    import signal

    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code / "daemon")
    proc = await asyncio.create_subprocess_exec(
        python, "-m", "jobherald", "run", "-c", str(config), env=env
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
