"""A fast fake of ROMA Connect's job API, in a process of its own, for the benchmarks.

Every job id answers RUNNING at 50 %, except ids of the form ``flip-<epoch_ms>-<n>``,
which answer SUCCEEDED from that instant on, and ``ramp-<begin_ms>-<end_ms>-<n>``, which
run from ``begin`` (their begin_time) with progress growing evenly to SUCCEEDED at ``end``;
``blind-<begin_ms>-<end_ms>-<n>`` run and end alike but say no progress (no ETA).
``POST /control/storm?seconds=S&retry_after=R`` makes every answer a 429 with
``Retry-After: R`` for S seconds; ``GET /control/count`` gives the job requests answered
so far. ``POST /control/record`` notes when each job request arrives from then on (the
monotonic clock), until ``GET /control/times`` hands those times over. Prints ``PORT <n>``
once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

from aiohttp import web

RUNNING = json.dumps(
    {
        "id": "x",
        "type": "exportAsset",
        "status": "RUNNING",
        "progress_percent": 0.5,
        "begin_time": "2026-01-01T00:00:00Z",
    }
).encode()
SUCCEEDED = json.dumps(
    {
        "id": "x",
        "type": "exportAsset",
        "status": "SUCCEEDED",
        "progress_percent": 1.0,
        "archive_id": "a1",
        "begin_time": "2026-01-01T00:00:00Z",
        "end_time": "2026-01-01T00:04:00Z",
    }
).encode()


STATE: dict[str, Any] = {"storm_until": 0.0, "retry_after": 30.0, "count": 0, "times": None}


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


def _ramp(job_id: str, progress_shown: bool = True) -> bytes:
    _, begin_ms, end_ms, _ = job_id.split("-")
    begin, end, now = int(begin_ms) / 1000, int(end_ms) / 1000, time.time()
    if now >= end:
        return json.dumps(
            {
                "id": job_id,
                "type": "exportAsset",
                "status": "SUCCEEDED",
                "progress_percent": 1.0,
                "begin_time": _iso(begin),
                "end_time": _iso(end),
            }
        ).encode()
    progress = max(0.0, min(0.999, (now - begin) / (end - begin)))
    if not progress_shown:
        return json.dumps(
            {"id": job_id, "type": "exportAsset", "status": "RUNNING", "begin_time": _iso(begin)}
        ).encode()
    return json.dumps(
        {"id": job_id, "type": "exportAsset", "status": "RUNNING",
         "progress_percent": round(progress, 4), "begin_time": _iso(begin)}
    ).encode()  # fmt: skip


async def job(request: web.Request) -> web.Response:
    STATE["count"] += 1
    if (times := STATE["times"]) is not None:
        times.append(time.monotonic())
    if time.time() < STATE["storm_until"]:
        return web.Response(
            status=429,
            text='{"error_code": "APIG.0308", "error_msg": "throttled"}',
            headers={"Retry-After": f"{STATE['retry_after']:g}"},
            content_type="application/json",
        )
    job_id = request.match_info["job_id"]
    body = RUNNING
    if job_id.startswith("flip-"):
        flip_ms = int(job_id.split("-")[1])
        if time.time() * 1000 >= flip_ms:
            body = SUCCEEDED
    elif job_id.startswith("ramp-"):
        body = _ramp(job_id)
    elif job_id.startswith("blind-"):
        body = _ramp(job_id, progress_shown=False)
    return web.Response(body=body, content_type="application/json")


async def storm(request: web.Request) -> web.Response:
    STATE["storm_until"] = time.time() + float(request.query.get("seconds", "60"))
    STATE["retry_after"] = float(request.query.get("retry_after", "30"))
    return web.json_response({"count": STATE["count"]})


async def count(request: web.Request) -> web.Response:
    return web.json_response({"count": STATE["count"]})


async def record(request: web.Request) -> web.Response:
    STATE["times"] = []
    return web.json_response({"count": STATE["count"]})


async def times(request: web.Request) -> web.Response:
    kept, STATE["times"] = STATE["times"] or [], None
    return web.json_response(kept)


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/v2/{project}/instances/{instance}/assets/jobs/{job_id}", job)
    app.router.add_post("/control/storm", storm)
    app.router.add_get("/control/count", count)
    app.router.add_post("/control/record", record)
    app.router.add_get("/control/times", times)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    while True:
        await asyncio.sleep(3600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this core")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
