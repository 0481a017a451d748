"""Keeping export archives: each downloaded once, whole or not at all, into ``archive_dir``.

An archive to keep is noted in the database with its job's success. The archiver
claims it (one downloader across replicas), streams it to a hidden ``.part`` file in
the same folder, fsyncs it, checks it is a whole zip, renames it into place as
``<name or id>-<archive_id>.zip`` and records path, size and sha256 together with
the ``archived`` event. A source may let an archive be downloaded once, so a file
that is already whole on disk (from a run killed after the transfer) is taken as it
is, never fetched again. A failed download is retried with backoff (from the job's
poll interval, doubling up to 15 minutes) and, after the job's ``error_after``, raises
one ``error`` event; "no such archive" three times in a row gives it up. It runs beside the polls and never
holds them up: its own task, its own request slots, its disk work in threads.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import stat
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from jobherald.aio import PassFailures, first_of
from jobherald.config import Source, WatchedJob
from jobherald.errors import ArchiveProblem, FetchError, UntrustedFile
from jobherald.model import Event, EventKind, JobView, format_duration
from jobherald.store import ArchiveClaim, Claimer, Kept, NewEvent
from jobherald.store.schema import DATABASE_AWAY
from jobherald.timing import backoff, utcnow

if TYPE_CHECKING:
    from jobherald.config import Config
    from jobherald.fetch import Fetcher
    from jobherald.sources.base import JobSource
    from jobherald.store import Store, Target


class Polled(Protocol):
    """What the archiver needs of the polling side (the watcher): the jobs and their
    views, the config, the sources and the fetcher to download with, the store, who
    hears an event, and waking the senders once events are written."""

    @property
    def jobs(self) -> Mapping[str, WatchedJob]: ...
    @property
    def views(self) -> Mapping[str, JobView]: ...
    @property
    def config(self) -> Config: ...
    @property
    def sources(self) -> Mapping[str, JobSource]: ...
    @property
    def fetcher(self) -> Fetcher: ...
    @property
    def store(self) -> Store: ...

    def targets_for(
        self, names: Iterable[str], kind: str, source: str, job: WatchedJob | None = None
    ) -> list[Target]: ...

    def events_written(self) -> None: ...


log = logging.getLogger(__name__)

# Archives downloaded at once, each on its own (and in one of the fetcher's download
# slots): a slow one holds up no other.
AT_ONCE = 4
# A failed download is tried again after the job's poll interval (at least RETRY_FIRST),
# then twice as long each time, up to RETRY_MAX. A failure that cost a transfer (too
# big, too slow, too long, not a whole zip, a full disk) waits at least COSTLY_FIRST.
RETRY_FIRST = 1.0
COSTLY_FIRST = 60.0
RETRY_MAX = 900.0
# The head of a download's answer (status line and headers) must come within a tenth of
# archive_timeout, at least HEAD_AT_LEAST (or archive_timeout when shorter) and at most
# HEAD_WITHIN.
HEAD_WITHIN = 60.0
HEAD_AT_LEAST = 5.0


def head_within(archive_timeout: float) -> float:
    """Seconds the head of a download's answer may take (a head that trickles a byte at a
    time counts no body bytes for the rate rule: it is bounded here)."""
    return min(HEAD_WITHIN, max(archive_timeout / 10, HEAD_AT_LEAST), archive_timeout)


# A download slower than MIN_RATE bytes a second over RATE_WINDOW seconds is given up.
MIN_RATE = 10 * 1024
RATE_WINDOW = 60.0
# Room left on the disk beside an archive whose size is announced.
FREE_MARGIN = 64 * 2**20
# "No such archive" this many times in a row: it was downloaded elsewhere, or expired.
GONE_AFTER = 3


class Transfer:
    """One download's bounds, checked as it goes: its announced size against
    ``max_size`` and the disk's free space, the bytes so far against ``max_size``, and
    its pace (given up below ``MIN_RATE`` over any ``RATE_WINDOW``)."""

    def __init__(
        self,
        folder: Path,
        max_size: int,
        clock: Callable[[], float] = time.monotonic,
        min_rate: float = MIN_RATE,
        window: float = RATE_WINDOW,
    ) -> None:
        self.folder, self.max_size, self.clock = folder, max_size, clock
        self.min_rate, self.window = min_rate, window
        self.size = 0
        self._window_at = clock()
        self._window_size = 0

    def headers(self, headers: Mapping[str, str]) -> None:
        length = headers.get("Content-Length", "")
        if not length.isdigit():
            return
        announced = int(length)
        if announced > self.max_size:
            raise ArchiveProblem(
                f"the archive is {_size(announced)}, more than max_archive_size "
                f"({_size(self.max_size)}): not downloaded"
            )
        disk = os.statvfs(self.folder)
        free = disk.f_bavail * disk.f_frsize
        if announced + FREE_MARGIN > free:
            raise ArchiveProblem(
                f"the archive is {_size(announced)} and {self.folder} has {_size(free)} free: "
                "not downloaded"
            )

    def took(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._window_size += len(chunk)
        if self.size > self.max_size:
            raise ArchiveProblem(
                f"the download passed max_archive_size ({_size(self.max_size)}): given up"
            )
        now = self.clock()
        if now - self._window_at >= self.window:
            rate = self._window_size / (now - self._window_at)
            if rate < self.min_rate:
                raise ArchiveProblem(
                    f"the download was slower than {_size(int(self.min_rate))}/s for "
                    f"{format_duration(now - self._window_at)} ({rate:.0f} bytes/s): given up"
                )
            self._window_at, self._window_size = now, 0


def _size(size: int) -> str:
    for unit, factor in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}".replace(".0 ", " ")
    return f"{size} bytes"


def archive_file_name(name: str, archive_id: str) -> str:
    """``<name>-<archive_id>.zip`` with anything a path cannot hold replaced by ``_``."""

    def clean(text: str) -> str:
        kept = "".join(ch if ch.isalnum() or ch in " ._,+@=()-" else "_" for ch in text)
        return kept.strip(" .")[:120] or "_"

    return f"{clean(name)}-{clean(archive_id)}.zip"


def retry_delay(attempts: int, first: float, costly: bool = False) -> float:
    """Seconds before the next try after ``attempts`` failures: ``first`` (at least
    COSTLY_FIRST after a failure that cost a transfer), then doubling, capped, jittered."""
    return backoff(max(first, COSTLY_FIRST if costly else RETRY_FIRST), RETRY_MAX, attempts, 0.2)


class Archiver:
    """Downloads the archives due, one claim at a time per archive; ``run`` until stopped."""

    def __init__(
        self,
        watcher: Polled,
        claimer: Callable[[], Claimer | None],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.watcher = watcher
        self.store = watcher.store
        self.claimer = claimer
        self.clock = clock
        # The longest wait between passes (replicas shorten it: a dead one's claims lapse).
        self.max_sleep = 60.0
        self.kept = 0
        # Told of each archive kept or failed (metrics).
        self.on_result: Callable[[str], None] | None = None
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wake.set()

    async def keep_due(self, wait: bool = False) -> int:
        """Start a download of each archive due now, at most AT_ONCE at a time, each in a
        task of its own (an ending one wakes ``run`` to claim the next); return how many
        started. ``wait``: until none is left due (one pass of ``run --once``)."""
        started = 0
        while True:
            while len(self._running) < AT_ONCE:
                claimer = self.claimer()
                if claimer is None:
                    break  # this replica may not act now
                claims = await self.store.claim_archives(
                    self.clock(), claimer, AT_ONCE - len(self._running)
                )
                if not claims:
                    break
                for claim in claims:
                    task = asyncio.create_task(
                        self._keep(claim, claimer), name=f"archive-{claim.job_id}"
                    )
                    self._running.add(task)
                    task.add_done_callback(self._ended)
                started += len(claims)
            if not wait or not self._running:
                return started
            await asyncio.wait(set(self._running), return_when=asyncio.FIRST_COMPLETED)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("an archive download ended unforeseen: %s", f"{type(exc).__name__}: {exc}")

    async def _finish(self) -> None:
        """Let the downloads under way end; cancelled meanwhile (the shutdown's deadline
        passed), stop them: their claims are released, due again at the next start."""
        try:
            while self._running:
                await asyncio.wait(set(self._running))
        except asyncio.CancelledError:
            for task in self._running:
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)
            raise

    async def run(self, stopping: asyncio.Event) -> None:
        """Keep archives until ``stopping`` is set; a failing pass is tried again shortly."""
        failures = PassFailures(log, "archive pass", DATABASE_AWAY)
        try:
            while not stopping.is_set():
                self._wake.clear()
                try:
                    await self.keep_due()
                    next_at = await self.store.next_archive_at()
                except Exception as exc:
                    failures.failed(exc)
                    await first_of(self._wake, stopping, timeout=5.0)
                    continue
                failures.worked()
                timeout = self.max_sleep
                if next_at is not None and len(self._running) < AT_ONCE:
                    timeout = max(0.0, min(timeout, (next_at - self.clock()).total_seconds()))
                await first_of(self._wake, stopping, timeout=timeout)
        finally:
            await self._finish()

    async def _job(self, claim: ArchiveClaim) -> tuple[WatchedJob, JobView]:
        """The job an archive belongs to, also when it has left the config since."""
        job = self.watcher.jobs.get(claim.job_id)
        view = self.watcher.views.get(claim.job_id)
        if job is None or view is None:
            row = await self.store.job(claim.job_id)
            config = self.watcher.config
            job = job or WatchedJob(
                id=claim.job_id,
                name=row.name if row is not None else claim.job_id,
                source=claim.source,
                instance_id=row.instance_id if row is not None else "",
                notify=tuple(config.notifiers),
                poll_interval=config.poll_interval,
                origin="(no longer in the config)",
            )
            view = view or (await self.store.views([claim.job_id])).get(
                claim.job_id, JobView(claim.job_id)
            )
        return job, view

    async def _keep(self, claim: ArchiveClaim, claimer: Claimer) -> None:
        source = self.watcher.config.sources.get(claim.source)
        job, view = await self._job(claim)
        if source is None or source.archive_dir is None:
            why = f"source {claim.source} no longer has archive_dir: the archive is left to you"
            await self.store.archive_skipped(claim.job_id, claimer, why, self.clock())
            log.warning("job %s (%s): %s", job.name, job.id, why)
            return
        final = source.archive_dir / archive_file_name(job.name, claim.archive_id)
        try:
            kept = await self._obtain(source, job, claim, final)
        except asyncio.CancelledError:
            await asyncio.shield(self.store.release_archive(claim.job_id, claimer))
            raise
        except (FetchError, ArchiveProblem, OSError) as exc:
            await self._failed(claim, claimer, source, job, view, exc)
            return
        await self._kept(claim, claimer, job, view, kept)

    async def _obtain(
        self, source: Source, job: WatchedJob, claim: ArchiveClaim, final: Path
    ) -> Kept:
        """The archive whole at ``final``: found there, found whole in a ``.part`` file left
        by a run that stopped before renaming it, or downloaded now."""
        folder = final.parent
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        found = await asyncio.to_thread(_whole_zip, final)
        if found is not None:
            log.info("job %s (%s): archive %s is already whole at %s", job.name, job.id,
                     claim.archive_id, final)  # fmt: skip
            return found
        partial = folder / f".{final.name}.part"
        found = await asyncio.to_thread(_whole_zip, partial)  # a symlink: ArchiveProblem
        if found is not None:
            log.info("job %s (%s): archive %s was downloaded whole before a stop: keeping it",
                     job.name, job.id, claim.archive_id)  # fmt: skip
            await asyncio.to_thread(_put_in_place, partial, final)
            return replace(found, path=str(final))
        await asyncio.to_thread(partial.unlink, True)
        return await self._download(source, job, claim, partial, final)

    async def _download(
        self, source: Source, job: WatchedJob, claim: ArchiveClaim, partial: Path, final: Path
    ) -> Kept:
        from jobherald.sources.base import ArchiveSource

        keeper = self.watcher.sources.get(source.name)
        if not isinstance(keeper, ArchiveSource):
            raise ArchiveProblem(f"source {source.name} ({source.type}) keeps no archives")
        digest = hashlib.sha256()
        transfer = Transfer(partial.parent, source.max_archive_size)
        handle: IO[bytes] = await asyncio.to_thread(_open_new, partial)

        async def sink(chunk: bytes) -> None:
            transfer.took(chunk)
            digest.update(chunk)
            await asyncio.to_thread(handle.write, chunk)

        loop = asyncio.get_running_loop()
        ends = loop.time() + source.archive_timeout
        heard: list[bool] = []
        try:
            log.info("job %s (%s): downloading archive %s", job.name, job.id, claim.archive_id)
            try:
                # The answer's head must come within HEAD_WITHIN (a head trickled a byte
                # at a time counts no body bytes for the rate rule); the whole download,
                # then, within archive_timeout.
                async with asyncio.timeout(head_within(source.archive_timeout)) as scope:

                    def head(headers: Mapping[str, str]) -> None:
                        heard.append(True)
                        scope.reschedule(ends)
                        transfer.headers(headers)

                    response = await keeper.download_archive(
                        self.watcher.fetcher, job, claim.archive_id, sink, head
                    )
            except TimeoutError:
                if not heard:
                    within = format_duration(head_within(source.archive_timeout))
                    raise ArchiveProblem(f"no answer's head within {within}: given up") from None
                raise ArchiveProblem(
                    f"the download took longer than archive_timeout "
                    f"({format_duration(source.archive_timeout)}): given up"
                ) from None
            size = transfer.size
            await asyncio.to_thread(_close_synced, handle)
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) != size:
                raise ArchiveProblem(f"the download ended after {size} of {length} bytes")
            if size == 0:
                raise ArchiveProblem("the download is empty")
            problem = await asyncio.to_thread(
                _zip_problem,
                partial,
                source.max_archive_size,
                time.monotonic() + max(0.0, ends - loop.time()),
            )
            if problem is not None:
                raise ArchiveProblem(f"the download is not a whole zip archive: {problem}")
            await asyncio.to_thread(_put_in_place, partial, final)
        except BaseException:
            handle.close()
            await asyncio.shield(asyncio.to_thread(partial.unlink, True))
            raise
        return Kept(str(final), size, digest.hexdigest())

    async def _kept(
        self, claim: ArchiveClaim, claimer: Claimer, job: WatchedJob, view: JobView, kept: Kept
    ) -> None:
        now = self.clock()
        event = Event(EventKind.ARCHIVED, f"archive {claim.archive_id} kept at {kept.path}")
        new_events = self._events(job, view, event, now, kept=kept)
        if await self.store.archive_kept(claim.job_id, kept, now, claimer.name, new_events):
            self.kept += 1
            if self.on_result is not None:
                self.on_result("kept")
            log.info(
                "job %s (%s): archived: %s (%d bytes, sha256 %s)",
                job.name,
                job.id,
                kept.path,
                kept.size,
                kept.sha256,
            )
            if new_events:
                self.watcher.events_written()

    async def _failed(
        self,
        claim: ArchiveClaim,
        claimer: Claimer,
        source: Source,
        job: WatchedJob,
        view: JobView,
        exc: Exception,
    ) -> None:
        now = self.clock()
        attempts = claim.attempts + 1
        if isinstance(exc, FetchError):
            what = exc.detail
        elif isinstance(exc, OSError):
            what = (
                f"{exc.strerror or type(exc).__name__}{f': {exc.filename}' if exc.filename else ''}"
            )
        else:
            what = str(exc)
        gone = isinstance(exc, FetchError) and exc.not_found
        give_up = gone and attempts >= GONE_AFTER
        error_since = claim.error_since or now
        detail = f"cannot download archive {claim.archive_id}: {what}"
        if gone:
            detail += (
                " (an export's archive can be downloaded once: it may have been taken already)"
            )
        events: list[NewEvent] = []
        notified = claim.error_notified
        failing_for = (now - error_since).total_seconds()
        at_once = isinstance(exc, UntrustedFile)
        if not notified and (give_up or at_once or failing_for >= job.rules.error_after):
            notified = True
            text = f"{detail}; tried {attempts} times over {format_duration(failing_for)}"
            if give_up:
                text += "; given up"
            events = self._events(
                job, replace(view, error=detail), Event(EventKind.ERROR, text), now, about=True
            )
        costly = getattr(exc, "costly", False) or (
            isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        )
        delay = retry_delay(attempts, job.poll_interval, costly)
        retry_at = None if give_up else now + timedelta(seconds=delay)
        await self.store.archive_failed(
            claim.job_id, claimer, detail, retry_at, error_since, notified, events, now
        )
        if self.on_result is not None:
            self.on_result("failed")
        if retry_at is None:
            log.error("job %s (%s): %s; given up", job.name, job.id, detail)
        else:
            log.warning(
                "job %s (%s): %s; trying again at %s",
                job.name,
                job.id,
                detail,
                retry_at.isoformat(timespec="seconds"),
            )
        if events:
            self.watcher.events_written()

    def _events(
        self,
        job: WatchedJob,
        view: JobView,
        event: Event,
        now: datetime,
        *,
        kept: Kept | None = None,
        about: bool = False,
    ) -> list[NewEvent]:
        from jobherald.payload import event_payload

        targets = self.watcher.targets_for(job.notify, event.kind.value, job.source, job)
        if not targets:
            return []
        advice = (
            f"Check that {job.source}'s archive_dir is writable and that the archive "
            "still exists upstream; jobherald keeps trying."
            if about
            else None
        )
        payload = event_payload(
            event, job, view, view, now, advice, archive=kept, about="archive" if about else None
        )
        return [NewEvent(event.kind.value, payload, targets)]


def _trusted(path: Path) -> bool:
    """Whether something is at ``path`` (False: nothing); ArchiveProblem when it is a
    symlink or anything but a regular file (never followed, never trusted)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise UntrustedFile(f"{path} is a symlink: refused (remove it)")
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedFile(f"{path} is not a regular file: refused (remove it)")
    return True


def _open_file(path: Path) -> IO[bytes]:
    """A regular file in archive_dir, opened for reading without following a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UntrustedFile(f"{path} is a symlink: refused (remove it)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UntrustedFile(f"{path} is not a regular file: refused (remove it)")
    return os.fdopen(fd, "rb")


def _open_new(path: Path) -> IO[bytes]:
    """A new file (it must not exist, a symlink least of all), for writing."""
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
    except FileExistsError:
        raise UntrustedFile(f"{path} appeared while downloading: refused") from None
    return os.fdopen(fd, "wb")


def _close_synced(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def _zip_problem(
    path: Path, max_size: int | None = None, deadline: float | None = None
) -> str | None:
    """Why ``path`` is not a whole zip (every member read and checked against its
    checksum), or None. Bounded: members that would unpack to more than ``max_size`` are
    refused unread, and reading stops at ``deadline`` (``time.monotonic()``)."""
    try:
        with _open_file(path) as handle, zipfile.ZipFile(handle) as archive:
            members = archive.infolist()
            unpacked = sum(member.file_size for member in members)
            if max_size is not None and unpacked > max_size:
                return (
                    f"unpacked it would be {_size(unpacked)}, more than max_archive_size "
                    f"({_size(max_size)})"
                )
            for member in members:
                # A member reads no more than its stated size, and a wrong checksum at
                # its end raises BadZipFile.
                with archive.open(member) as stream:
                    while stream.read(2**20):
                        if deadline is not None and time.monotonic() > deadline:
                            return "checking it took longer than archive_timeout"
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    except ArchiveProblem:
        raise
    except (OSError, RuntimeError) as exc:  # RuntimeError: an encrypted member
        return str(exc) or type(exc).__name__
    return None


def _whole_zip(path: Path) -> Kept | None:
    """Size and sha256 of a whole zip at ``path``; None if it is missing or not whole;
    ArchiveProblem when a symlink or something else than a file is there."""
    if not _trusted(path) or os.lstat(path).st_size == 0 or _zip_problem(path) is not None:
        return None
    digest = hashlib.sha256()
    size = 0
    with _open_file(path) as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return Kept(str(path), size, digest.hexdigest())


def _put_in_place(partial: Path, final: Path) -> None:
    """Rename a whole file into place, and make the rename itself durable."""
    with _open_file(partial) as handle:
        os.fsync(handle.fileno())
    os.replace(partial, final)
    folder = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
