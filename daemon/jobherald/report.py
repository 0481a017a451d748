"""What is known about the jobs, as `status --json`, `history --json` and `replicas --json`
show it: the same objects for the command line and the daemon's HTTP API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobherald.config import Config
    from jobherald.store import Store

TERMINAL = ("succeeded", "failed", "lost")


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def archive_fields(row: Any) -> dict[str, Any]:
    """An export's archive as `status --json` shows it: where it is kept, or why not."""
    if row is None:
        return dict.fromkeys(
            ("archive_state", "archive_path", "archive_size", "archive_sha256", "archive_error")
        )
    return {
        "archive_state": row.state,
        "archive_path": row.path,
        "archive_size": row.size,
        "archive_sha256": row.sha256,
        "archive_error": row.last_error if row.state != "kept" else None,
    }


def _blank(job_id: str, name: str, source: str) -> dict[str, Any]:
    return {
        "id": job_id,
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
    }


async def job_rows(
    cfg: Config, store: Store | None, now: datetime | None = None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every known job as `status --json` shows it, and the deliveries counted by state.
    ``store`` None: no database yet (every configured job is pending)."""
    from jobherald.model import typical_duration
    from jobherald.schedule.replicas import owner
    from jobherald.schedule.watcher import job_eta
    from jobherald.store import reasons_of, view_of

    now = now or datetime.now(UTC)
    rows: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    live: list[str] = []
    configured = {j.id for j in cfg.jobs}
    if store is not None:
        members, _ = await store.members()
        live = [m.name for m in members if m.live]
        stored = await store.status()
        running = [r.id for r in stored if r.state == "running"]
        samples = await store.progress_samples(running) if running else {}
        durations = await store.finished_durations()
        by_key: dict[tuple[str, str], list[tuple[str, float]]] = {}
        for job_id, (name, source, seconds) in durations.items():
            by_key.setdefault((name, source), []).append((job_id, seconds))
        for row in stored:
            view = view_of(row)
            others = [d for i, d in by_key.get((row.name, row.source), ()) if i != row.id]
            eta = job_eta(view, samples.get(row.id, ()), row.last_polled_at, now)
            rows[row.id] = {
                **_blank(row.id, row.name, row.source),
                "status": row.state,
                "raw_status": row.raw_status,
                "progress": row.progress,
                "archive_id": row.archive_id,
                "link": row.link,
                "reasons": reasons_of(row),
                "last_polled_at": iso(row.last_polled_at),
                "last_changed_at": iso(row.last_changed_at),
                "error": row.error,
                "eta": iso(eta),
                "typical_duration": typical_duration(others),
            }
        for job_id, archive in (await store.archive_rows()).items():
            if job_id in rows:
                rows[job_id].update(archive_fields(archive))
        counts = await store.delivery_counts()
    for job in cfg.jobs:
        rows.setdefault(job.id, _blank(job.id, job.name, job.source))
    for item in rows.values():
        # The replica polling it now: the same rendezvous hash every replica computes.
        if item["id"] in configured and item["status"] not in TERMINAL:
            item["owner"] = owner(item["id"], live)
    return list(rows.values()), counts


async def history_rows(store: Store, job_id: str) -> list[dict[str, Any]] | None:
    """The job's transitions as `history --json` shows them (None: no such job stored)."""
    if await store.job(job_id) is None:
        return None
    items: list[dict[str, Any]] = [
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


async def replica_rows(store: Store) -> list[dict[str, Any]]:
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
