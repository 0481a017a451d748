"""A fast fake of ROMA Connect's job API, in a process of its own, for the benchmarks.

Every job id answers RUNNING at 50 %, except ids of the form ``flip-<epoch_ms>-<n>``,
which answer SUCCEEDED from that instant on. Prints ``PORT <n>`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

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


async def job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    body = RUNNING
    if job_id.startswith("flip-"):
        flip_ms = int(job_id.split("-")[1])
        if time.time() * 1000 >= flip_ms:
            body = SUCCEEDED
    return web.Response(body=body, content_type="application/json")


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/v2/{project}/instances/{instance}/assets/jobs/{job_id}", job)
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
