"""The pollers: a fixed pool of tasks that take due jobs from the due-queue and poll them.

One timer (``loop.call_at``) is armed for the earliest due job; when it fires, every
job then due is handed to an idle poller (or waits in line for one). There is no
task, trigger or timer per job: a poll costs a heap pop, a hand-off and a heap push.
The pool also says whether it is healthy, which gates the systemd watchdog.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from jobherald.fetch import RETRY_TOKEN
from jobherald.schedule.budget import Gates
from jobherald.schedule.queue import DueQueue, Entry

log = logging.getLogger(__name__)

# Upper bounds (seconds) of the schedule-lag histogram's buckets; the last one is +inf.
LAG_BOUNDS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    float("inf"),
)


@dataclass(frozen=True, slots=True)
class PollResult:
    terminal: bool = False
    failed: bool = False
    retry_after: float | None = None
    # The job's source asked to be left alone this long (every job of it waits).
    throttle: float | None = None


PollFn = Callable[[str], Awaitable[PollResult]]

# The timer wakes at most once per tick and starts every job due by then: a thousand
# jobs a second spread evenly cost fifty wake-ups, not a thousand, and their requests
# go out together (a poll starts at most a tick late).
TICK = 0.02
# Jobs queued at once by ``add_gradually`` between two turns of the event loop.
ADD_CHUNK = 5000


def first_spread(count: int) -> float:
    """Over how many seconds the first polls of ``count`` jobs added together are spread:
    one second plus a second per 200 jobs (each job's interval caps its own)."""
    return 1.0 + count / 200.0


class PoolStats:
    """Counters kept by the pool itself: polls started and ended, and the schedule lag."""

    __slots__ = ("cut", "ended", "lag_buckets", "lag_sum", "started")

    def __init__(self) -> None:
        self.started = 0
        self.ended = 0
        self.cut = 0
        self.lag_buckets = [0] * len(LAG_BOUNDS)
        self.lag_sum = 0.0

    def lag(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.lag_buckets[bisect.bisect_left(LAG_BOUNDS, seconds)] += 1
        self.lag_sum += seconds


class Pool:
    """``size`` pollers over one due-queue, on the running event loop."""

    def __init__(
        self,
        poll: PollFn,
        size: int,
        *,
        stuck_after: float = 300.0,
        rng: random.Random | None = None,
    ) -> None:
        self._poll = poll
        self.size = size
        self.stuck_after = stuck_after
        self._rng = rng or random.Random()
        self.queue = DueQueue(self._rng)
        self.stats = PoolStats()
        self.outage = Outage()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: deque[Entry] = deque()
        self._idle: deque[asyncio.Future[Entry]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._fired_at = float("-inf")
        self._pollers: list[asyncio.Task[None]] = []
        self._polling: list[tuple[Entry, float] | None] = []
        self._cutting: set[int] = set()
        self._stopping = False
        self.last_ended: float = 0.0
        # Request budgets and pauses per source (None: every due poll goes at once).
        self.gates: Gates | None = None

    def use_gates(
        self,
        source_of: Callable[[str], str | None],
        eta: Callable[[Entry], float | None],
    ) -> Gates:
        """Hold polls to their sources' budgets and pauses from now on."""
        self.gates = Gates(self._hand, source_of, eta)
        return self.gates

    # -- scheduling -----------------------------------------------------------------

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def start(self) -> None:
        """Start the pollers (jobs may be added before or after)."""
        self._loop = asyncio.get_running_loop()
        self.last_ended = self._loop.time()
        self._polling = [None] * self.size
        self._pollers = [
            asyncio.create_task(self._poller(i), name=f"poller-{i}") for i in range(self.size)
        ]
        self._arm()

    def add(self, jobs: Iterable[tuple[str, float]], spread: float | None = None) -> int:
        """Schedule (or re-time) jobs given as (id, interval); first polls spread over a moment.

        Many jobs registered together are spread over ``spread`` seconds (default:
        ``first_spread``), never more than a job's interval.
        """
        batch = list(jobs)
        limit = spread if spread is not None else first_spread(len(batch))
        now = asyncio.get_running_loop().time()
        uniform = self._rng.uniform
        for job_id, interval in batch:
            self.queue.add(job_id, interval, now + uniform(0.0, min(interval, limit)))
        if self._loop is not None:
            self._arm()
        return len(batch)

    async def add_gradually(self, jobs: Iterable[tuple[str, float]], spread: float) -> None:
        """``add`` many jobs a chunk at a time, the pollers taking the first ones due
        meanwhile: at 100,000 jobs polling starts as the first chunk is queued, not after
        the last one. ``spread`` is for them all (see ``first_spread``)."""
        rest = iter(jobs)
        while chunk := list(itertools.islice(rest, ADD_CHUNK)):
            self.add(chunk, spread)
            await asyncio.sleep(0)

    def remove(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            self.queue.remove(job_id)

    def _arm(self) -> None:
        """Set the one timer for the earliest due job (if it is not set earlier already)."""
        due = self.queue.next_due()
        if due is None or due >= self._timer_at or self._stopping:
            return
        due = max(due, self._fired_at + TICK)
        if due >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at = due
        self._timer = self._loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        if self._stopping:
            return
        assert self._loop is not None
        now = self._fired_at = self._loop.time()
        pop_due = self.queue.pop_due
        gates = self.gates
        while (entry := pop_due(now)) is not None:
            if gates is None or gates.admit(entry, now):
                self._hand(entry)
        self._arm()

    def _hand(self, entry: Entry) -> None:
        """Give a due job to an idle poller, or put it in line for the next free one."""
        idle = self._idle
        while idle:
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(entry)
                return
        self._ready.append(entry)

    async def _take(self) -> Entry:
        if self._ready:
            return self._ready.popleft()
        assert self._loop is not None
        waiter: asyncio.Future[Entry] = self._loop.create_future()
        self._idle.append(waiter)
        return await waiter

    # -- polling --------------------------------------------------------------------

    async def _poller(self, index: int) -> None:
        loop = self._loop
        assert loop is not None
        stats = self.stats
        queue = self.queue
        poll = self._poll
        polling = self._polling
        task = asyncio.current_task()
        assert task is not None
        while not self._stopping:
            entry = await self._take()
            if queue.entry(entry.job_id) is not entry:
                if self.gates is not None:
                    self.gates.dropped(entry)
                continue  # left the config (a reload) while it waited for a poller
            if self.gates is not None and self.gates.hold(entry):
                continue  # its source said stop meanwhile: back to the waiting room
            started = loop.time()
            stats.started += 1
            stats.lag(started - entry.due)
            polling[index] = (entry, started)
            if self.gates is not None:  # a retry within the poll takes a token too
                RETRY_TOKEN.set(self.gates.spender(entry))
            try:
                result = await poll(entry.job_id)
            except asyncio.CancelledError:
                if index not in self._cutting:
                    log.debug("poll of job %s cut off at shutdown", entry.job_id)
                    raise
                self._cutting.discard(index)
                task.uncancel()
                stats.cut += 1
                log.error(
                    "poll of job %s cut off after %.0fs without an end; it will be polled again",
                    entry.job_id,
                    loop.time() - started,
                )
                result = PollResult(failed=True)
            except Exception as exc:
                self.outage.failed(entry.job_id, exc)
                result = PollResult(failed=True)
            else:
                stats.ended += 1
                self.last_ended = loop.time()
                if self.outage.since is not None:
                    self.outage.ended()
            finally:
                polling[index] = None
            if self.gates is not None:
                self.gates.ended(entry, result.throttle)
            due = queue.done(
                entry,
                loop.time(),
                failed=result.failed,
                retry_after=result.retry_after,
                terminal=result.terminal,
            )
            if due is not None and due < self._timer_at:
                self._arm()

    # -- health and shutdown --------------------------------------------------------

    @property
    def pollers(self) -> tuple[asyncio.Task[None], ...]:
        """The poller tasks, by index (what ``health`` looks at)."""
        return tuple(self._pollers)

    def in_flight(self) -> int:
        return sum(1 for p in self._polling if p is not None)

    def waiting(self) -> int:
        """Jobs due and not yet taken by a poller."""
        return len(self._ready)

    def health(self, now: float) -> str | None:
        """None while the pool works, else what is wrong (this gates the watchdog).

        Wrong: a poller has ended, or jobs have been due for ``stuck_after`` seconds
        while no poll ended. A single poll running longer than that is cut off (the
        job is polled again later) so that one hung request cannot hold a poller.
        """
        for index, task in enumerate(self._pollers):
            if task.done():
                return f"poller {index} has stopped"
        for index, current in enumerate(self._polling):
            if (
                current is not None
                and now - current[1] > self.stuck_after
                and index not in self._cutting
            ):
                self._cutting.add(index)
                self._pollers[index].cancel()
        oldest = self._ready[0].due if self._ready else None
        head = self.queue.next_due()
        if head is not None and head <= now and (oldest is None or head < oldest):
            oldest = head
        if (
            oldest is not None
            and now - oldest > self.stuck_after
            and now - self.last_ended > self.stuck_after
        ):
            return f"no poll has ended for {now - self.last_ended:.0f}s while jobs are due"
        return None

    async def stop(self, timeout: float) -> int:
        """Stop taking jobs, let polls in flight end (up to ``timeout``); return those cut off."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.gates is not None:
            self.gates.close()
        busy = []
        for task, current in zip(self._pollers, self._polling, strict=True):
            if current is None:
                task.cancel()  # idle: waiting for a job
            else:
                busy.append(task)  # ends its loop once its poll is done
        cut = 0
        if busy:
            _, still = await asyncio.wait(busy, timeout=timeout)
            cut = len(still)
        for task in self._pollers:
            task.cancel()
        await asyncio.gather(*self._pollers, return_exceptions=True)
        return cut


class Outage:
    """Polls that fail outside the job's own error (the database refuses writes, the disk
    is full): logged once when it starts, with the traceback at debug level, and once
    when a poll works again; never a traceback per poll."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.count = 0

    def failed(self, job_id: str, exc: Exception) -> None:
        from jobherald.store.schema import db_problem

        self.count += 1
        if self.since is None:
            self.since = time.monotonic()
            log.error(
                "polling job %s failed: %s: %s (the same failure of other polls is logged "
                "at debug level until one works)",
                job_id,
                type(exc).__name__,
                db_problem(exc),
            )
            log.debug("the first failed poll", exc_info=exc)
        else:
            log.debug("polling job %s failed: %s", job_id, db_problem(exc))

    def ended(self) -> None:
        assert self.since is not None
        log.warning(
            "polling works again after %.0fs (%d polls failed)",
            time.monotonic() - self.since,
            self.count,
        )
        self.since, self.count = None, 0


async def poll_once(poll: PollFn, job_ids: Iterable[str], workers: int) -> None:
    """Poll each job once with at most ``workers`` polls at a time (``run --once``)."""
    pending = iter(job_ids)

    outage = Outage()

    async def worker() -> None:
        for job_id in pending:
            try:
                await poll(job_id)
            except Exception as exc:
                outage.failed(job_id, exc)

    await asyncio.gather(*(worker() for _ in range(max(1, workers))))
