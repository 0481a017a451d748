"""What a message about an event may show: the payload written with the event, frozen at
the time it happened (the renderer and templates read it; nothing recomputes it)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from jobherald.model import Event, JobView, SourceHealth, duration_seconds

if TYPE_CHECKING:
    from jobherald.config import WatchedJob


class Kept(Protocol):
    """An archive kept on disk (the store's): where, how big, its sha256."""

    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


class EventPart(TypedDict, total=False):
    """What happened: its kind, when, what it was, what to do about it."""

    kind: str
    at: str
    detail: str
    advice: str | None
    # What the event is about when it is not the job's polling ("archive").
    about: str


class JobPart(TypedDict, total=False):
    """The job an event is about, as it stood then."""

    id: str
    key: str
    name: str
    source: str
    instance_id: str
    type: str | None
    state: str
    previous_state: str
    raw_status: str | None
    progress: float | None
    archive_id: str | None
    reasons: list[dict[str, Any]]
    begin_time: str | None
    end_time: str | None
    duration: float | None
    error: str | None
    link: str | None
    archive_path: str | None
    archive_size: int | None
    archive_sha256: str | None
    eta: str | None
    typical_duration: float | None


class SourcePart(TypedDict, total=False):
    """The source an event is about (its credentials, its health), as it stood then."""

    name: str
    endpoint: str
    auth: str
    error: str | None
    error_since: str | None


class EventPayload(TypedDict, total=False):
    """One event's payload: what the outbox keeps, the renderer and templates read. A job's
    event has ``job``, a source's (credentials, outage) ``source``. Every key is optional
    to its readers: payloads written by older versions lack newer keys, so readers
    ``get`` them; the writers here give every one."""

    event: EventPart
    job: JobPart
    source: SourcePart


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
) -> EventPayload:
    """Everything a message about this event may show, frozen at the time it happened.

    ``archive`` is the job's kept export archive; ``about`` says what an event is about
    when it is not the job's polling (``archive``: keeping its archive)."""
    said: EventPart = {
        "kind": event.kind.value,
        "at": at.isoformat(),
        "detail": event.detail,
        "advice": advice,
    }
    if about:
        said["about"] = about
    return {
        "event": said,
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


def source_payload(
    event: Event,
    name: str,
    endpoint: str,
    auth: str,
    health: SourceHealth,
    error: str | None,
    at: datetime,
    advice: str | None,
) -> EventPayload:
    """Everything a message about a source's event may show (bad credentials, an outage,
    its recovery), frozen at the time it happened."""
    return {
        "event": {
            "kind": event.kind.value,
            "at": at.isoformat(),
            "detail": event.detail,
            "advice": advice,
        },
        "source": {
            "name": name,
            "endpoint": endpoint,
            "auth": auth,
            "error": health.error or error,
            "error_since": _iso(health.error_since),
        },
    }
