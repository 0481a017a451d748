"""jobherald's benchmarks: overhead against a bare aiohttp floor, latency, a peer, start-up.

Everything runs on 127.0.0.1: a fast fake upstream on one core, the measured client
on the other. Runs are bounded in time; figures are printed as tables and written to
bench/RESULTS.md. Usage: python bench/run.py [overhead|profile|latency|peer|startup|endurance|burst|all] [--quick]
[--before REF]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import common
from aiohttp import web

HERE = Path(__file__).resolve().parent
PY = sys.executable  # the bench's own tools (urlwatch, py-spy) live here
# The daemon and the floors run on a virtual environment holding jobherald as a user
# installs it (`pip install .`: its dependencies only, no test tools), made by
# daemon_venv() before the scenarios run.
DPY = PY
UPSTREAM_CPU, CLIENT_CPU = 1, 0


@contextlib.contextmanager
def upstream() -> Iterator[str]:
    proc = subprocess.Popen(
        [PY, str(HERE / "fake_upstream.py"), "--cpu", str(UPSTREAM_CPU)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        proc.wait(10)


def write_config(
    folder: Path,
    base: str,
    job_ids: list[str],
    interval: str,
    hook: str,
    event_loop: str | None = None,
) -> Path:
    return common.write_config(
        folder,
        base,
        job_ids,
        {"ops": [hook]},
        interval=interval,
        daemon=[f'event_loop = "{event_loop}"'] if event_loop else [],
    )


pct = common.pct


def table(title: str, rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    text = f"\n### {title}\n\n| figure | value |\n|---|---|\n"
    text += "".join(f"| {k} | {v} |\n" for k, v in rows)
    print(f"\n{title}")
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}")
    return text


def floor(base: str, count: int, event_loop: str, *mode: str) -> float:
    """CPU µs per GET of the bare aiohttp loop (bench/floor.py: flat out, or paced)."""
    command = [DPY, str(HERE / "floor.py"), base, str(count), "--cpu", str(CLIENT_CPU)]
    out = subprocess.run(
        [*command, "--loop", event_loop, *mode],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    figures = json.loads(out)
    return float(figures["cpu"]) / max(float(figures["requests"]), 1.0) * 1e6


def lag_quantile(figures: dict[str, Any], q: float) -> float:
    """The upper bound of the histogram bucket holding the q-th quantile of the lag."""
    buckets: list[int] = figures["lag_buckets"]
    total = sum(buckets)
    seen = 0
    for bound, count in zip(figures["lag_bounds"], buckets, strict=True):
        seen += count
        if total and seen >= q * total:
            return float("inf") if bound is None else float(bound)
    return 0.0


def _knows_event_loop(code: Path) -> bool:
    """Whether that tree's config has `event_loop` (config.py, or the config/ package)."""
    package = code / "daemon" / "jobherald"
    files = [package / "config.py", *sorted((package / "config").glob("*.py"))]
    return any("event_loop" in f.read_text() for f in files if f.exists())


def probe(
    base: str,
    count: int,
    interval: float,
    seconds: float,
    warmup: float,
    event_loop: str,
    code: Path | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Run the daemon (this tree's, or the one at ``code``) in bench/probe.py; its figures."""
    with tempfile.TemporaryDirectory(prefix="jh-bench-") as tmp:
        folder = Path(tmp)
        config = write_config(
            folder,
            base,
            [f"j{i}" for i in range(count)],
            f"{interval}s",
            "json://127.0.0.1:9/x",
            # An older tree is given the loop too when it knows the key (else its default).
            event_loop if code is None or _knows_event_loop(code) else None,
        )
        stats = folder / "stats.json"
        env = dict(os.environ)
        probe_script = HERE / "probe.py"
        if code is not None:  # an older tree: its own package and its own probe
            env["PYTHONPATH"] = str(code / "daemon")
            probe_script = code / "bench" / "probe.py"
        proc = subprocess.Popen(
            [
                DPY,
                str(probe_script),
                str(config),
                str(stats),
                "--warmup",
                str(warmup),
                "--cpu",
                str(CLIENT_CPU),
            ],
            env=env,
        )
        time.sleep(warmup)
        spy = None
        if profile is not None:
            spy = subprocess.Popen(
                [
                    str(Path(PY).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--duration",
                    str(int(seconds)),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(profile),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        time.sleep(seconds)
        if spy is not None:
            spy.wait(60)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        figures: dict[str, Any] = json.loads(stats.read_text())
    if "lags" in figures:  # the probe of the older tree kept every lag
        lags = sorted(figures["lags"])
        figures["p50"], figures["p99"] = pct(lags, 0.5), pct(lags, 0.99)
    else:
        figures["p50"], figures["p99"] = lag_quantile(figures, 0.5), lag_quantile(figures, 0.99)
    figures["per_poll_us"] = figures["cpu"] / max(figures["polls"], 1) * 1e6
    return figures


def overhead(
    count: int, interval: float, seconds: float, warmup: float, before: Path | None
) -> tuple[str, dict[str, float]]:
    """The daemon on both loops (and the older tree), each against the floor on its loop."""
    from jobherald.service import FLUSH_EVERY

    runs: list[tuple[str, dict[str, Any], float]] = []
    with upstream() as base:
        passes = max(1, min(5, 20_000 // count))
        loops = ("asyncio", "uvloop")
        floors = {loop: floor(base, count, loop, "--passes", str(passes)) for loop in loops}
        paced = {
            loop: floor(
                base, count, loop, "--interval", str(interval), "--warmup", str(interval + 2)
            )
            for loop in loops
        }
        if before is not None:
            figures = probe(base, count, interval, seconds, warmup, "asyncio", code=before)
            runs.append(("before (asyncio)", figures, floors["asyncio"]))
        for loop in ("asyncio", "uvloop"):
            figures = probe(base, count, interval, seconds, warmup, loop)
            runs.append((loop, figures, floors[loop]))
    scheduled = count / interval
    rows: list[tuple[str, str]] = []
    ratios: dict[str, float] = {}
    for name, f, floor_us in runs:
        achieved = f["polls"] / f["seconds"]
        ratio = f["per_poll_us"] / floor_us
        ratios[name] = ratio
        rows += [
            (
                f"{name}: polls per second, achieved / scheduled",
                f"{achieved:,.0f} / {scheduled:,.0f} ({achieved / scheduled:.0%})",
            ),
            (
                f"{name}: schedule lag p50 / p99",
                f"{f['p50'] * 1000:.0f} ms / {f['p99'] * 1000:.0f} ms",
            ),
            (
                f"{name}: daemon CPU per poll / floor CPU per GET ({name.split()[-1].strip('()')})",
                f"{f['per_poll_us']:.0f} µs / {floor_us:.0f} µs = {ratio:.2f}x",
            ),
            (
                f"{name}: daemon CPU per poll / paced floor per GET",
                f"{f['per_poll_us']:.0f} µs / {paced[name.split()[-1].strip('()')]:.0f} µs = "
                f"{f['per_poll_us'] / paced[name.split()[-1].strip('()')]:.2f}x",
            ),
            (f"{name}: CPU used (one core = 100 %)", f"{f['cpu'] / f['seconds']:.0%}"),
            (f"{name}: peak RSS", f"{f['peak_rss_mb']:.0f} MB"),
            (f"{name}: database rows written per poll", f"{f['rows'] / max(f['polls'], 1):.3f}"),
        ]
    now = [(n, f, fl) for n, f, fl in runs if not n.startswith("before")]
    worst_p99 = max(f["p99"] for _, f, _ in now)
    achieved_all = [f["polls"] / f["seconds"] / scheduled for _, f, _ in now]
    rss = max(f["peak_rss_mb"] for _, f, _ in now)
    rows += [
        (
            "paced floor (bare aiohttp on the same schedule) / floor",
            ", ".join(f"{loop} {paced[loop]:.0f} / {floors[loop]:.0f} µs" for loop in paced),
        ),
        (
            "target: CPU per poll <= 1.5x floor, on each loop",
            ", ".join(
                f"{n} {f['per_poll_us'] / fl:.2f}x {'met' if f['per_poll_us'] / fl <= 1.5 else 'missed'}"
                for n, f, fl in now
            ),
        ),
        (
            "target: achieved polls 98-102 % of scheduled",
            "met" if all(0.98 <= a <= 1.02 for a in achieved_all) else "missed",
        ),
        ("target: p99 schedule lag < 100 ms", "met" if worst_p99 < 0.1 else "missed"),
        ("target: peak RSS <= 100 MB", "met" if rss <= 100 else "missed"),
        (
            "poll times of unchanged polls (not in a window shorter than their period)",
            f"one row per polled job every {FLUSH_EVERY:.0f} s and at shutdown: "
            f"{interval / FLUSH_EVERY:.3f} rows per poll",
        ),
    ]
    text = table(
        f"Overhead: {count:,} jobs every {interval:g} s, {seconds:.0f} s measured per run", rows
    )
    return text, ratios


def profile(
    count: int, interval: float, seconds: float, warmup: float, loop: str, top: int = 20
) -> str:
    """py-spy on the daemon at ``count`` jobs: the frames with the most self time."""
    with tempfile.TemporaryDirectory(prefix="jh-spy-") as tmp, upstream() as base:
        out = Path(tmp) / "profile.txt"
        probe(base, count, interval, seconds, warmup, loop, profile=out)
        self_time: dict[str, int] = {}
        total = 0
        for line in out.read_text().splitlines():
            stack, _, samples = line.rpartition(" ")
            if not stack or not samples.isdigit():
                continue
            leaf = stack.rsplit(";", 1)[-1]
            self_time[leaf] = self_time.get(leaf, 0) + int(samples)
            total += int(samples)
    ranked = sorted(self_time.items(), key=lambda kv: -kv[1])[:top]
    text = (
        f"\n### Profile: py-spy, {count:,} jobs every {interval:g} s on {loop}, "
        f"{seconds:.0f} s, {total:,} samples\n\n| self time | frame |\n|---|---|\n"
    )
    text += "".join(f"| {n / max(total, 1):.1%} | `{frame}` |\n" for frame, n in ranked)
    print(text)
    return text


class Receiver:
    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        async def post(request: web.Request) -> web.Response:
            body = await request.json()
            job = body["message"].split("\n", 2)[1].removeprefix("id: ")
            self.arrivals.setdefault(job, time.time())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", post)
        async with common.serving(app) as port:
            yield f"json://127.0.0.1:{port}/hook"


async def latency_run(count: int, interval: float, spread: float) -> str:
    receiver = Receiver()
    with tempfile.TemporaryDirectory(prefix="jh-bench-") as tmp, upstream() as base:
        async with receiver.serve() as hook:
            start = time.time() + 5.0
            flips = {
                f"flip-{int((start + spread * i / count) * 1000)}-{i}": start + spread * i / count
                for i in range(count)
            }
            config = write_config(Path(tmp), base, list(flips), f"{interval}s", hook)
            proc = await asyncio.create_subprocess_exec(
                DPY, "-m", "jobherald", "run", "-c", str(config)
            )
            deadline = time.time() + 5.0 + spread + interval * 3 + 10
            while len(receiver.arrivals) < count and time.time() < deadline:
                await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
    delays = [receiver.arrivals[j] - flips[j] for j in flips if j in receiver.arrivals]
    return table(
        f"Latency: {count} jobs flip to SUCCEEDED over {spread:g} s, polled every {interval:g} s",
        [
            ("messages received", f"{len(delays)} of {count}"),
            ("flip to message p50 / p99", f"{pct(delays, 0.5):.2f} s / {pct(delays, 0.99):.2f} s"),
            (
                "target: p99 within interval + 0.2 s",
                f"{interval + 0.2:.2f} s: {'met' if pct(delays, 0.99) <= interval + 0.2 else 'missed'}",
            ),
        ],
    )


def timed(command: list[str], **kwargs: Any) -> tuple[float, float]:
    """Wall seconds and CPU seconds (of the child processes) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def peer(count: int, rounds: int) -> str:
    with tempfile.TemporaryDirectory(prefix="jh-bench-") as tmp, upstream() as base:
        folder = Path(tmp)
        ids = [f"j{i}" for i in range(count)]
        config = write_config(folder, base, ids, "30s", "json://127.0.0.1:9/x")
        jobs = folder / "urls.yaml"
        jobs.write_text(
            "".join(
                f"---\nname: {job}\nurl: {base}/v2/p/instances/i/assets/jobs/{job}\n"
                "headers:\n  X-Auth-Token: t\nfilter:\n  - format-json\n  - grep: '\"status\"'\n"
                for job in ids
            )
        )
        (folder / "urlwatch.yaml").write_text("report:\n  stdout:\n    enabled: true\n")
        urlwatch = [
            sys.executable.replace("python", "urlwatch")
            if False
            else str(Path(PY).with_name("urlwatch")),
            "--urls",
            str(jobs),
            "--config",
            str(folder / "urlwatch.yaml"),
            "--cache",
            str(folder / "cache.db"),
        ]
        mine = [DPY, "-m", "jobherald", "run", "--once", "-c", str(config)]
        pin = {"preexec_fn": lambda: os.sched_setaffinity(0, {CLIENT_CPU})}
        timed(urlwatch, **pin)  # first passes fill the caches; the measured ones are steady state
        timed(mine, **pin)
        theirs = [timed(urlwatch, **pin) for _ in range(rounds)]
        ours = [timed(mine, **pin) for _ in range(rounds)]
        bare = [DPY, str(HERE / "floor.py"), base, str(count), "--passes", "0"]
        floors = [timed(bare, **pin) for _ in range(rounds)]
    their_wall, their_cpu = (
        statistics.median(w for w, _ in theirs),
        statistics.median(c for _, c in theirs),
    )
    our_wall, our_cpu = statistics.median(w for w, _ in ours), statistics.median(c for _, c in ours)
    floor_wall = statistics.median(w for w, _ in floors)
    return table(
        f"Against a peer: one fresh-process pass over {count:,} job URLs (median of {rounds})",
        [
            ("urlwatch 2.29: wall / CPU", f"{their_wall:.2f} s / {their_cpu:.2f} s"),
            ("jobherald run --once: wall / CPU", f"{our_wall:.2f} s / {our_cpu:.2f} s"),
            (
                "jobherald is faster by (wall / CPU)",
                f"{their_wall / our_wall:.1f}x / {their_cpu / our_cpu:.1f}x",
            ),
            (
                "the one-shot floor (a fresh bare aiohttp process, same GETs): wall",
                f"{floor_wall:.2f} s; jobherald is {our_wall / floor_wall:.1f}x that, "
                f"urlwatch {their_wall / floor_wall:.1f}x",
            ),
            ("target: at least 5x faster", "met" if their_wall / our_wall >= 5 else "missed"),
        ],
    )


def startup(count: int, rounds: int) -> str:
    with tempfile.TemporaryDirectory(prefix="jh-bench-") as tmp, upstream() as base:
        folder = Path(tmp)
        config = write_config(
            folder, base, [f"j{i}" for i in range(count)], "1h", "json://127.0.0.1:9/x"
        )
        subprocess.run(
            [DPY, "-m", "jobherald", "run", "--once", "-c", str(config)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        times = []
        for _ in range(rounds):
            sock_path = folder / "notify.sock"
            sock_path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(sock_path))
            sock.settimeout(60)
            started = time.monotonic()
            proc = subprocess.Popen(
                [DPY, "-m", "jobherald", "run", "-c", str(config)],
                env={**os.environ, "NOTIFY_SOCKET": str(sock_path)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            while True:
                if sock.recv(4096).startswith(b"READY=1"):
                    break
            times.append(time.monotonic() - started)
            proc.terminate()
            proc.wait(30)
            sock.close()
    median = statistics.median(times)
    return table(
        f"Start-up: `jobherald run` to READY=1 with {count:,} jobs in the config and database",
        [
            ("median of runs", f"{median:.2f} s ({', '.join(f'{t:.2f}' for t in times)})"),
            ("target: under 1.5 s", "met" if median < 1.5 else "missed"),
        ],
    )


def machine() -> str:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    return (
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- machine: {os.cpu_count()} cores, {model}, Python {platform.python_version()}\n"
        f"- commit: {commit or 'unknown'}\n"
        f"- fake upstream pinned to core {UPSTREAM_CPU}, client pinned to core {CLIENT_CPU}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "scenario",
        nargs="?",
        default="all",
        choices=[
            "overhead",
            "latency",
            "peer",
            "startup",
            "profile",
            "endurance",
            "burst",
            "polite",
            "scale",
            "aged",
            "all",
        ],
    )
    parser.add_argument(
        "--quick", action="store_true", help="shorter runs (a smoke test, not figures)"
    )
    parser.add_argument(
        "--before",
        metavar="REF",
        help="also measure the overhead of this git commit, side by side in the same run",
    )
    parser.add_argument(
        "--aged-jobs",
        type=int,
        default=1_000_000,
        metavar="N",
        help="finished jobs in the aged scenario's year-old database (default 1,000,000)",
    )
    args = parser.parse_args()
    quick = args.quick
    global DPY
    DPY = daemon_venv()
    sections = []
    with contextlib.ExitStack() as stack:
        before = stack.enter_context(worktree(args.before)) if args.before else None
        if args.scenario in ("overhead", "all"):
            window, warm = (5, 5) if quick else (30, 10)
            sections.append(overhead(1_000, 1.0, window, warm, before)[0])
            # A window over a minute holds the older tree's once-a-minute write of poll times.
            sections.append(overhead(10_000, 10.0, 5 if quick else 65, warm + 5, before)[0])
        if args.scenario in ("burst", "all"):
            sections.append(burst_table(50 if quick else 500, before))
        if args.scenario in ("polite", "all"):
            sections.append(polite_table(quick, before))
        if args.scenario in ("scale", "all"):
            sections.append(scale_table(10_000 if quick else 100_000, before))
        if args.scenario in ("aged", "all"):
            sections.append(aged_table(20_000 if quick else args.aged_jobs, before))
    if args.scenario in ("profile", "all"):
        for loop in ("asyncio", "uvloop"):
            sections.append(profile(10_000, 10.0, 5 if quick else 20, 15, loop))
    if args.scenario in ("latency", "all"):
        sections.append(asyncio.run(latency_run(50 if quick else 200, 2.0, 5 if quick else 10)))
    if args.scenario in ("peer", "all"):
        sections.append(peer(200 if quick else 1_000, 1 if quick else 3))
    if args.scenario in ("startup", "all"):
        sections.append(startup(1_000 if quick else 10_000, 1 if quick else 3))
    if args.scenario in ("endurance", "all"):
        from endurance import endurance

        sections.append(asyncio.run(endurance(DPY, 1 if quick else 10)))
    if args.scenario == "all" and not quick:
        text = (
            "# Benchmark results\n\nWritten by `make bench` (bench/run.py).\n\n"
            + machine()
            + (f"- before: commit {args.before}, measured in the same run\n" if args.before else "")
            + "".join(sections)
        )
        (HERE / "RESULTS.md").write_text(text)
        print(f"\nwritten to {HERE / 'RESULTS.md'}")


def burst_table(count: int, before: Path | None) -> str:
    """The burst scenario (bench/burst.py), the older tree first when given, same run."""
    from burst import burst, rows

    figures = []
    with upstream() as base:
        if before is not None:
            figures.append(
                ("before", asyncio.run(burst(DPY, base, count, window=150, code=before)))
            )
        figures.append(("now", asyncio.run(burst(DPY, base, count, window=150))))
    lines = [row for label, f in figures for row in rows(label, f)]
    now = figures[-1][1]
    lines += [
        (
            "target: every finished job on chat within 8 s of the last finish",
            "met" if now["chat_all"] is not None and now["chat_all"] < 8 else "missed",
        ),
        (
            "target: the late job on chat within 3 s",
            "met" if now["late"] is not None and now["late"] < 3 else "missed",
        ),
        (
            "target: at most 10 emails carry every event",
            "met" if now["emails"] <= 10 and now["emailed_jobs"] == count + 1 else "missed",
        ),
    ]
    return table(
        f"Burst: {count} jobs finish within 1 s, one more 20 s later; chat, email, a 3 s "
        "webhook and a dead one",
        lines,
    )


def polite_table(quick: bool, before: Path | None) -> str:
    """The polite scenario (bench/polite.py): a budget spent on the jobs about to finish
    against round-robin at the same rate, and a 429 storm (the older tree first)."""
    from polite import finishing, rows, storm

    count, rate, window = (500, 50.0, 30.0) if quick else (5_000, 50.0, 120.0)
    with upstream() as base:
        urgent_before = None
        if before is not None:
            urgent_before = asyncio.run(
                finishing(DPY, base, count, rate, urgent=True, window=window, code=before)
            )
        urgent = asyncio.run(finishing(DPY, base, count, rate, urgent=True, window=window))
        plain = asyncio.run(finishing(DPY, base, count, rate, urgent=False, window=window))
        storms = []
        if before is not None:
            storms.append(("before", asyncio.run(storm(DPY, base, code=before))))
        storms.append(("now", asyncio.run(storm(DPY, base))))
    return table(
        f"Polite: {count:,} jobs ending over {window:.0f} s under max_rate {rate:g}; a 429 storm",
        rows(urgent, plain, storms, rate, urgent_before),
    )


def scale_table(count: int, before: Path | None) -> str:
    """The scale scenario (bench/scale.py), the older tree first when given, same run."""
    from scale import rows, scale

    lines = []
    with upstream() as base:
        if before is not None:
            older = asyncio.run(scale(DPY, base, count, code=before))
            lines += [(f"before: {k}", v) for k, v in rows(older) if not k.startswith("target")]
        lines += rows(asyncio.run(scale(DPY, base, count)))
    return table(f"Scale: {count:,} jobs every 60 s while pages are read", lines)


def aged_table(finished: int, before: Path | None) -> str:
    """The aged scenario (bench/aged.py): a year-old database against a fresh one (and
    the older tree on the same files, when given)."""
    from aged import aged, rows

    with upstream() as base:
        figures = asyncio.run(aged(DPY, base, finished, before))
    print(json.dumps(figures, indent=2, default=str))
    return table(
        f"Aged: {finished:,} finished jobs over a year beside 1,000 watched, against a fresh "
        "database; then a prune of half the year while the 1,000 are polled",
        rows(figures),
    )


def daemon_venv() -> str:
    """bench/.venv-daemon with this tree's jobherald installed as a user would; its python."""
    venv = HERE / ".venv-daemon"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([PY, "-m", "venv", "--clear", str(venv)], check=True)
    # Dependencies added since the venv was made are installed (the others stay) ...
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(HERE.parent)], check=True)
    # ... and jobherald itself is this tree's, every run.
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--force-reinstall",
            str(HERE.parent),
        ],
        check=True,
    )
    return str(python)


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """An older commit checked out aside (removed after)."""
    folder = Path(tempfile.mkdtemp(prefix="jh-before-"))
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(folder), ref],
        cwd=HERE,
        check=True,
        capture_output=True,
    )
    # Run from the source tree (PYTHONPATH), the package's migrations where the wheel puts them,
    # and compiled as an installed package is (with PYTHONDONTWRITEBYTECODE set, a start
    # would otherwise compile every module again).
    (folder / "daemon" / "jobherald" / "migrations").symlink_to(folder / "migrations")
    subprocess.run([PY, "-m", "compileall", "-q", str(folder / "daemon")], check=True)
    try:
        yield folder
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(folder)], cwd=HERE, capture_output=True
        )


if __name__ == "__main__":
    main()
