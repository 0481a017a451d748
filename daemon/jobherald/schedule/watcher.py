"""One poll of one job: the source fetches a snapshot (or a FetchError), the pure model
decides what changed, the store writes it with its events, the dispatcher is woken.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from jobherald.config import Config, WatchedJob
from jobherald.errors import FetchError
from jobherald.eta import job_eta
from jobherald.fetch import Fetcher
from jobherald.model import (
    Event,
    JobView,
    Outcome,
    Snapshot,
    SourceHealth,
    State,
    counted,
    cut,
    duration_seconds,
    forgotten,
    observe,
    observe_error,
    observe_source_error,
    observe_source_ok,
    typical_duration,
)
from jobherald.notify import Dispatcher, advice
from jobherald.payload import event_payload, source_payload
from jobherald.schedule.pool import PollResult
from jobherald.schedule.reminders import remind_unresolved
from jobherald.sources.base import JobSource
from jobherald.sources.registry import make_source
from jobherald.store import NewEvent, Store, Target
from jobherald.store.durations import KEPT_DURATIONS
from jobherald.timing import utcnow

log = logging.getLogger(__name__)


class Tally:
    """How many views are in each state, and how many have a poll error, kept as views
    change: counting 100,000 views at each heartbeat would hold the polls up."""

    __slots__ = ("failing", "states")

    def __init__(self, views: Iterable[JobView] = ()) -> None:
        self.states: dict[State, int] = {}
        self.failing = 0
        for view in views:
            self.add(view, 1)

    def add(self, view: JobView, n: int) -> None:
        self.states[view.state] = self.states.get(view.state, 0) + n
        if view.error is not None:
            self.failing += n


class Watcher:
    """The watched jobs, their last known views, and how to poll one of them."""

    def __init__(
        self,
        config: Config,
        store: Store,
        fetcher: Fetcher,
        dispatcher: Dispatcher,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.store = store
        self.fetcher = fetcher
        self.dispatcher = dispatcher
        self.clock = clock
        self.sources: dict[str, JobSource] = {
            name: make_source(src, clock) for name, src in config.sources.items()
        }
        self.jobs: dict[str, WatchedJob] = {j.id: j for j in config.jobs}
        # Every configured job, while ``jobs`` holds only the first ones (see ``start``),
        # and how many unfinished jobs the store knew then: the first ones' first polls
        # spread as if all of those came together (they soon do).
        self._rest: dict[str, WatchedJob] | None = None
        self.starting = 0
        # Changed only through _set_views and _set_view, which keep the tally.
        self.views: dict[str, JobView] = {}
        self._tally = Tally()
        self.health: dict[str, SourceHealth] = {}
        self._source_locks = {name: asyncio.Lock() for name in self.sources}
        self._polled_at: dict[str, datetime] = {}
        # Under what token this process may poll now (None: not at all); replicas set it.
        self.term: Callable[[], str | None] = lambda: "alone"
        self.polls = 0
        self.last_poll_at: datetime | None = None
        # Told when a poll noted an export's archive to keep (the archiver wakes).
        self.on_archive: Callable[[], None] | None = None
        # The latest finished runs' durations per (name, source) of the watched jobs
        # (id, seconds), for typical durations, and each running job's recorded progress
        # (for ETAs).
        self._durations: dict[tuple[str, str], list[tuple[str, float]]] = {}
        self._typical: dict[tuple[str, str], float | None] = {}
        self.progress_log: dict[str, tuple[tuple[datetime, float], ...]] = {}
        # Told of each poll's outcome (metrics): the job, seconds taken, and the error if any.
        self.on_poll: Callable[[WatchedJob, float, FetchError | None], None] | None = None
        # Told of each event written (metrics).
        self.on_event: Callable[[str], None] | None = None
        # Jobs whose poll met an unforeseen exception (its traceback is logged once).
        self._unforeseen_logged: set[str] = set()

    async def start(self, first: int | None = None) -> None:
        """Register the configured jobs in the store and load what it knows of them.

        With ``first``, take only up to that many unfinished jobs the store has already
        registered as configured: those can be polled at once, while ``register_rest``
        registers every job.
        """
        if first is None:
            self._set_views(await self._sync_jobs(self.jobs))
            self.jobs = self._registered(self.jobs, self.views)
        else:
            self._rest = self.jobs
            early = await self.store.registered_unfinished(self.jobs, first)
            self.starting = sum((await self.store.active_per_source()).values())
            self.jobs = {job_id: self.jobs[job_id] for job_id in early}
            self._set_views(early)
        known = await self.store.source_health()
        self.health = {name: known.get(name, SourceHealth()) for name in self.sources}
        await self._load_durations(self._rest or self.jobs)
        self.progress_log = {
            job_id: tuple(samples)
            for job_id, samples in (await self.store.running_progress()).items()
        }
        if first is None:
            self._keep_running_progress()

    @property
    def partial(self) -> bool:
        """Started with ``first``, and ``register_rest`` has not yet been done."""
        return self._rest is not None

    async def register_rest(self) -> None:
        """After ``start(first)``: register every configured job. The jobs polled since
        keep their views."""
        assert self._rest is not None
        jobs = self._rest
        self._set_views(await self._sync_jobs(jobs))
        self.jobs, self._rest = self._registered(jobs, self.views), None
        self._keep_running_progress()

    def _keep_running_progress(self) -> None:
        """Keep the recorded progress of the watched jobs that are running (ETAs are
        drawn from it), once their views are known."""
        views = self.views
        self.progress_log = {
            job_id: samples
            for job_id, samples in self.progress_log.items()
            if (view := views.get(job_id)) is not None and view.state is State.RUNNING
        }

    async def _load_durations(self, jobs: dict[str, WatchedJob]) -> None:
        """Read the latest finished durations of these jobs' names (those not held yet)."""
        keys = {(j.name, j.source) for j in jobs.values()} - self._durations.keys()
        if not keys:
            return
        found = await self.store.durations_of(keys)
        for key in keys:
            self._durations[key] = found.get(key, [])
            self._typical.pop(key, None)

    def typical_for(self, job: WatchedJob) -> float | None:
        """The median duration of the latest finished runs with this job's name and
        source (the job's own run left out)."""
        key = (job.name, job.source)
        if key not in self._typical:
            self._typical[key] = typical_duration(
                [d for i, d in self._durations.get(key, ()) if i != job.id]
            )
        return self._typical[key]

    def eta_of(self, job_id: str, now: datetime) -> datetime | None:
        view = self.views[job_id]
        return job_eta(view, self.progress_log.get(job_id, ()), self.last_poll_of(job_id), now)

    def last_poll_of(self, job_id: str) -> datetime | None:
        return self._polled_at.get(job_id)

    async def _sync_jobs(self, jobs: dict[str, WatchedJob]) -> dict[str, JobView]:
        """Register these jobs; their views (those already held, newer than the store's,
        stay). Jobs finished longer than their ``forget_after`` are left out (removed)."""
        stored = await self.store.sync_jobs(list(jobs.values()), self.clock())
        return {
            job_id: self.views.get(job_id) or stored[job_id] for job_id in jobs if job_id in stored
        }

    @staticmethod
    def _registered(
        jobs: dict[str, WatchedJob], views: dict[str, JobView]
    ) -> dict[str, WatchedJob]:
        """``jobs`` without those ``_sync_jobs`` left out (finished past forget_after)."""
        if len(views) == len(jobs):
            return jobs
        return {job_id: job for job_id, job in jobs.items() if job_id in views}

    async def forget_finished(self) -> None:
        """Stop watching the jobs finished longer ago than their ``forget_after``: they
        are removed in the store (a start or reload leaves them out too)."""
        now = self.clock()
        job_ids = [
            job.id
            for job in self.jobs.values()
            if job.forget_after is not None
            and (view := self.views.get(job.id)) is not None
            and forgotten(view, job.forget_after, now)
        ]
        if not job_ids:
            return
        await self.store.mark_removed(job_ids, now)
        for job_id in job_ids:
            self.jobs.pop(job_id, None)
            if (view := self.views.pop(job_id, None)) is not None:
                self._tally.add(view, -1)
        log.info(
            "no longer watching %s finished long enough ago (forget_after)",
            counted(len(job_ids), "job"),
        )

    async def reconfigure(self, config: Config) -> tuple[list[WatchedJob], list[str]]:
        """Take a new configuration; return the jobs to (re)schedule and the ids to drop.

        Sources whose settings did not change keep their state (a fetched token among it).
        The jobs are registered in the database first: when that fails, nothing changed.
        """
        jobs = {j.id: j for j in config.jobs}
        views = await self._sync_jobs(jobs)
        jobs = self._registered(jobs, views)
        await self._load_durations(jobs)
        old_jobs = self.jobs
        self.config = config
        self.sources = {
            name: (
                current
                if (current := self.sources.get(name)) is not None and current.config == src
                else make_source(src, self.clock)
            )
            for name, src in config.sources.items()
        }
        self._source_locks = {
            name: self._source_locks.get(name) or asyncio.Lock() for name in self.sources
        }
        self.health = {name: self.health.get(name, SourceHealth()) for name in self.sources}
        self.jobs = jobs
        self._set_views(views)
        removed = [job_id for job_id in old_jobs if job_id not in self.jobs]
        changed = [j for j in self.jobs.values() if old_jobs.get(j.id) != j]
        return changed, removed

    def _set_views(self, views: dict[str, JobView]) -> None:
        self.views = views
        self._tally = Tally(views.values())

    def _set_view(self, job_id: str, view: JobView) -> None:
        if (before := self.views.get(job_id)) is not None:
            self._tally.add(before, -1)
        self._tally.add(view, 1)
        self.views[job_id] = view

    def failing(self) -> int:
        return self._tally.failing

    def active(self) -> list[WatchedJob]:
        """Configured jobs still worth polling (not succeeded, failed or lost)."""
        return [j for j in self.jobs.values() if not self.views[j.id].state.terminal]

    def active_states(self) -> dict[str, int]:
        """How many of the jobs still worth polling are in each state."""
        return {s.value: n for s, n in self._tally.states.items() if n and not s.terminal}

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state."""
        return {s.value: n for s, n in self._tally.states.items() if n}

    async def poll(self, job_id: str) -> PollResult:
        """Poll one job and record what changed and what it causes."""
        job = self.jobs[job_id]
        if self.views[job_id].state.terminal:
            return PollResult(terminal=True)
        term = self.term()
        if term is None:
            return PollResult()  # not this process's to poll now (a lapsed replica)
        now = self.clock()
        self.polls += 1
        self.last_poll_at = now
        began = time.monotonic()
        try:
            snapshot = await self._fetch(job)
        except FetchError as exc:
            if self.on_poll is not None:
                self.on_poll(job, time.monotonic() - began, exc)
            if self.term() != term:
                return PollResult()  # the lease lapsed during the poll: its answer is stale
            return await self._failed(job, exc, now)
        if self.on_poll is not None:
            self.on_poll(job, time.monotonic() - began, None)
        if self.term() != term:
            return PollResult()
        typical = self.typical_for(job) if job.rules.slow_after is not None else None

        def decide(before: JobView) -> Outcome:
            try:
                return observe(before, snapshot, now, job.rules, typical)
            except Exception as unexpected:  # the answer is recorded as this poll's error
                failure = self._unforeseen(job, unexpected)
                return observe_error(before, failure.summary, failure.detail, now, job.rules)

        _, outcome = await self._settle(job, decide, now, None)
        await self._source_ok(job.source, now)
        return PollResult(outcome.job.state.terminal, False)

    async def _fetch(self, job: WatchedJob) -> Snapshot:
        try:
            return await self.sources[job.source].poll(self.fetcher, job)
        except FetchError:
            raise
        except Exception as unexpected:  # a bug, or an answer nobody foresaw
            raise self._unforeseen(job, unexpected) from None

    async def _failed(self, job: WatchedJob, exc: FetchError, now: datetime) -> PollResult:
        def decide_error(before: JobView) -> Outcome:
            return observe_error(
                before,
                exc.summary,
                exc.detail,
                now,
                job.rules,
                not_found=exc.not_found,
                source_wide=source_wide,
            )

        # A source that says "stop" (429/503 with Retry-After) fails for every job alike.
        source_wide = exc.source_wide or exc.throttled
        before, outcome = await self._settle(job, decide_error, now, exc)
        if outcome.changed and outcome.job.error != before.error and not source_wide:
            log.warning("polling job %s (%s) failed: %s", job.name, job.id, exc.detail)
        else:
            log.debug("polling job %s (%s) still failing: %s", job.name, job.id, exc.detail)
        if source_wide:
            await self._source_failed(job.source, exc, now)
        elif exc.status is not None and exc.status not in (401, 403, 407):
            # An answer past the source's authentication (a 404, a 500): its credentials
            # work again, whatever this job's own trouble is.
            await self._source_ok(job.source, now)
        return PollResult(
            outcome.job.state.terminal,
            True,
            exc.retry_after,
            throttle=exc.retry_after if exc.throttled else None,
        )

    def _unforeseen(self, job: WatchedJob, exc: Exception) -> FetchError:
        """An exception no source foresaw, as the poll's error: one line for people (and
        the job's ``error`` event in time); the traceback at debug level, once per job."""
        if job.id not in self._unforeseen_logged:
            self._unforeseen_logged.add(job.id)
            log.debug("polling job %s (%s): unforeseen", job.name, job.id, exc_info=exc)
        what = cut(str(exc).splitlines()[0] if str(exc) else "", 200)
        return FetchError("internal", f"cannot read the answer: {type(exc).__name__}: {what}")

    async def _settle(
        self,
        job: WatchedJob,
        decide: Callable[[JobView], Outcome],
        now: datetime,
        error: FetchError | None,
    ) -> tuple[JobView, Outcome]:
        """Decide from the stored view and write it; if another replica wrote the job
        meanwhile, decide once more from what it wrote (the same answer then usually
        changes nothing), and after a second conflict drop this poll's result."""
        for _ in range(2):
            before = self.views[job.id]
            if before.state.terminal:
                break
            outcome = decide(before)
            if await self._record(job, before, outcome, now, error):
                return before, outcome
        log.debug(
            "job %s (%s): written by another replica meanwhile; result dropped", job.name, job.id
        )
        view = self.views[job.id]
        return view, Outcome(view, changed=False)

    async def _record(
        self,
        job: WatchedJob,
        before: JobView,
        outcome: Outcome,
        now: datetime,
        error: FetchError | None,
    ) -> bool:
        """Write one poll's outcome; False (and the stored view taken) if the job had moved on."""
        if not outcome.changed and outcome.transition is None:
            self._polled_at[job.id] = now
            return True
        source = self.config.sources[job.source]
        new_events = []
        for event in outcome.events:
            targets = self.targets_for(job.notify, event.kind.value, job.source, job)
            if not targets:
                continue  # nobody listens: the transition and the log line are the record
            payload = event_payload(
                event,
                job,
                before,
                outcome.job,
                now,
                advice(event.kind, error, source, self.sources[job.source].advice),
                eta=job_eta(outcome.job, self.progress_log.get(job.id, ()), now, now),
                typical=self.typical_for(job),
            )
            new_events.append(NewEvent(event.kind.value, payload, targets))
        archive = None
        if (
            source.archive_dir is not None
            and outcome.job.state is State.SUCCEEDED
            and before.state is not State.SUCCEEDED
            and outcome.job.archive_id
        ):
            archive = (outcome.job.archive_id, job.source)  # kept by the archiver
        recorded = await self.store.record(job.id, outcome, now, new_events, archive)
        self._set_view(job.id, recorded.view)
        if not recorded.written:
            return False
        self._polled_at.pop(job.id, None)
        self._remember(job, outcome)
        if self.on_event is not None:
            for event in outcome.events:
                self.on_event(event.kind.value)
        if before.error and outcome.job.error is None:
            log.info("polling job %s (%s) works again", job.name, job.id)
        if (
            outcome.transition is not None
            and outcome.transition.from_state is not outcome.job.state
        ):
            log.info(
                "job %s (%s): %s -> %s%s",
                job.name,
                job.id,
                before.state.value,
                outcome.job.state.value,
                f" (status {outcome.job.raw_status})" if outcome.job.state is State.UNKNOWN else "",
            )
        for event in outcome.events:
            log.info("job %s (%s): %s: %s", job.name, job.id, event.kind.value, event.detail)
        if new_events:
            self.dispatcher.wake()
        if archive is not None and self.on_archive is not None:
            self.on_archive()
        return True

    def _remember(self, job: WatchedJob, outcome: Outcome) -> None:
        """Keep what ETAs and typical durations are drawn from, as the job moves."""
        view, transition = outcome.job, outcome.transition
        if view.state is State.RUNNING:
            if transition is not None and transition.progress is not None:
                # A tuple, not a list: what it holds is not tracked by the garbage
                # collector, so neither is it once it has been looked at.
                kept = self.progress_log.get(job.id, ())
                self.progress_log[job.id] = (*kept[-23:], (transition.at, transition.progress))
        else:
            self.progress_log.pop(job.id, None)
        if view.state is State.SUCCEEDED and (seconds := duration_seconds(view)):
            key = (job.name, job.source)
            runs = self._durations.setdefault(key, [])
            runs.append((job.id, seconds))
            del runs[:-KEPT_DURATIONS]
            self._typical.pop(key, None)

    async def _source_failed(self, name: str, error: FetchError, now: datetime) -> None:
        source = self.config.sources[name]

        def decide(before: SourceHealth) -> tuple[SourceHealth, tuple[Event, ...]]:
            return observe_source_error(before, error.summary, error.detail, now, source.rules)

        async with self._source_locks[name]:
            was = self.health[name]
            if await self._settle_source(name, decide, now, error) and was.error is None:
                what = "asks to be left alone" if error.throttled else "credentials fail"
                log.warning("source %s: %s: %s", name, what, error.detail)

    async def _source_ok(self, name: str, now: datetime) -> None:
        if self.health[name].error is None:
            return
        async with self._source_locks[name]:
            if await self._settle_source(name, observe_source_ok, now, None):
                log.info("source %s: polls work again", name)

    async def _settle_source(
        self,
        name: str,
        decide: Callable[[SourceHealth], tuple[SourceHealth, tuple[Event, ...]]],
        now: datetime,
        error: FetchError | None,
    ) -> bool:
        """As ``_settle`` for a source's health; True if this call wrote a change."""
        for _ in range(2):
            before = self.health[name]
            health, events = decide(before)
            if health == before:
                return False
            if await self._record_source(name, health, events, now, error):
                return True
        return False

    async def _record_source(
        self,
        name: str,
        health: SourceHealth,
        events: Sequence[Event],
        now: datetime,
        error: FetchError | None,
    ) -> bool:
        source = self.config.sources[name]
        listeners = sorted({n for j in self.jobs.values() if j.source == name for n in j.notify})
        new_events = [
            NewEvent(
                kind=event.kind.value,
                payload=source_payload(
                    event,
                    name,
                    source.endpoint,
                    source.auth.method,
                    health,
                    error.detail if error else None,
                    now,
                    advice(event.kind, error, source, self.sources[name].advice),
                ),
                targets=self.targets_for(listeners, event.kind.value, name),
            )
            for event in events
        ]
        recorded = await self.store.record_source(name, health, now, new_events)
        self.health[name] = recorded.health
        if not recorded.written:
            return False
        for event in events:
            log.info("source %s: %s: %s", name, event.kind.value, event.detail)
        if new_events:
            self.dispatcher.wake()
        return True

    def events_written(self) -> None:
        """Events were written beside the polls (an archive's): the senders look now."""
        self.dispatcher.wake()

    def targets_for(
        self, names: Iterable[str], kind: str, source: str, job: WatchedJob | None = None
    ) -> list[Target]:
        """Every URL of every notifier that hears this event (one delivery each)."""
        notifiers = self.config.notifiers
        targets: list[Target] = []
        for name in names:
            notifier = notifiers.get(name)
            if notifier is not None and notifier.hears(kind, source, job):
                targets.extend(self.dispatcher.sender.targets(name))
        return targets

    async def remind(self) -> int:
        """Say again, to notifiers with a ``reminder``, what is still wrong; return how many."""
        if not any(n.reminder is not None for n in self.config.notifiers.values()):
            return 0
        async with self.store.exclusive("reminders") as ours:
            if not ours or self.term() is None:
                return 0  # another replica is reminding right now (or this one may not act)
            if self.store.shared:
                # Other replicas poll most jobs: remind from what is stored, not from memory.
                stored = await self.store.views()
                self.views.update((i, v) for i, v in stored.items() if i in self.jobs)
            made = await remind_unresolved(
                self.config.notifiers.values(),
                self.jobs,
                self.views,
                self.store,
                self.dispatcher.sender.targets,
                self.clock(),
            )
        if made:
            log.info("reminded of %d unresolved problems", made)
            self.dispatcher.wake()
        return made

    async def refresh(self, job_ids: Iterable[str]) -> None:
        """Take the stored views of these jobs (another replica polled them until now)."""
        stored = await self.store.views(job_ids)
        for job_id, view in stored.items():
            if job_id in self.jobs and view.version >= self.views[job_id].version:
                self._set_view(job_id, view)

    async def flush(self) -> None:
        """Write the poll times of polls that changed nothing, all in one statement.

        Those times are kept in memory (a poll that changes something writes its time
        with its change); they reach the database at this flush, every few minutes and
        at shutdown, so that 10,000 unchanged jobs do not cost 10,000 rows a minute.
        """
        pending, self._polled_at = self._polled_at, {}
        try:
            await self.store.touch(pending)
        except Exception:
            for job_id, at in pending.items():
                self._polled_at.setdefault(job_id, at)
            raise
