"""Politeness: a request budget spent on the jobs about to finish, and a 429 storm.

Finishing: jobs run with progress growing evenly to their end (the fake upstream's
``ramp-`` ids), ends spread over a window; the source's ``max_rate`` is far below what
their poll interval asks, so polls wait for the budget and the most urgent go first.
Measured: from a job's end to its message, p50 / p99, against the same rate spent
round-robin (every job polled in turn, its interval = jobs / rate).

Storm: 1,000 jobs polled every 10 s; the upstream answers every request with 429 and
``Retry-After: 30`` for 60 s. Measured: requests it received during the storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from common import daemon, pct, serving, write_config

RAMP = re.compile(r"^(?:id: |- )((?:ramp|blind)-\d+-\d+-\d+)\b", re.MULTILINE)


@contextlib.asynccontextmanager
async def hook() -> AsyncIterator[tuple[dict[str, float], str]]:
    """A webhook on 127.0.0.1 keeping when each job's first message came."""
    arrivals: dict[str, float] = {}

    async def post(request: web.Request) -> web.Response:
        now = time.time()
        body = await request.json()
        for job in RAMP.findall(body["message"]):
            arrivals.setdefault(job, now)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", post)
    async with serving(app) as port:
        yield arrivals, f"json://127.0.0.1:{port}/hook"


async def _run(python: str, config: Path, seconds: float, code: Path | None = None) -> None:
    async with daemon(python, config, code):
        await asyncio.sleep(seconds)


async def finishing(
    python: str,
    base: str,
    count: int,
    rate: float,
    *,
    urgent: bool,
    window: float,
    code: Path | None = None,
) -> dict[str, Any]:
    """Jobs ending over ``window`` seconds after a first round of polls; with ``urgent``
    polled every 10 s under ``max_rate`` (the budget goes to the jobs about to end), else
    every ``count / rate`` seconds under the same ``max_rate``, round-robin: the same
    jobs ending at the same times, but showing no progress, so that no ETA orders them."""
    rng = random.Random(11)
    first_round = count / rate + 10  # every job polled once: its progress is known
    async with hook() as (arrivals, url):
        with tempfile.TemporaryDirectory(prefix="jh-polite-") as tmp:
            start = time.time()
            begin = start - 600
            kind = "ramp" if urgent else "blind"
            ends = {
                f"{kind}-{int(begin * 1000)}-{int(end * 1000)}-{i}": end
                for i in range(count)
                if (end := start + first_round + rng.uniform(0, window))
            }
            interval = 10.0 if urgent else count / rate
            config = write_config(
                Path(tmp),
                base,
                list(ends),
                {"ops": [url]},
                interval=f"{interval:g}s",
                log_level="error",
                source=[f"max_rate = {rate:g}"],
            )
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{base}/control/record") as answer:
                    answer.raise_for_status()
                try:
                    await _run(python, config, first_round + window + interval + 15, code)
                finally:
                    async with http.get(f"{base}/control/times") as answer:
                        arrived = await answer.json()
    delays = [arrivals[j] - end for j, end in ends.items() if j in arrivals]
    return {
        "jobs": count,
        "received": len(delays),
        "p50": pct(delays, 0.5),
        "p99": pct(delays, 0.99),
        "interval": interval,
        "busiest_second": busiest_second(arrived),
    }


def busiest_second(times: list[float]) -> int:
    """The most requests that arrived in any one second (a window sliding over them all)."""
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


async def storm(
    python: str, base: str, count: int = 1000, seconds: float = 60.0, code: Path | None = None
) -> dict[str, Any]:
    """Requests the upstream received while it answered 429 with Retry-After: 30."""
    async with hook() as (_, url):
        with tempfile.TemporaryDirectory(prefix="jh-storm-") as tmp:
            jobs = [f"s{i}" for i in range(count)]
            config = write_config(Path(tmp), base, jobs, {"ops": [url]}, interval="10s")
            run = asyncio.create_task(_run(python, config, 20 + seconds + 5, code))
            await asyncio.sleep(20)  # started, every job polled at least once
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    f"{base}/control/storm", params={"seconds": str(seconds), "retry_after": "30"}
                ) as answer:
                    before = (await answer.json())["count"]
                await asyncio.sleep(seconds)
                async with http.get(f"{base}/control/count") as answer:
                    after = (await answer.json())["count"]
            await run
    return {"jobs": count, "seconds": seconds, "requests": after - before}


def rows(
    urgent: dict[str, Any],
    round_robin: dict[str, Any],
    storms: list[tuple[str, dict[str, Any]]],
    rate: float,
    urgent_before: dict[str, Any] | None = None,
) -> list[tuple[str, str]]:
    out = []
    if urgent_before is not None:
        out.append(
            (
                f"before: max_rate {rate:g}, most urgent first: end to message p50 / p99",
                f"{urgent_before['p50']:.1f} s / {urgent_before['p99']:.1f} s "
                f"({urgent_before['received']} of {urgent_before['jobs']}, busiest second "
                f"{urgent_before['busiest_second']})",
            )
        )
    out += [
        (
            f"max_rate {rate:g}, most urgent first (interval 10 s): end to message p50 / p99",
            f"{urgent['p50']:.1f} s / {urgent['p99']:.1f} s ({urgent['received']} of {urgent['jobs']})",
        ),
        (
            f"the same rate round-robin, no ETA (interval {round_robin['interval']:.0f} s): p50 / p99",
            f"{round_robin['p50']:.1f} s / {round_robin['p99']:.1f} s "
            f"({round_robin['received']} of {round_robin['jobs']})",
        ),
        (
            f"max_rate {rate:g}: the busiest second to the source (most urgent first / "
            "round-robin)",
            f"{urgent['busiest_second']} / {round_robin['busiest_second']} requests",
        ),
        (
            f"target: no second over {rate * 1.1:.0f} requests",
            "met"
            if max(urgent["busiest_second"], round_robin["busiest_second"]) <= rate * 1.1
            else "missed",
        ),
        (
            "target: p99 at least 3x sooner than round-robin",
            f"{round_robin['p99'] / max(urgent['p99'], 1e-9):.1f}x: "
            + ("met" if urgent["p99"] * 3 <= round_robin["p99"] else "missed"),
        ),
    ]
    for label, f in storms:
        out.append(
            (
                f"{label}: requests during a {f['seconds']:.0f} s storm of 429 Retry-After: 30, "
                f"{f['jobs']:,} jobs",
                f"{f['requests']:,}",
            )
        )
    now = storms[-1][1]
    out.append(("target: at most 20 requests", "met" if now["requests"] <= 20 else "missed"))
    return out
