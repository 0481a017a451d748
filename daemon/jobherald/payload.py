"""What a message about an event may show: the payload written with the event, frozen at
the time it happened (the renderer and templates read it; nothing recomputes it)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from jobherald.config import WatchedJob
from jobherald.model import Event, JobView, duration_seconds

if TYPE_CHECKING:
    from jobherald.store import Kept


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def event_payload(
    event: Event,
    job: WatchedJob,
    before: JobView,
    after: JobView,
    at: datetime,
    advice: str | None,
    archive: Kept | None = None,
    about: str | None = None,
    eta: datetime | None = None,
    typical: float | None = None,
) -> dict[str, Any]:
    """Everything a message about this event may show, frozen at the time it happened.

    ``archive`` is the job's kept export archive; ``about`` says what an event is about
    when it is not the job's polling (``archive``: keeping its archive)."""
    return {
        "event": {
            "kind": event.kind.value,
            "at": at.isoformat(),
            "detail": event.detail,
            "advice": advice,
            **({"about": about} if about else {}),
        },
        "job": {
            "id": job.upstream_id,
            "key": job.id,
            "name": job.name,
            "source": job.source,
            "instance_id": job.instance_id,
            "type": after.type,
            "state": after.state.value,
            "previous_state": before.state.value,
            "raw_status": after.raw_status,
            "progress": after.progress,
            "archive_id": after.archive_id,
            "reasons": [r.as_dict() for r in after.reasons],
            "begin_time": _iso(after.begin_time),
            "end_time": _iso(after.end_time),
            "duration": duration_seconds(after),
            "error": after.error,
            "link": after.link,
            "archive_path": archive.path if archive else None,
            "archive_size": archive.size if archive else None,
            "archive_sha256": archive.sha256 if archive else None,
            "eta": _iso(eta),
            "typical_duration": typical,
        },
    }
