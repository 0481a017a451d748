"""Polling, split by responsibility.

- ``watcher``: one poll of one job, and recording what it changed.
- ``queue``: the due-queue, when each job is polled next (pure, monotonic time).
- ``pool``: a fixed pool of pollers serving the due-queue, and its health.
- ``periodic``: APScheduler for the daemon's own chores (poll times, reminders).
"""

from jobherald.schedule.periodic import Periodic
from jobherald.schedule.pool import PollResult, Pool, poll_once
from jobherald.schedule.queue import DueQueue
from jobherald.schedule.watcher import Watcher

__all__ = ["DueQueue", "Periodic", "PollResult", "Pool", "Watcher", "poll_once"]
