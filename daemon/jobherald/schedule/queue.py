"""The due-queue: when each watched job is polled next. Pure: every call takes ``now``.

Times are monotonic seconds (the event loop's clock). A job's entry lives here
from the moment it is scheduled until it finishes or leaves the config; the heap
holds (due, seq, job id) tuples, and a tuple whose ``seq`` is no longer its job's
entry's is stale and skipped when it surfaces (removal and re-timing cost O(1)).
Those tuples hold no object the garbage collector tracks, so it soon stops tracking
them: 100,000 of them add nothing to its full collections.

Each job's polls keep to a fixed rate: its next poll is due one interval after
the last one was due (not after it ended), plus or minus a jitter that does not
accumulate, so a thousand jobs at 1 s make a thousand polls a second. A job that
fell more than an interval behind is polled at once rather than in a burst.
A busy job (being polled) is never queued, so one job is never polled twice at once.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass

from jobherald.model import backoff_interval


def jitter_for(interval: float) -> float:
    """How far either side of its mark a poll may fall: a tenth of the interval, at most 30 s."""
    return min(interval * 0.1, 30.0)


@dataclass(slots=True, eq=False)
class Entry:
    """One scheduled job: its timing, and whether a poller holds it now."""

    job_id: str
    interval: float
    mark: float  # where the next poll is due before jitter (drift-free)
    due: float
    failures: int = 0
    busy: bool = False
    requeue: bool = False  # re-timed (by a reload) while busy: queue it at ``due`` when done
    seq: int = -1

    @property
    def current_interval(self) -> float:
        return backoff_interval(self.interval, self.failures)


class DueQueue:
    """Jobs ordered by when their next poll is due."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._entries: dict[str, Entry] = {}
        self._seq = itertools.count()
        self._uniform = (rng or random.Random()).uniform

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries

    def entry(self, job_id: str) -> Entry | None:
        return self._entries.get(job_id)

    def add(self, job_id: str, interval: float, first_due: float) -> Entry:
        """Schedule a job (or re-time one already here) with its first poll at ``first_due``."""
        entry = self._entries.get(job_id)
        if entry is None:
            entry = Entry(job_id, interval, first_due, first_due)
            self._entries[job_id] = entry
        else:
            entry.interval, entry.mark, entry.due, entry.failures = (
                interval,
                first_due,
                first_due,
                0,
            )
        if entry.busy:
            entry.requeue = True
        else:
            self._push(entry)
        return entry

    def remove(self, job_id: str) -> None:
        """Forget a job; a poll of it in flight ends without queueing it again."""
        self._entries.pop(job_id, None)

    def _push(self, entry: Entry) -> None:
        entry.seq = seq = next(self._seq)
        heapq.heappush(self._heap, (entry.due, seq, entry.job_id))

    def next_due(self) -> float | None:
        """When the earliest queued job is due (None: nothing queued)."""
        heap = self._heap
        entries = self._entries
        while heap:
            due, seq, job_id = heap[0]
            entry = entries.get(job_id)
            if entry is not None and entry.seq == seq:
                return due
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> Entry | None:
        """The earliest job due by ``now``, marked busy; None when none is due."""
        heap = self._heap
        entries = self._entries
        while heap and heap[0][0] <= now:
            _, seq, job_id = heapq.heappop(heap)
            entry = entries.get(job_id)
            if entry is None or entry.seq != seq:
                continue  # stale: re-timed or removed since it was queued
            entry.seq = -1
            entry.busy = True
            return entry
        return None

    def done(
        self,
        entry: Entry,
        now: float,
        *,
        failed: bool = False,
        retry_after: float | None = None,
        terminal: bool = False,
    ) -> float | None:
        """A poll of ``entry`` ended: queue its next one and return when it is due.

        A terminal job leaves the queue for good (None). A failing job backs off
        (``backoff_interval``, never sooner than ``retry_after``), counted from now;
        the first good poll after failures brings the normal interval back.
        """
        entry.busy = False
        if terminal:
            if self._entries.get(entry.job_id) is entry:
                del self._entries[entry.job_id]
            return None
        if self._entries.get(entry.job_id) is not entry:
            return None  # removed while it was being polled
        if entry.requeue:
            entry.requeue = False
        elif failed:
            entry.failures += 1
            wait = entry.current_interval
            if retry_after is not None:
                # Honoured up to the job's backoff ceiling: an upstream asking for a year
                # (or for ever) must not stop the job from being polled.
                wait = max(wait, min(retry_after, backoff_interval(entry.interval, 64)))
            entry.mark = now + wait
            entry.due = entry.mark + self._uniform(0.0, jitter_for(wait))
        else:
            interval = entry.interval
            if entry.failures:
                entry.failures = 0
                entry.mark = now + interval
            else:
                mark = entry.mark + interval
                entry.mark = mark if mark >= now - interval else now
            spread = jitter_for(interval)
            entry.due = entry.mark + self._uniform(-spread, spread) if spread else entry.mark
        self._push(entry)
        return entry.due
