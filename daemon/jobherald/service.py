"""The daemon's life: load, open storage, start, wait for a signal, stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy.engine import make_url

from jobherald import __version__
from jobherald.aio import first_of
from jobherald.config import Config, systemd_environment
from jobherald.fetch import Fetcher, RetryPolicy
from jobherald.liveness import DeadMansSwitch, SystemdNotifier
from jobherald.logs import one_line, setup_logging
from jobherald.metrics import Metrics
from jobherald.model import counted
from jobherald.notify import Dispatcher
from jobherald.report import index_jobs
from jobherald.schedule import Periodic, Pool, Watcher, poll_once
from jobherald.schedule.archiver import Archiver
from jobherald.schedule.pool import ADD_CHUNK, first_spread
from jobherald.schedule.pruner import Pruner, prune_every
from jobherald.schedule.queue import Entry
from jobherald.schedule.replicas import Replica
from jobherald.schedule.reporter import Reporter
from jobherald.store import DatabaseLock, Store
from jobherald.store.schema import shown_url
from jobherald.timing import utcnow

log = logging.getLogger(__name__)

__all__ = ["RESTART_ONLY", "Daemon", "Running", "SystemdNotifier", "setup_logging"]

# What a reload cannot change in a running daemon: kept until the next restart (said so).
RESTART_ONLY = (
    "database_url",
    "concurrency",
    "host_concurrency",
    "retries",
    "event_loop",
    "replica",
    "lease",
    "http",
    "heartbeat_url",
    "heartbeat_every",
)
# Poll times of polls that changed nothing are written this often (and at shutdown).
FLUSH_EVERY = 300.0
REMIND_EVERY = 60.0
# Jobs finished longer than their forget_after are looked for this often.
FORGET_EVERY = 60.0
# How often ended silences and quiet hours are looked for (their summaries follow).
QUIET_EVERY = 5.0
# How often reports are looked at (one is sent within this of its time).
REPORT_EVERY = 5.0
# The first pass over history this long after a start.
PRUNE_FIRST = 30.0
# Jobs taken over from a replica that left are first polled within this many seconds.
TAKEOVER_SPREAD = 0.25


@dataclass(slots=True)
class Running:
    """A started daemon's parts: built by ``Daemon._start``, taken down by ``_stop``."""

    store: Store
    dispatcher: Dispatcher
    watcher: Watcher
    pool: Pool
    replica: Replica
    periodic: Periodic
    sender: asyncio.Task[None]
    delivering: asyncio.Event
    keeper: asyncio.Task[None]
    archiving: asyncio.Event
    membership: asyncio.Task[None]
    membership_ends: asyncio.Event
    heartbeat: asyncio.Task[None]


class Daemon:
    """jobherald's parts wired together; ``run_once`` for one pass, ``run`` until stopped."""

    def __init__(self, config: Config, clock: Callable[[], datetime] = utcnow) -> None:
        self.config = config
        self.clock = clock
        self.stopping = asyncio.Event()
        self.reloading = asyncio.Event()
        env = systemd_environment()
        self.systemd = SystemdNotifier(env.notify_socket)
        self.watchdog_usec = env.watchdog_usec
        # The running parts (None until started): built by _start, taken down by _stop.
        self.running: Running | None = None
        self.metrics = Metrics()
        # Sends the scheduled reports (None until started).
        self.reporter: Reporter | None = None
        # Config loaded, database open and polling started (what /readyz says).
        self.ready = False
        # While the start queues its own jobs (the first ones, then the rest): nothing
        # else runs yet that could take them away, and nobody polled them meanwhile.
        self._starting = False

    # What the listener and those who drive the daemon in-process read of it.
    @property
    def store(self) -> Store | None:
        return self.running.store if self.running is not None else None

    @property
    def pool(self) -> Pool | None:
        return self.running.pool if self.running is not None else None

    @property
    def watcher(self) -> Watcher | None:
        return self.running.watcher if self.running is not None else None

    def stop(self) -> None:
        self.stopping.set()

    def problem(self) -> str | None:
        """Why polling has stopped, or None while it works: what gates the watchdog and
        /healthz alike."""
        running = self.running
        if running is None:
            return "not started yet" if not self.ready else None
        problem = running.pool.health(asyncio.get_running_loop().time())
        if problem is None and not running.periodic.alive(self.clock()):
            problem = "the periodic chores have stopped"
        if problem is None and running.membership.done():
            problem = "the replica's heartbeats have stopped"
        return problem

    def reload(self) -> None:
        self.reloading.set()

    def _fetcher(self) -> Fetcher:
        return Fetcher(
            self.config.concurrency,
            self.config.host_concurrency,
            RetryPolicy(retries=self.config.retries),
        )

    @contextlib.contextmanager
    def _one_daemon(self, what: str) -> Iterator[None]:
        """On SQLite, hold the database for this process alone (PostgreSQL is shared)."""
        url = make_url(self.config.database_url)
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            yield
            return
        from pathlib import Path

        lock = DatabaseLock(Path(url.database))
        lock.acquire(what)
        try:
            yield
        finally:
            lock.release()

    @contextlib.asynccontextmanager
    async def _parts(
        self, first: int | None = None
    ) -> AsyncIterator[tuple[Store, Dispatcher, Watcher]]:
        """The store, dispatcher and watcher over one shared HTTP session, closed after use
        (the watcher started with ``first``: see ``Watcher.start``)."""
        store = await Store.open(
            self.config.database_url,
            backup=self.config.backup_before_migrate,
            idle_for=self.config.lease,
        )
        try:
            if not store.shared:
                # This process holds the SQLite database alone: a daemon killed before it
                # left claims and a heartbeat row behind, which must not wait out a lease.
                await store.forget_holders()
            async with self._fetcher() as fetcher:
                dispatcher = Dispatcher(
                    store, self.config.notifiers, self.clock, public_url=self.config.public_url
                )
                try:
                    watcher = Watcher(self.config, store, fetcher, dispatcher, self.clock)
                    await watcher.start(first)
                    yield store, dispatcher, watcher
                finally:
                    dispatcher.close()
        finally:
            await store.close()

    async def run_once(self) -> dict[str, int]:
        """Poll every active job once, deliver what is due, and return the state counts."""
        with self._one_daemon("jobherald run --once"):
            return await self._run_once()

    async def _run_once(self) -> dict[str, int]:
        async with self._parts() as (_, dispatcher, watcher):
            await poll_once(watcher.poll, [j.id for j in watcher.active()], self.config.concurrency)
            await watcher.flush()
            await watcher.remind()
            # Archives of exports that succeeded now (or whose download is due again).
            await Archiver(watcher, dispatcher.claimer, self.clock).keep_due(wait=True)
            await dispatcher.quieting.release_due(self.config.notifiers, self.clock())
            await dispatcher.deliver_due()
            return watcher.counts()

    async def run(self) -> None:
        """Watch until ``stop()`` (or SIGTERM/SIGINT), then finish what is in flight."""
        # Signals are heard from the first moment: a SIGTERM during start-up stops the
        # daemon cleanly as soon as it has started, a SIGHUP reloads it then.
        with self._one_daemon("the jobherald daemon"), _signals(self.stop, self.reload):
            await self._watch()

    async def _watch(self) -> None:
        started = time.monotonic()
        log.info(
            "jobherald %s starting: config %s, %s, database %s",
            __version__,
            self.config.path,
            counted(len(self.config.jobs), "job"),
            shown_url(self.config.database_url),
        )
        # The port first: a start refused for it changes nothing (no migration, no rows).
        # The first unfinished jobs are polled while the others are registered.
        async with self._listening(), self._parts(ADD_CHUNK) as (store, dispatcher, watcher):
            running = await self._start(store, dispatcher, watcher)
            try:
                while not self.stopping.is_set():
                    await first_of(self.stopping, self.reloading)
                    if self.reloading.is_set() and not self.stopping.is_set():
                        self.reloading.clear()
                        await self._reload(watcher, dispatcher, running.pool, running.replica)
            except BaseException:  # no poll may outlive the session it uses
                running.heartbeat.cancel()
                running.periodic.stop()
                await running.pool.stop(0)
                raise
            await self._stop(running, started)
        self.systemd.close()

    async def _start(self, store: Store, dispatcher: Dispatcher, watcher: Watcher) -> Running:
        """Start polling, delivering, keeping archives and heart-beating; say READY=1."""
        if waiting := await store.waiting_retries():
            # Each keeps its backoff: a restart does not make them all due at once.
            log.info(
                "%d undelivered messages wait for their next attempt "
                "(`jobherald deliveries retry --all` sends them now)",
                waiting,
            )
        dispatcher.sender.load()
        pool = Pool(watcher.poll, self.config.concurrency, stuck_after=self._stuck_after())
        self._gate(pool, watcher)
        replica = self._replica(store, watcher, dispatcher, pool)
        self._count(watcher, dispatcher, pool)
        periodic = Periodic()
        periodic.every(FLUSH_EVERY, "writing poll times", watcher.flush)
        periodic.every(REMIND_EVERY, "sending reminders", watcher.remind)
        pruner = self._pruner(store, watcher)
        periodic.every(FORGET_EVERY, "forgetting finished jobs", watcher.forget_finished)
        periodic.every(
            QUIET_EVERY,
            "ending silences and quiet hours",
            functools.partial(self._end_quiet, dispatcher),
        )
        reporter = Reporter(
            store,
            lambda: self.config.reports,
            dispatcher.sender.targets,
            self.clock,
            lambda: self.config.public_url,
            self.config.replica,
        )
        reporter.on_sent = lambda name: self.metrics.reports_sent.labels(name).inc()
        reporter.on_queued = dispatcher.wake
        self.reporter = reporter
        periodic.every(REPORT_EVERY, "sending reports", reporter.run_due, first_in=1.0)
        # A first pass soon after the start: a daemon restarted more often than hourly
        # prunes all the same.
        periodic.every(
            prune_every(self.config.keep_history),
            "pruning history",
            pruner.run_pass,
            first_in=PRUNE_FIRST,
        )
        if self.config.heartbeat_url is not None:
            switch = DeadMansSwitch(
                lambda: self.config.heartbeat_url,
                self.problem,
                self.metrics.heartbeats,
                store,
                watcher.fetcher,
            )
            periodic.every(self.config.heartbeat_every, "pinging heartbeat_url", switch.ping)
        delivering = asyncio.Event()
        sender = asyncio.create_task(dispatcher.run(delivering), name="dispatcher")
        archiver = Archiver(watcher, replica.claimer, self.clock)
        archiver.on_result = lambda result: self.metrics.archives.labels(result).inc()
        archiver.max_sleep = dispatcher.max_sleep
        watcher.on_archive = archiver.wake
        pool.start()
        self._starting = True
        try:
            await replica.join()
            if watcher.partial:  # polling the first jobs: now every job
                await watcher.register_rest()
                await replica.rebalance(first=True)
        except BaseException:  # no poll may outlive the session it uses
            await pool.stop(0)
            raise
        finally:
            self._starting = False  # from here on, jobs gained are taken over
        self.metrics.job_counts = watcher.counts  # every job's, not only the first ones'
        archiving = asyncio.Event()  # an archive's job is known from here on
        keeper = asyncio.create_task(archiver.run(archiving), name="archiver")
        membership_ends = asyncio.Event()
        membership = asyncio.create_task(replica.run(membership_ends), name="membership")
        periodic.start()
        active = sum(watcher.active_states().values())
        log.info(
            "watching %s (%d already finished%s) with %d pollers on the %s loop",
            counted(active, "job"),
            len(watcher.jobs) - active,
            f"; {replica.status(active)}" if store.shared else "",
            pool.size,
            self.config.event_loop,
        )
        heartbeat = asyncio.create_task(self._heartbeat(watcher), name="heartbeat")
        index_jobs(self.config, watcher.jobs)
        self.running = Running(
            store=store,
            dispatcher=dispatcher,
            watcher=watcher,
            pool=pool,
            replica=replica,
            periodic=periodic,
            sender=sender,
            delivering=delivering,
            keeper=keeper,
            archiving=archiving,
            membership=membership,
            membership_ends=membership_ends,
            heartbeat=heartbeat,
        )
        # What start-up built (modules, config, views) lives as long as the daemon: keep
        # it out of the garbage collector's scans, which then cover only what polls make.
        gc.collect()
        gc.freeze()
        # Young collections every 10,000 new objects rather than 700: at a thousand polls
        # a second, 700 made them so frequent that the polls in flight outlived two of
        # them, and the oldest generation, thus filled, was scanned whole every second or
        # two, holding the loop up to 0.3 s at 100,000 jobs. They now die young.
        gc.set_threshold(10_000, 10, 10)
        gc.enable()
        self.systemd.send("READY=1", f"STATUS={self._status(watcher)}")
        self.ready = True
        return self.running

    async def _stop(self, running: Running, started: float) -> None:
        """Finish what is in flight (within shutdown_timeout), then hand every job and
        claim to the other replicas."""
        self.systemd.send("STOPPING=1", "STATUS=stopping: finishing polls and deliveries")
        self.ready = False
        running.heartbeat.cancel()
        log.info("stopping: finishing polls and deliveries in flight")
        deadline = time.monotonic() + self.config.shutdown_timeout
        running.periodic.stop()
        cut = await running.pool.stop(self.config.shutdown_timeout)
        watcher = running.watcher
        try:
            await watcher.flush()
        except Exception:
            log.exception("writing poll times at shutdown failed")
        running.archiving.set()
        await self._finish_archives(running.keeper, deadline)
        running.delivering.set()
        await self._finish(running.sender, running.dispatcher, deadline)
        # Only now, with nothing in flight, hand every job and claim to the others.
        running.membership_ends.set()
        await running.membership
        await running.replica.leave()
        counts = await running.store.delivery_counts()
        log.info(
            "stopped after %.0fs: %d polls, %s; deliveries pending %d, delivered %d%s",
            time.monotonic() - started,
            watcher.polls,
            ", ".join(f"{counted(n, 'job')} {s}" for s, n in sorted(watcher.counts().items()))
            or "no jobs",
            counts.get("pending", 0),
            counts.get("delivered", 0),
            f"; {cut} polls cut off" if cut else "",
        )

    def _gate(self, pool: Pool, watcher: Watcher) -> None:
        """Hold the pool's polls to each source's budget (``max_rate``) and pauses, the
        jobs about to finish first."""

        def source_of(job_id: str) -> str | None:
            job = watcher.jobs.get(job_id)
            return job.source if job is not None else None

        def eta(entry: Entry) -> float | None:
            """When a job should end (epoch seconds), as its progress says; None unknown."""
            if entry.job_id not in watcher.views:
                return None
            end = watcher.eta_of(entry.job_id, self.clock())
            return end.timestamp() if end is not None else None

        gates = pool.use_gates(source_of, eta)
        gates.configure(_limits(self.config))

    def _replica(
        self, store: Store, watcher: Watcher, dispatcher: Dispatcher, pool: Pool
    ) -> Replica:
        """This daemon's place among the replicas (on SQLite: the only one), wired to the
        pool it starts and stops polls in, and gating the watcher and the dispatcher."""

        async def start(gained: set[str], first: bool) -> None:
            initial = self._starting
            if store.shared:
                watcher.fetcher.identify(replica.name)
            ids: Iterable[str] = gained  # active (not terminal) configured jobs
            if not initial:
                await watcher.refresh(gained)  # another replica polled them until now
                ids = [i for i in gained if not watcher.views[i].state.terminal]
            if pool.gates is not None:  # budgets are split among the live replicas
                pool.gates.share(len(replica.live))
            configured = watcher.jobs
            timed = ((i, configured[i].poll_interval) for i in ids if i in configured)
            if initial:  # nothing else runs yet that could take them away meanwhile
                expected = watcher.starting // len(replica.live)
                await pool.add_gradually(timed, first_spread(max(len(gained), expected)))
            else:
                pool.add(timed, TAKEOVER_SPREAD)
            dispatcher.wake()

        def stop(lost: Iterable[str]) -> None:
            pool.remove(lost)
            if pool.gates is not None:
                pool.gates.share(len(replica.live))

        replica = Replica(
            store,
            self.config.replica,
            self.config.lease,
            jobs=lambda: [j.id for j in watcher.active()],
            start=start,
            stop=stop,
            polling=lambda: len(pool.queue),
        )
        watcher.term = replica.term
        watcher.fetcher.may_send = replica.valid
        dispatcher.claimer = replica.claimer
        if store.shared:
            # Claims of a replica that died are taken over once its lease ends.
            dispatcher.max_sleep = min(dispatcher.max_sleep, self.config.lease / 3)
        return replica

    def _stuck_after(self) -> float:
        """How long a poll may take before the pool counts it as hung: every attempt of
        one poll (and of a credentials fetch before it) timing out, twice over, plus a minute."""
        timeout = max((s.timeout for s in self.config.sources.values()), default=10.0)
        policy = RetryPolicy(retries=self.config.retries)
        attempt = timeout + max(policy.max_backoff, policy.max_retry_after)
        return 2 * (self.config.retries + 2) * attempt + 60.0

    async def _reload(
        self, watcher: Watcher, dispatcher: Dispatcher, pool: Pool, replica: Replica
    ) -> None:
        """Read the config again and apply it; a config that does not validate changes nothing."""
        from jobherald import config as config_module
        from jobherald.errors import ConfigError

        self.systemd.send(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )
        old = self.config
        try:
            new = await asyncio.to_thread(config_module.load, old.path, check_urls=True)
        except Exception as exc:  # whatever reading it raised: the running config stays
            problems = exc.problems if isinstance(exc, ConfigError) else [one_line(exc)]
            if not isinstance(exc, ConfigError):
                log.debug("reading the config for a reload failed", exc_info=exc)
            for line in problems:
                log.error("reload refused: %s", line)
            log.error("reload refused: still running the previous configuration")
            self.systemd.send("READY=1", f"STATUS=reload refused; {self._status(watcher)}")
            return
        for key in RESTART_ONLY:
            if getattr(new, key) != getattr(old, key):
                log.warning("reload: a change of %s takes effect at the next restart", key)
        new = replace(new, **{key: getattr(old, key) for key in RESTART_ONLY})
        try:  # registering the jobs in the database first: when it fails, nothing changed
            changed, removed = await watcher.reconfigure(new)
        except Exception as exc:
            from sqlalchemy.exc import SQLAlchemyError

            from jobherald.store.schema import db_problem

            log.debug("applying the reloaded config failed", exc_info=exc)
            if isinstance(exc, SQLAlchemyError):
                log.error("reload refused: the database failed: %s", db_problem(exc))
            else:
                log.error("reload refused: %s", one_line(exc))
            log.error("reload refused: still running the previous configuration")
            self.systemd.send("READY=1", f"STATUS=reload refused; {self._status(watcher)}")
            return
        if new.log_level != old.log_level:
            setup_logging(new.log_level)
        if new.keep_history != old.keep_history and self.running is not None:
            self.running.periodic.reschedule("pruning history", prune_every(new.keep_history))
        dispatcher.reconfigure(new.notifiers, new.public_url)
        if pool.gates is not None:
            pool.gates.configure(_limits(new))
        pool.remove(removed)
        pool.remove(j.id for j in changed if watcher.views[j.id].state.terminal)
        self.config = new
        index_jobs(new, watcher.jobs)
        try:
            await replica.rebalance()  # new jobs to their owners, removed ones dropped
        except Exception as exc:  # membership's own rounds rebalance again
            log.debug("rebalancing after a reload failed", exc_info=exc)
            log.warning(
                "reload: sharing jobs among replicas failed (%s): tried again at the next "
                "heartbeat",
                one_line(exc),
            )
        pool.add(
            (j.id, j.poll_interval)
            for j in changed
            if j.id in replica.owned and not watcher.views[j.id].state.terminal
        )
        log.info(
            "reloaded %s: %s, %d new or changed, %d removed",
            new.path,
            counted(len(new.jobs), "job"),
            len(changed),
            len(removed),
        )
        self.systemd.send("READY=1", f"STATUS={self._status(watcher)}")

    def _pruner(self, store: Store, watcher: Watcher) -> Pruner:
        pruner = Pruner(
            store,
            lambda: self.config.keep_history,
            self.clock,
            may_act=lambda: watcher.term() is not None,
        )
        pruner.on_pruned = lambda table, n: self.metrics.pruned.labels(table).inc(n)
        pruner.on_size = self.metrics.database_bytes.set
        return pruner

    def _status(self, watcher: Watcher) -> str:
        """A line for `systemctl status`: what is watched, what fails, when it last polled."""
        counts = watcher.active_states()
        active = sum(counts.values())
        parts = [f"{n} {state}" for state, n in sorted(counts.items())]
        failing = watcher.failing()
        if failing:
            parts.append(f"{failing} failing")
        line = f"watching {counted(active, 'job')}" + (f": {', '.join(parts)}" if parts else "")
        replica = self.running.replica if self.running is not None else None
        if replica is not None and (replica.store.shared or not replica.valid()):
            line = f"{replica.status(active)}; {line}"
        if watcher.last_poll_at is not None:
            ago = max(0.0, (self.clock() - watcher.last_poll_at).total_seconds())
            line += f"; last poll {ago:.0f} s ago"
        return line

    @contextlib.asynccontextmanager
    async def _listening(self) -> AsyncIterator[None]:
        """The HTTP listener, when [http] has one, for as long as the daemon runs."""
        if self.config.http is None:
            yield
            return
        from jobherald.http import HttpServer

        server = HttpServer(self)
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    async def _end_quiet(self, dispatcher: Dispatcher) -> None:
        """Tell the silences and quiet hours that have ended (once, whichever replica)."""
        now = self.clock()
        if await dispatcher.quieting.release_due(self.config.notifiers, now):
            dispatcher.wake()
        silences = await dispatcher.quieting.silences()
        self.metrics.silences_active.set(sum(1 for s in silences if s.active(now)))

    def _count(self, watcher: Watcher, dispatcher: Dispatcher, pool: Pool) -> None:
        """Wire the metrics to the parts that count (and to what is read at each scrape)."""
        metrics = self.metrics
        watcher.on_poll = metrics.poll
        watcher.on_event = metrics.event
        dispatcher.on_delivery = metrics.delivery
        dispatcher.on_lag = metrics.delivery_lag
        dispatcher.quieting.on_held = metrics.held
        gates = pool.gates

        def sources_up() -> dict[str, bool]:
            throttled = gates.throttled() if gates is not None else {}
            return {n: h.error is None and n not in throttled for n, h in watcher.health.items()}

        metrics.sources_up = sources_up
        metrics.deferred = gates.deferred if gates is not None else None
        metrics.pool_stats = lambda: pool.stats

    async def _heartbeat(self, watcher: Watcher) -> None:
        """From the event loop itself: WATCHDOG=1 while the pool polls and the chores run."""
        every = 5.0
        if self.watchdog_usec:
            every = min(every, self.watchdog_usec / 2_000_000)
        said: str | None = None
        while True:
            await asyncio.sleep(every)
            problem = self.problem()
            if problem != said:
                if problem is not None:
                    log.error("polling is stuck: %s", problem)
                elif said is not None:
                    log.info("polling works again")
                said = problem
            status = self._status(watcher)
            if problem is not None:
                self.systemd.send(f"STATUS=stuck: {problem}; {status}")
            elif self.watchdog_usec:
                self.systemd.send("WATCHDOG=1", f"STATUS={status}")
            else:
                self.systemd.send(f"STATUS={status}")

    async def _finish_archives(self, keeper: asyncio.Task[None], deadline: float) -> None:
        """Let downloads in flight end within the bound; one cut off is done at next start."""
        try:
            await asyncio.wait_for(asyncio.shield(keeper), max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            log.warning("shutdown bound reached; an archive download resumes at next start")

    async def _finish(
        self, sender: asyncio.Task[None], dispatcher: Dispatcher, deadline: float
    ) -> None:
        """Let the dispatcher end its pass, then send what the last polls queued, within the bound."""
        try:
            await asyncio.wait_for(sender, max(0.1, deadline - time.monotonic()))
            await asyncio.wait_for(
                dispatcher.deliver_due(patient=False), max(0.1, deadline - time.monotonic())
            )
        except TimeoutError:
            sender.cancel()
            await dispatcher.stop_lanes()
            log.warning("shutdown bound reached; undelivered messages are sent at next start")


def _limits(config: Config) -> dict[str, tuple[float | None, float]]:
    """Each source's request budget and longest pause, as the pool's gates take them."""
    return {
        name: (source.max_rate, source.max_retry_after_source)
        for name, source in config.sources.items()
    }


@contextlib.contextmanager
def _signals(stop: Callable[[], None], reload: Callable[[], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig, handler in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGHUP, reload)):
        try:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass  # no signal handlers on this loop (not the main thread): stop() still works
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
