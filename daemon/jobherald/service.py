"""The daemon's life: load, open storage, start, wait for a signal, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime

from sqlalchemy.engine import make_url

from jobherald import __version__
from jobherald.config import Config
from jobherald.fetch import Fetcher, RetryPolicy
from jobherald.notify import Dispatcher
from jobherald.schedule import Schedule, Watcher
from jobherald.store import Store

log = logging.getLogger(__name__)


def setup_logging(level: str) -> None:
    """Configure logging once: to stderr, quiet libraries unless debugging."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # apprise at debug level may show parts of notification URLs (credentials among
    # them), and aiosqlite every statement: neither belongs in jobherald's log.
    logging.getLogger("apprise").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    if level != "debug":
        for noisy in ("aiohttp.access", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # "skipped: maximum number of running instances reached" would repeat every
        # interval while an upstream is slow; the poll's own error says it once.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Daemon:
    """jobherald's parts wired together; ``run_once`` for one pass, ``run`` until stopped."""

    def __init__(self, config: Config, clock: Callable[[], datetime] = _utcnow) -> None:
        self.config = config
        self.clock = clock
        self.stopping = asyncio.Event()

    def stop(self) -> None:
        self.stopping.set()

    def _fetcher(self) -> Fetcher:
        return Fetcher(
            self.config.concurrency,
            self.config.host_concurrency,
            RetryPolicy(retries=self.config.retries),
        )

    @contextlib.asynccontextmanager
    async def _parts(self) -> AsyncIterator[tuple[Store, Dispatcher, Watcher]]:
        """The store, dispatcher and watcher over one shared HTTP session, closed after use."""
        store = await Store.open(self.config.database_url)
        try:
            async with self._fetcher() as fetcher:
                dispatcher = Dispatcher(store, self.config.notifiers, self.clock)
                try:
                    watcher = Watcher(self.config, store, fetcher, dispatcher, self.clock)
                    await watcher.start()
                    yield store, dispatcher, watcher
                finally:
                    dispatcher.close()
        finally:
            await store.close()

    async def run_once(self) -> dict[str, int]:
        """Poll every active job once, deliver what is due, and return the state counts."""
        async with self._parts() as (_, dispatcher, watcher):
            await watcher.poll_all([j.id for j in watcher.active()])
            await watcher.remind()
            await dispatcher.deliver_due()
            return watcher.counts()

    async def run(self) -> None:
        """Watch until ``stop()`` (or SIGTERM/SIGINT), then finish what is in flight."""
        started = time.monotonic()
        log.info(
            "jobherald %s starting: config %s, %d jobs, database %s",
            __version__,
            self.config.path,
            len(self.config.jobs),
            make_url(self.config.database_url).render_as_string(hide_password=True),
        )
        async with self._parts() as (store, dispatcher, watcher):
            if retried := await store.retry_pending_now(self.clock()):
                log.info("retrying %d undelivered messages from before the restart", retried)
            schedule = Schedule(watcher)
            delivering = asyncio.Event()
            sender = asyncio.create_task(dispatcher.run(delivering), name="dispatcher")
            schedule.start()
            with _signals(self.stop):
                await self.stopping.wait()
            log.info("stopping: finishing polls and deliveries in flight")
            deadline = time.monotonic() + self.config.shutdown_timeout
            cut = await schedule.stop(self.config.shutdown_timeout)
            delivering.set()
            await self._finish(sender, dispatcher, deadline)
            counts = await store.delivery_counts()
            log.info(
                "stopped after %.0fs: %d polls, %s; deliveries pending %d, delivered %d%s",
                time.monotonic() - started,
                watcher.polls,
                ", ".join(f"{n} {s}" for s, n in sorted(watcher.counts().items())) or "no jobs",
                counts.get("pending", 0),
                counts.get("delivered", 0),
                f"; {cut} polls cut off" if cut else "",
            )

    async def _finish(
        self, sender: asyncio.Task[None], dispatcher: Dispatcher, deadline: float
    ) -> None:
        """Let the dispatcher end its pass, then send what the last polls queued, within the bound."""
        try:
            await asyncio.wait_for(sender, max(0.1, deadline - time.monotonic()))
            await asyncio.wait_for(dispatcher.deliver_due(), max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            sender.cancel()
            log.warning("shutdown bound reached; undelivered messages are sent at next start")


@contextlib.contextmanager
def _signals(handler: Callable[[], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
