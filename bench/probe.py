"""Runs ``jobherald run`` in this process with counters around it, for the benchmarks.

Counts polls, schedule lag (when APScheduler meant a poll to run vs when it was
submitted), rows written, and the CPU time and peak RSS of the steady state (after
``--warmup`` seconds). Stops on SIGTERM and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from datetime import UTC, datetime
from typing import Any

counters: dict[str, Any] = {"lags": [], "rows": 0}


def instrument() -> None:
    import sqlalchemy as sa
    from apscheduler.events import EVENT_JOB_SUBMITTED

    from jobherald import schedule

    @sa.event.listens_for(sa.engine.Engine, "after_cursor_execute")
    def count_rows(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            counters["rows"] += max(cursor.rowcount, 0)

    original_start = schedule.Schedule.start

    def start(self: schedule.Schedule) -> None:
        def on_submit(event: Any) -> None:
            if event.job_id.startswith("jobherald:"):
                return
            now = datetime.now(UTC)
            for planned in event.scheduled_run_times:
                counters["lags"].append((now - planned).total_seconds())

        self.scheduler.add_listener(on_submit, EVENT_JOB_SUBMITTED)
        counters["watcher"] = self.watcher
        original_start(self)

    schedule.Schedule.start = start  # type: ignore[method-assign]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(config_path: str, out: str, warmup: float) -> None:
    from jobherald import config
    from jobherald.service import Daemon, setup_logging

    cfg = config.load(config_path)
    setup_logging("warning")
    daemon = Daemon(cfg)
    task = asyncio.create_task(daemon.run())
    await asyncio.sleep(warmup)
    watcher = counters["watcher"]
    start = {"cpu": cpu(), "polls": watcher.polls, "rows": counters["rows"], "t": time.monotonic()}
    lags_from = len(counters["lags"])
    await daemon.stopping.wait()
    end = {"cpu": cpu(), "polls": watcher.polls, "rows": counters["rows"], "t": time.monotonic()}
    lags = sorted(counters["lags"][lags_from:])
    await task
    with open(out, "w") as handle:
        json.dump(
            {
                "seconds": end["t"] - start["t"],
                "polls": end["polls"] - start["polls"],
                "cpu": end["cpu"] - start["cpu"],
                "rows": end["rows"] - start["rows"],
                "lags": lags,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            },
            handle,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("out")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    instrument()
    asyncio.run(main(args.config, args.out, args.warmup))
