"""The floors: a bare aiohttp loop making the same GETs, one session, 16 connections
(on asyncio's own loop or on uvloop).

- Flat out (the floor): passes over every URL back to back, after a warm-up pass.
- Paced (``--interval``): each URL once per interval on the daemon's schedule, first
  polls spread over the interval, 16 workers taking due URLs from one heap: what
  polling at that pace costs with no jobherald at all (a loop that idles between polls
  pays more per GET than one that runs flat out).

Prints JSON: GETs made in the measured part, and the CPU seconds they took.
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


async def get(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(url, headers={"X-Auth-Token": "t"}) as response:
        json.loads(await response.read())


async def flat_out(
    session: aiohttp.ClientSession, urls: list[str], passes: int
) -> dict[str, float]:
    async def one_pass() -> None:
        pending = iter(urls)

        async def worker() -> None:
            for url in pending:
                await get(session, url)

        await asyncio.gather(*(worker() for _ in range(16)))

    await one_pass()
    start = cpu()
    for _ in range(passes):
        await one_pass()
    return {"requests": len(urls) * passes, "cpu": cpu() - start}


async def paced(
    session: aiohttp.ClientSession, urls: list[str], interval: float, warmup: float, seconds: float
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    heap = [(start + random.uniform(0, interval), i) for i in range(len(urls))]
    heapq.heapify(heap)
    done = [0]

    async def worker() -> None:
        while True:
            due, i = heapq.heappop(heap)
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await get(session, urls[i])
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


async def main(urls: list[str], args: argparse.Namespace) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(connector=connector) as session:
        if args.interval is None:
            return await flat_out(session, urls, args.passes)
        return await paced(session, urls, args.interval, args.warmup, args.seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("count", type=int)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--interval", type=float, default=None, help="paced: seconds per URL")
    parser.add_argument("--warmup", type=float, default=5.0, help="paced: seconds before measuring")
    parser.add_argument("--seconds", type=float, default=15.0, help="paced: seconds measured")
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
        print(json.dumps(runner.run(main(urls, args))))
