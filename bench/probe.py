"""Runs ``jobherald run`` in this process and reads its own counters, for the benchmarks.

Polls and schedule lag come from the pool's counters (``Daemon.pool.stats``); rows
written from a SQLAlchemy cursor hook; CPU time and peak RSS of the steady state
(after ``--warmup`` seconds) from the kernel. Stops on SIGTERM, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from typing import Any

rows = [0]


def count_rows() -> None:
    import sqlalchemy as sa

    @sa.event.listens_for(sa.engine.Engine, "after_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            rows[0] += max(cursor.rowcount, 0)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(config_path: str, out: str, warmup: float) -> None:
    from jobherald import config
    from jobherald.schedule.pool import LAG_BOUNDS
    from jobherald.service import Daemon, setup_logging

    cfg = config.load(config_path)
    setup_logging("warning")
    daemon = Daemon(cfg)
    task = asyncio.create_task(daemon.run())
    await asyncio.sleep(warmup)
    assert daemon.pool is not None, "the daemon did not start within the warm-up"
    stats = daemon.pool.stats
    start = {"cpu": cpu(), "polls": stats.ended, "rows": rows[0], "t": time.monotonic()}
    lags_before = list(stats.lag_buckets)
    await daemon.stopping.wait()
    end = {"cpu": cpu(), "polls": stats.ended, "rows": rows[0], "t": time.monotonic()}
    lags = [after - before for after, before in zip(stats.lag_buckets, lags_before, strict=True)]
    await task
    with open(out, "w") as handle:
        json.dump(
            {
                "loop": cfg.event_loop,
                "seconds": end["t"] - start["t"],
                "polls": end["polls"] - start["polls"],
                "cpu": end["cpu"] - start["cpu"],
                "rows": end["rows"] - start["rows"],
                "lag_bounds": [b if b != float("inf") else None for b in LAG_BOUNDS],
                "lag_buckets": lags,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            },
            handle,
        )


def run(coro: Any, event_loop: str) -> None:
    factory = None
    if event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("out")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    count_rows()
    from jobherald import config as config_module

    run(
        main(args.config, args.out, args.warmup),
        config_module.load(args.config, check_urls=False).event_loop,
    )
