"""The paced floor: bare aiohttp polling the same URLs on the daemon's schedule.

Each URL once per interval, first polls spread over the interval, 16 workers taking
due URLs from one heap, one session: what polling at that pace costs with no
jobherald at all (the warm floor in floor.py runs flat out, which is cheaper per
GET than a loop that idles between polls). Prints JSON: GETs made in the measured
window and the CPU seconds they took.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import resource

import aiohttp


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(urls: list[str], interval: float, warmup: float, seconds: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    heap = [(start + random.uniform(0, interval), i) for i in range(len(urls))]
    heapq.heapify(heap)
    done = [0]
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while True:
                due, i = heapq.heappop(heap)
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                async with session.get(urls[i], headers={"X-Auth-Token": "t"}) as response:
                    json.loads(await response.read())
                done[0] += 1
                heapq.heappush(heap, (due + interval, i))

        workers = [asyncio.create_task(worker()) for _ in range(16)]
        await asyncio.sleep(warmup)
        before_cpu, before_done = cpu(), done[0]
        await asyncio.sleep(seconds)
        figures = {"requests": float(done[0] - before_done), "cpu": cpu() - before_cpu}
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("count", type=int)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    urls = [f"{args.base}/v2/p/instances/i/assets/jobs/j{i}" for i in range(args.count)]
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        print(json.dumps(runner.run(main(urls, args.interval, args.warmup, args.seconds))))
