"""The floor: a bare aiohttp loop making the same GETs, one session, 16 connections
(on asyncio's own loop or on uvloop).

Prints JSON: requests made after a warm-up pass, and the CPU seconds they took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource

import aiohttp


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(urls: list[str], passes: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one_pass() -> None:
            queue: asyncio.Queue[str] = asyncio.Queue()
            for url in urls:
                queue.put_nowait(url)

            async def worker() -> None:
                while not queue.empty():
                    url = queue.get_nowait()
                    async with session.get(url, headers={"X-Auth-Token": "t"}) as response:
                        json.loads(await response.read())

            await asyncio.gather(*(worker() for _ in range(16)))

        await one_pass()
        start = cpu()
        for _ in range(passes):
            await one_pass()
        return {"requests": len(urls) * passes, "cpu": cpu() - start}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("count", type=int)
    parser.add_argument("--passes", type=int, default=3)
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
        print(json.dumps(runner.run(main(urls, args.passes))))
