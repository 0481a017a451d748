"""Aged: a database a year old against a fresh one, with the same 1,000 watched jobs.

The year is built through the store's own API, as a daemon would have written it: each
day a few thousand jobs are registered, run (eight transitions; "started", "progress"
and "succeeded" events with a daemon's payloads and four deliveries, all delivered) and
leave the config the next day. Then, for the
aged file (keep_history = "forever") and the fresh one side by side, measured: start to
first poll (median of three), peak RSS, ``GET /``, ``/api/jobs?limit=100``,
``/api/counts``, ``/jobs/ID``, ``status``, ``status --json`` and ``history``. Last, the
aged file is pruned (keep_history: about half the year) while its 1,000 jobs are polled
every 5 s: the polls per second during the prune, its length, the file before and after.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import statistics
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from common import write_config
from scale import Counter, _free_port, _rss, _spawn, _timed_get, _wait_ready

HERE = os.path.dirname(os.path.abspath(__file__))
# The schema the older tree of a side-by-side run knows.
BEFORE_SCHEMA = "0011"
# What the builder writes per job (a cached file of an earlier builder is not reused).
BUILD = 2
WATCHED = 1_000
INTERVAL = 5.0
STARTS = 3
READS = 5


async def build(path: Path, finished: int, days: int = 365) -> None:
    """A database at ``path`` holding ``finished`` jobs that ran and left over ``days``
    days, beside ``WATCHED`` running ones, written through the store's API."""
    from jobherald.config import WatchedJob
    from jobherald.model import Event, EventKind, JobView, Outcome, State, Transition
    from jobherald.payload import event_payload
    from jobherald.store import Claimer, JobIdentity, NewEvent, Store, Target

    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    me = Claimer("aged-bench", "bench")
    targets = [Target("ops", "chat", "json://chat"), Target("ops", "mail", "json://mail")]
    watched = [JobIdentity(f"w{i}", f"watched {i}", "roma", "i") for i in range(WATCHED)]
    start = datetime.now(UTC) - timedelta(days=days)
    per_day = max(1, finished // days)
    made = 0

    async def run(job: JobIdentity, day: datetime) -> None:
        """What a real run writes: seven progress samples and the success (eight
        transitions), "started", "progress" and "succeeded" events with the payload a
        daemon builds, four deliveries (the success to two URLs)."""
        watched_as = WatchedJob(job.id, job.name, "roma", "i", ("ops",), INTERVAL, "bench")
        begin = day + timedelta(minutes=1)
        view = JobView(job.id, state=State.RUNNING, raw_status="RUNNING", begin_time=begin)
        before = JobView(job.id)
        for step in range(7):
            at = begin + timedelta(minutes=5 * step)
            progress = (step + 1) / 8
            view = replace(view, progress=progress, last_changed_at=at)
            t = Transition(at, before.state, State.RUNNING, progress, "RUNNING")
            new = []
            if step in (0, 3):
                kind = EventKind.STARTED if step == 0 else EventKind.PROGRESS
                said = Event(kind, "started" if step == 0 else "50 % done")
                payload = event_payload(said, watched_as, before, view, at, None)
                new.append(NewEvent(kind.value, payload, targets[:1]))
            recorded = await store.record(job.id, Outcome(view, True, t), at, new)
            before = view = recorded.view
        end = begin + timedelta(minutes=40 + hash(job.id) % 20)
        done = replace(
            view,
            state=State.SUCCEEDED,
            raw_status="SUCCEEDED",
            progress=1.0,
            end_time=end,
            last_changed_at=end,
        )
        said = Event(EventKind.SUCCEEDED, "succeeded in 45m")
        payload = event_payload(said, watched_as, view, done, end, None, typical=2700.0)
        t = Transition(end, State.RUNNING, State.SUCCEEDED, 1.0, "SUCCEEDED")
        event = NewEvent("succeeded", payload, targets)
        await store.record(job.id, Outcome(done, True, t), end, [event])

    try:
        await store.sync_jobs(watched, start)
        for d in range(days):
            day = start + timedelta(days=d)
            count = per_day if d < days - 1 else finished - made
            todays = [
                JobIdentity(f"f{made + i}", f"nightly export {(made + i) % 500}", "roma", "i")
                for i in range(count)
            ]
            made += count
            # Yesterday's jobs leave the config today.
            await store.sync_jobs([*watched, *todays], day)
            await asyncio.gather(*(run(job, day) for job in todays))
            while due := await store.claim_due(day + timedelta(days=1), me, limit=5000):
                await store.mark_digest_delivered([d.id for d in due], day, me, "digest")
            if d % 30 == 0:
                print(f"  aged database: day {d} of {days}, {made:,} finished jobs", flush=True)
        await store.sync_jobs(watched, start + timedelta(days=days))
        await store.reclaim()
    finally:
        await store.close()


def _size(path: Path) -> int:
    """A file's size (0: not there)."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        if _size(Path(f"{path}{suffix}")):
            os.remove(f"{path}{suffix}")


def _config(folder: Path, base: str, port: int, keep: str | None) -> Path:
    return write_config(
        folder,
        base,
        ((f"w{i}", f"watched {i}") for i in range(WATCHED)),
        {"ops": ["json://127.0.0.1:9/chat"]},
        interval=f"{INTERVAL:g}s",
        concurrency=32,
        listen=f"127.0.0.1:{port}",
        daemon=[f'keep_history = "{keep}"'] if keep else [],
    )


async def _command(python: str, env: dict[str, str], *args: str) -> float:
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        python, "-m", "jobherald", *args, stdout=asyncio.subprocess.DEVNULL, env=env
    )
    if await proc.wait() != 0:
        raise RuntimeError(f"jobherald {' '.join(args)} failed")
    return time.monotonic() - began


async def reads(
    python: str, base: str, folder: Path, keep: str | None, code: Path | None = None
) -> dict[str, Any]:
    """Starts and reads on the database in ``folder`` (bench.db), by the tree at ``code``
    (else the installed one)."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code / "daemon")
    port = _free_port()
    config = _config(folder, base, port, keep)
    address = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"bytes": _size(folder / "bench.db")}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        counter = Counter(http, base)
        starts, readies = [], []
        for attempt in range(STARTS):
            before = await counter.count()
            began = time.monotonic()
            proc = await _spawn(python, config, env)
            try:
                while await counter.count() == before:
                    if proc.returncode is not None:
                        raise RuntimeError("the daemon ended before its first poll")
                    await asyncio.sleep(0.02)
                starts.append(time.monotonic() - began)
                await _wait_ready(http, address, proc)
                readies.append(time.monotonic() - began)
            except BaseException:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
                raise
            if attempt < STARTS - 1:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 120)
        out["first_poll"] = statistics.median(starts)
        out["ready"] = statistics.median(readies)
        try:
            await asyncio.sleep(10)  # polling settles
            timings: dict[str, float] = {}
            for label, path in (
                ("GET /", "/"),
                ("GET /api/jobs?limit=100", "/api/jobs?limit=100"),
                ("GET /api/counts", "/api/counts"),
                ("GET /jobs/ID", f"/jobs/w{WATCHED // 2}"),
            ):
                timings[label] = statistics.median(
                    [(await _timed_get(http, address + path))[0] for _ in range(READS)]
                )
            for label, args in (
                ("status", ("status", "-c", str(config))),
                ("status --json", ("status", "--json", "-c", str(config))),
                ("history", ("history", f"w{WATCHED // 2}", "-c", str(config))),
            ):
                timings[label] = statistics.median(
                    [await _command(python, env, *args) for _ in range(3)]
                )
            out["timings"] = timings
            out["rss"] = _rss(proc.pid)[1]
        finally:
            await _stop(proc)
    return out


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, and a kill when that does not end it within two minutes."""
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def _pruned_jobs(http: aiohttp.ClientSession, address: str) -> float:
    return await _metric(http, address, 'jobherald_pruned_rows_total{table="jobs"}')


async def _metric(http: aiohttp.ClientSession, address: str, name: str) -> float:
    async with http.get(f"{address}/metrics") as answer:
        text = await answer.text()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


async def prune(python: str, base: str, folder: Path, keep: str) -> dict[str, Any]:
    """The daemon on the aged file with ``keep``: polls per second while it prunes."""
    env = dict(os.environ)
    port = _free_port()
    config = _config(folder, base, port, keep)
    address = f"http://127.0.0.1:{port}"
    db = folder / "bench.db"
    out: dict[str, Any] = {"bytes_before": _size(db)}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        counter = Counter(http, base)
        proc = await _spawn(python, config, env)
        try:
            await _wait_ready(http, address, proc)
            counter.start()
            # The first pass starts soon after the start; the database's size is told
            # once a pass has ended (its rows deleted and the file given back).
            began = None
            deadline = time.monotonic() + 3600
            while time.monotonic() < deadline:
                pruned = await _pruned_jobs(http, address)
                if pruned and began is None:
                    began = time.monotonic() - 0.5
                if await _metric(http, address, "jobherald_database_bytes"):
                    break
                await asyncio.sleep(0.5)
            ended = time.monotonic()
            out["pruned"] = await _pruned_jobs(http, address)
            out["seconds"] = ended - (began or ended)
            since = began or ended - 1
            out["lowest"] = counter.lowest_per_second(since, ended)
            out["rate"] = counter.rate(since, ended)
        finally:
            await counter.stop()
            await _stop(proc)
    out["bytes_after"] = _size(db)
    return out


def downgrade(path: Path, revision: str) -> None:
    """The database at ``path`` taken back to an older schema revision (for an older tree)."""
    import sqlalchemy as sa
    from alembic import command

    from jobherald.store.schema import alembic_config

    config = alembic_config()
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, revision)
    finally:
        engine.dispose()


async def aged(python: str, base: str, finished: int, before: Path | None = None) -> dict[str, Any]:
    cache = os.path.join(HERE, f".aged-{finished}-{BUILD}.db")
    if not _size(Path(cache)):
        print(f"building a year-old database of {finished:,} finished jobs (kept for reuse)")
        began = time.monotonic()
        building = Path(cache + ".building")
        _remove(building)
        await build(building, finished)
        os.replace(building, cache)
        print(f"  built in {time.monotonic() - began:.0f} s")
    figures: dict[str, Any] = {"finished": finished}
    with (
        tempfile.TemporaryDirectory(prefix="jh-aged-") as old,
        tempfile.TemporaryDirectory(prefix="jh-fresh-") as new,
    ):
        shutil.copy(cache, Path(old) / "bench.db")
        # The fresh file: the watched jobs alone, registered by a first start.
        fresh = Path(new) / "bench.db"
        await build(fresh, 0, days=1)
        if before is not None:
            # The older tree on the same two files, taken back to the schema it knows.
            with (
                tempfile.TemporaryDirectory(prefix="jh-aged-before-") as old_b,
                tempfile.TemporaryDirectory(prefix="jh-fresh-before-") as new_b,
            ):
                for there, copy_to in ((cache, old_b), (fresh, new_b)):
                    shutil.copy(there, Path(copy_to) / "bench.db")
                    downgrade(Path(copy_to) / "bench.db", BEFORE_SCHEMA)
                figures["before_fresh"] = await reads(python, base, Path(new_b), None, before)
                figures["before_aged"] = await reads(python, base, Path(old_b), None, before)
        figures["fresh"] = await reads(python, base, Path(new), "forever")
        figures["aged"] = await reads(python, base, Path(old), "forever")
        figures["prune"] = await prune(python, base, Path(old), "182d")
    return figures


def _side_by_side(
    label: str, fresh: dict[str, Any], aged_: dict[str, Any]
) -> list[tuple[str, str]]:
    out = []
    for what, key in (("start to first poll", "first_poll"), ("start to ready", "ready")):
        a, b = fresh[key], aged_[key]
        out.append((f"{label}{what}, fresh / aged", f"{a:.2f} s / {b:.2f} s ({b / a:.2f}x)"))
    for what in fresh["timings"]:
        a, b = fresh["timings"][what], aged_["timings"][what]
        out.append(
            (f"{label}{what}, fresh / aged (median)", f"{a:.3f} s / {b:.3f} s ({b / a:.2f}x)")
        )
    a, b = fresh["rss"], aged_["rss"]
    out.append((f"{label}peak RSS, fresh / aged", f"{a:.0f} MB / {b:.0f} MB ({b / a:.2f}x)"))
    return out


def rows(f: dict[str, Any]) -> list[tuple[str, str]]:
    fresh, aged_ = f["fresh"], f["aged"]
    out = []
    if "before_aged" in f:
        out += _side_by_side("before: ", f["before_fresh"], f["before_aged"])
    out += [
        (
            "database file, fresh / aged",
            f"{fresh['bytes'] / 2**20:,.1f} MB / {aged_['bytes'] / 2**20:,.0f} MB",
        ),
        (
            "bytes per finished job (aged file)",
            f"{(aged_['bytes'] - fresh['bytes']) / f['finished']:,.0f}",
        ),
    ]
    worst = 0.0
    for label, key in (("start to first poll", "first_poll"), ("start to ready", "ready")):
        ratio = aged_[key] / fresh[key]
        worst = max(worst, ratio) if key == "first_poll" else worst
        out.append(
            (f"{label}, fresh / aged", f"{fresh[key]:.2f} s / {aged_[key]:.2f} s ({ratio:.2f}x)")
        )
    for label in fresh["timings"]:
        a, b = fresh["timings"][label], aged_["timings"][label]
        worst = max(worst, b / a)
        out.append((f"{label}, fresh / aged (median)", f"{a:.3f} s / {b:.3f} s ({b / a:.2f}x)"))
    rss = aged_["rss"] / fresh["rss"]
    out.append(
        ("peak RSS, fresh / aged", f"{fresh['rss']:.0f} MB / {aged_['rss']:.0f} MB ({rss:.2f}x)")
    )
    p = f["prune"]
    scheduled = WATCHED / INTERVAL
    out += [
        (
            "prune (keep_history 182d): jobs pruned, seconds",
            f"{p['pruned']:,.0f} in {p['seconds']:.0f} s",
        ),
        (
            "polls per second during the prune: lowest second / mean (schedule)",
            f"{p['lowest']:,.0f} / {p['rate']:,.0f} ({scheduled:,.0f})",
        ),
        (
            "file before / after the prune",
            f"{p['bytes_before'] / 2**20:,.0f} MB / {p['bytes_after'] / 2**20:,.0f} MB",
        ),
        (
            "target: every read and the first poll within 1.5x of fresh",
            "met" if worst <= 1.5 else f"missed ({worst:.2f}x)",
        ),
        ("target: RSS within 1.2x of fresh", "met" if rss <= 1.2 else f"missed ({rss:.2f}x)"),
        (
            "target: no second below half the schedule during the prune",
            "met" if p["lowest"] >= scheduled / 2 else "missed",
        ),
    ]
    return out
