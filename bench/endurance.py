"""Endurance: the daemon as it runs for months, compressed into minutes.

``count`` jobs are polled every ``interval`` while, every ``every`` seconds, a drop-in
file adds ``batch`` jobs that finish a few seconds later and a SIGHUP loads it; the
oldest drop-in goes once ``kept`` are there, as an operator prunes finished jobs, so the
config stops growing after a few minutes. The daemon keeps polling, finishing, recording,
delivering and reloading. What grows and what does not is read from the kernel
(``/proc/PID``): resident memory (its slope once the config has stopped growing is what
a leak would show), open files, threads; and from the outcome: every finished job's
message received. Run by ``bench/run.py endurance`` (and by ``make bench``).
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import tempfile
import time
from pathlib import Path

import run as bench


def proc_figures(pid: int) -> tuple[float, int, int]:
    """Resident MB, open file descriptors and threads of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(status.split("VmRSS:")[1].split()[0]) / 1024
    threads = int(status.split("Threads:")[1].split()[0])
    return rss, len(list(Path(f"/proc/{pid}/fd").iterdir())), threads


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares growth of y per unit of x."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    return statistics.linear_regression(xs, ys).slope if len(set(xs)) > 1 else 0.0


async def endurance(
    dpy: str, minutes: float, count: int = 1_000, interval: float = 1.0, batch: int = 100
) -> str:
    every, kept = 30.0, 5
    settle = min(every * (kept + 2), minutes * 20)  # the config no longer grows after this
    receiver = bench.Receiver()
    flips: list[str] = []
    samples: list[tuple[float, float, int, int]] = []  # seconds, MB, files, threads
    with tempfile.TemporaryDirectory(prefix="jh-endure-") as tmp, bench.upstream() as base:
        folder = Path(tmp)
        async with receiver.serve() as hook:
            ids = [f"steady-{i}" for i in range(count)]
            config = bench.write_config(folder, base, ids, f"{interval}s", hook)
            text = config.read_text().replace(
                "[daemon]\n", '[daemon]\ninclude = ["jobs.d/*.toml"]\n'
            )
            config.write_text(text)
            (folder / "jobs.d").mkdir()
            proc = await asyncio.create_subprocess_exec(
                dpy, "-m", "jobherald", "run", "-c", str(config)
            )
            started = time.monotonic()
            next_batch, n = started + every, 0
            while (now := time.monotonic()) - started < minutes * 60:
                samples.append((now - started, *proc_figures(proc.pid)))
                if now >= next_batch:
                    flip_ms = int((time.time() + 3) * 1000)
                    new = [f"flip-{flip_ms}-{n}-{i}" for i in range(batch)]
                    dropin = folder / "jobs.d" / f"batch-{n}.toml"
                    dropin.write_text(
                        "".join(f'[[jobs]]\nid = "{job}"\nsource = "roma"\n' for job in new)
                    )
                    flips += new
                    if n >= kept:
                        (folder / "jobs.d" / f"batch-{n - kept}.toml").unlink()
                    proc.send_signal(signal.SIGHUP)
                    next_batch, n = next_batch + every, n + 1
                await asyncio.sleep(10)
            deadline = time.monotonic() + 30
            while len(receiver.arrivals) < len(flips) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
        database = (folder / "bench.db").stat().st_size / 1e6
    steady = [s for s in samples if s[0] >= settle] or samples
    growth = slope([(t / 3600, mb) for t, mb, _, _ in steady])
    first, last = steady[0], samples[-1]
    received = sum(1 for job in flips if job in receiver.arrivals)
    return bench.table(
        f"Endurance: {count:,} jobs every {interval:g} s for {minutes:g} min, "
        f"{batch} more added by SIGHUP every {every:.0f} s and finishing, the drop-ins of "
        f"the last {kept} kept",
        [
            ("polls scheduled", f"{count / interval * minutes * 60:,.0f}"),
            ("jobs added and finished / messages received", f"{len(flips):,} / {received:,}"),
            (
                f"resident memory at {first[0]:.0f} s / at the end",
                f"{first[1]:.1f} MB / {last[1]:.1f} MB",
            ),
            (
                f"resident memory growth after the first {settle:.0f} s, the config no longer "
                "growing (least squares)",
                f"{growth:+.1f} MB per hour",
            ),
            ("open files at the start / at the end", f"{samples[0][2]} / {last[2]}"),
            ("threads at the start / at the end", f"{samples[0][3]} / {last[3]}"),
            ("database size at the end", f"{database:.1f} MB"),
            ("exit code on SIGTERM", str(code)),
        ],
    )
