"""What is known about the jobs, as `status --json`, `history --json` and `replicas --json`
show it: the same objects for the command line and the daemon's HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from jobherald.timing import iso

if TYPE_CHECKING:
    from jobherald.config import Config, WatchedJob
    from jobherald.store import JobFilter, Store


class ArchiveFields(TypedDict):
    """An export's archive as `status --json` shows it: where it is kept, or why not."""

    archive_state: str | None
    archive_path: str | None
    archive_size: int | None
    archive_sha256: str | None
    archive_error: str | None


class JobStatus(ArchiveFields):
    """One job as `status --json`, `/api/jobs` and the status page show it."""

    id: str
    # What the job is stored and asked for under: its id, or "source/id..." when another
    # configured job has the same id.
    key: str
    name: str
    source: str
    status: str
    raw_status: str | None
    progress: float | None
    archive_id: str | None
    link: str | None
    reasons: list[dict[str, Any]]
    last_polled_at: str | None
    last_changed_at: str | None
    error: str | None
    # The replica polling it (None: none, or it is finished).
    owner: str | None
    eta: str | None
    typical_duration: float | None
    # Seconds between its polls now (longer than configured under a request budget).
    interval: float | None
    # It left the config: its history is kept (for keep_history), it is no longer polled.
    removed: bool


# One transition as `history --json` shows it ("from" is a keyword: hence this form); the
# archive kept (or given up) is an entry of its own, with ``event`` and its fields.
HistoryEntry = TypedDict(
    "HistoryEntry",
    {
        "at": str | None,
        "from": str | None,
        "to": str,
        "progress": float | None,
        "raw_status": str | None,
        "event": NotRequired[str],
        "archive_path": NotRequired[str | None],
        "archive_size": NotRequired[int | None],
        "archive_sha256": NotRequired[str | None],
        "archive_error": NotRequired[str | None],
    },
)


class ReplicaStatus(TypedDict):
    """One replica as `replicas --json` shows it."""

    name: str
    host: str
    pid: int
    started_at: str | None
    heartbeat_at: str | None
    jobs: int
    live: bool


def archive_fields(row: Any) -> ArchiveFields:
    """An export's archive as `status --json` shows it: where it is kept, or why not."""
    if row is None:
        return {
            "archive_state": None,
            "archive_path": None,
            "archive_size": None,
            "archive_sha256": None,
            "archive_error": None,
        }
    return {
        "archive_state": row.state,
        "archive_path": row.path,
        "archive_size": row.size,
        "archive_sha256": row.sha256,
        "archive_error": row.last_error if row.state != "kept" else None,
    }


def _blank(
    key: str, name: str, source: str, interval: float | None = None, remote: str | None = None
) -> JobStatus:
    return {
        "id": remote or key,
        # What the job is stored and asked for under: its id, or "source/id..." when
        # another configured job has the same id.
        "key": key,
        "name": name,
        "source": source,
        "status": "pending",
        "raw_status": None,
        "progress": None,
        "archive_id": None,
        "link": None,
        "reasons": [],
        "last_polled_at": None,
        "last_changed_at": None,
        "error": None,
        "owner": None,
        **archive_fields(None),
        "eta": None,
        "typical_duration": None,
        "interval": interval,
        "removed": False,
    }


_INDEX: tuple[Config, dict[str, WatchedJob]] | None = None


def configured_jobs(cfg: Config) -> dict[str, WatchedJob]:
    """The config's jobs by key (made once per config, not per request)."""
    global _INDEX
    if _INDEX is None or _INDEX[0] is not cfg:
        _INDEX = (cfg, {j.id: j for j in cfg.jobs})
    return _INDEX[1]


def index_jobs(cfg: Config, by_key: dict[str, WatchedJob]) -> None:
    """Take a daemon's own index of the config's jobs (the first page served then builds
    none: 100,000 jobs would take a tenth of a second and 4 MB more)."""
    global _INDEX
    _INDEX = (cfg, by_key)


@dataclass(frozen=True, slots=True)
class _Beside:
    """What rows are shown with beside their own columns, read once for a whole listing:
    the live replicas, the jobs still polled per source (for rate-limited sources), and,
    when given, every archive (else per chunk)."""

    live: list[str]
    active: dict[str, int]
    archives: dict[str, Any] | None = None


async def _beside(cfg: Config, store: Store, whole: bool = False) -> _Beside:
    members, _ = await store.members()
    limited = any(src.max_rate is not None for src in cfg.sources.values())
    return _Beside(
        live=[m.name for m in members if m.live],
        active=await store.active_per_source() if limited else {},
        archives=await store.archive_rows() if whole else None,
    )


async def rows_of(
    cfg: Config,
    store: Store,
    stored: Sequence[Any],
    now: datetime | None = None,
    beside: _Beside | None = None,
) -> list[JobStatus]:
    """These stored jobs (rows of ``store.listing.LIST_COLUMNS``: each carries its
    recent progress) as `status --json` shows them; what each needs beside its row
    (typical durations, archives) is read for these jobs only, unless ``beside`` holds it
    already."""
    from jobherald.eta import running_eta
    from jobherald.model import owner, typical_duration
    from jobherald.store import reasons_of
    from jobherald.store.jobs import TERMINAL_STATES
    from jobherald.store.listing import LIST_COLUMNS, recorded_progress

    if not stored:
        return []
    width = len(LIST_COLUMNS)
    when = datetime.fromisoformat
    now = now or datetime.now(UTC)
    beside = beside or await _beside(cfg, store)
    live, active = beside.live, beside.active
    durations = await store.durations_of({(r.name, r.source) for r in stored})
    archives = beside.archives
    if archives is None:
        archives = await store.archive_rows([r.id for r in stored])
    configured = configured_jobs(cfg)
    rates = {name: s.max_rate for name, s in cfg.sources.items() if s.max_rate is not None}
    none = archive_fields(None)
    rows: list[JobStatus] = []
    for row in stored:
        # Unpacked at once by position: reading a row's columns by name, one at a time,
        # cost more than all the rest of its shaping.
        (
            key,
            name,
            source,
            remote_id,
            _created_at,
            state,
            raw_status,
            progress,
            archive_id,
            link,
            reasons,
            error,
            polled_at,
            changed_at,
            begin_time,
            running_since,
            progress_changed_at,
            watched,
            recent,
        ) = row[:width]
        eta = None
        if state == "running" and progress is not None:
            # The times come as text (see LIST_COLUMNS): made datetimes for an ETA only.
            start = begin_time or running_since
            eta = running_eta(
                None if start is None else when(start),
                progress,
                None if progress_changed_at is None else when(progress_changed_at),
                recorded_progress(recent),
                None if polled_at is None else when(polled_at),
                now,
            )
        typical = None
        durations_here = durations.get((name, source))
        if durations_here:
            others = [d for i, d in durations_here if i != key]
            typical = typical_duration(others) if others else None
        job = configured.get(key)
        who = interval = None
        if job is not None:
            if state not in TERMINAL_STATES:
                # The replica polling it: the same rendezvous hash every replica computes.
                who = owner(key, live)
            interval = job.poll_interval
            if source in rates:
                # Less often when the source's max_rate cannot give every active job of
                # the source its interval.
                interval = max(interval, active.get(source, 0) / rates[source])
        kept = archives.get(key)
        rows.append(
            {
                "id": remote_id or key,
                "key": key,
                "name": name,
                "source": source,
                "status": state,
                "raw_status": raw_status,
                # Four digits: what the upstream said (0.167), not its float's tail.
                "progress": None if progress is None else round(progress, 4),
                "archive_id": archive_id,
                "link": link,
                "reasons": reasons_of(reasons),
                "last_polled_at": polled_at,
                "last_changed_at": changed_at,
                "error": error,
                "owner": who,
                **(none if kept is None else archive_fields(kept)),
                "eta": iso(eta),
                "typical_duration": typical,
                "interval": interval,
                "removed": not watched,
            }
        )
    return rows


async def page_rows(
    cfg: Config,
    store: Store,
    wanted: JobFilter,
    limit: int,
    after: tuple[Any, ...] | None = None,
    *,
    by_state: bool = True,
) -> tuple[list[JobStatus], tuple[Any, ...] | None]:
    """One page of jobs as `status --json` shows them, and where the next page starts
    (None: this was the last)."""
    from jobherald.store.listing import sort_key

    stored = await store.page(wanted, limit + 1, after, by_state=by_state)
    more = len(stored) > limit
    stored = stored[:limit]
    rows = await rows_of(cfg, store, stored)
    return rows, (sort_key(stored[-1], by_state) if more and stored else None)


async def iter_rows(
    cfg: Config, store: Store | None, wanted: JobFilter | None = None, chunk: int = 5000
) -> AsyncIterator[list[JobStatus]]:
    """Every known job as `status --json` shows it, in the order they were registered,
    read and given ``chunk`` at a time (memory stays flat however many there are; each
    read costs a few hand-offs to the database's thread, fewer with bigger chunks);
    configured jobs the database does not know yet come last, as pending."""
    from jobherald.store import JobFilter

    wanted = wanted or JobFilter()
    # Unfiltered, the listing is every stored job (or every watched one): what it
    # showed is what is known.
    everything = wanted.state is None and wanted.source is None and not wanted.text
    seen: set[str] = set()
    if store is not None:
        from jobherald.store.listing import sort_key

        beside = await _beside(cfg, store, whole=True)

        # One chunk after the other: reading the next one while this one is shaped was
        # slower (the database's thread and this one take turns at the interpreter's
        # lock, row by row).
        after: tuple[Any, ...] | None = None
        while True:
            stored = await store.page(wanted, chunk + 1, after, by_state=False)
            more = len(stored) > chunk
            stored = stored[:chunk]
            if everything:
                seen.update(row[0] for row in stored)
            if stored:
                yield await rows_of(cfg, store, stored, beside=beside)
            if not (more and stored):
                break
            after = sort_key(stored[-1], False)
    if wanted.text or (wanted.state or "pending") != "pending" or wanted.removed:
        return
    known = seen if everything or store is None else await store.job_ids()
    blank = [
        _blank(job.id, job.name, job.source, job.poll_interval, job.remote)
        for job in cfg.jobs
        if job.id not in known and wanted.source in (None, job.source)
    ]
    for at in range(0, len(blank), chunk):
        yield blank[at : at + chunk]


async def one_row(cfg: Config, store: Store | None, job_id: str) -> JobStatus | None:
    """One job as `status --json` shows it (None: no such job)."""
    row = await store.shown(job_id) if store is not None else None
    if row is not None:
        (item,) = await rows_of(cfg, store, [row])  # type: ignore[arg-type]
        return item
    job = configured_jobs(cfg).get(job_id)
    return (
        _blank(job.id, job.name, job.source, job.poll_interval, job.remote)
        if job is not None
        else None
    )


async def history_rows(store: Store, job_id: str) -> list[HistoryEntry] | None:
    """The job's transitions as `history --json` shows them (None: no such job stored)."""
    if await store.job(job_id) is None:
        return None
    items: list[HistoryEntry] = [
        {
            "at": iso(t.at),
            "from": t.from_state,
            "to": t.to_state,
            "progress": t.progress,
            "raw_status": t.raw_status,
        }
        for t in await store.history(job_id)
    ]
    archive = (await store.archive_rows([job_id])).get(job_id)
    if archive is not None and archive.state in ("kept", "failed"):
        # The archive kept (or given up): an entry of its own, the state unchanged.
        items.append(
            {
                "at": iso(archive.done_at),
                "from": "succeeded",
                "to": "succeeded",
                "progress": None,
                "raw_status": None,
                "event": "archived" if archive.state == "kept" else "archive failed",
                "archive_path": archive.path,
                "archive_size": archive.size,
                "archive_sha256": archive.sha256,
                "archive_error": archive.last_error if archive.state != "kept" else None,
            }
        )
    return items


async def replica_rows(store: Store) -> list[ReplicaStatus]:
    """The replicas as `replicas --json` shows them."""
    members, _ = await store.members()
    return [
        {
            "name": m.name,
            "host": m.host,
            "pid": m.pid,
            "started_at": iso(m.started_at),
            "heartbeat_at": iso(m.heartbeat_at),
            "jobs": m.jobs if m.live else 0,
            "live": m.live,
        }
        for m in members
    ]
