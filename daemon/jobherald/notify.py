"""Notifications: messages from events, and the dispatcher that empties the outbox.

This module knows apprise and the outbox; it never talks to a job source.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from jobherald.config import Notifier, Source
from jobherald.errors import FetchError
from jobherald.model import EventKind, format_duration
from jobherald.store import Delivery, Store

log = logging.getLogger(__name__)

RETRY_FIRST = 30.0
RETRY_MAX = 3600.0
RETRY_FOR = timedelta(hours=24)
SEND_CONCURRENCY = 8

_NOTIFY_TYPES = {
    "succeeded": "success",
    "failed": "failure",
    "stalled": "warning",
    "lost": "warning",
    "error": "warning",
}


@dataclass(frozen=True, slots=True)
class Message:
    title: str
    body: str
    notify_type: str


def notify_type(kind: str) -> str:
    return _NOTIFY_TYPES.get(kind, "info")


def advice(kind: EventKind, error: FetchError | None, source: Source) -> str | None:
    """What a person can do about an event, or None when nothing is needed."""
    if kind is EventKind.STALLED:
        return "Look at the job in the ROMA Connect console; jobherald keeps watching it."
    if kind is EventKind.LOST:
        return (
            "The job may have been deleted, or its id or instance_id is wrong. "
            "jobherald has stopped polling it."
        )
    if kind is not EventKind.ERROR or error is None:
        return None
    if error.source_wide:
        return _auth_advice(error, source)
    if error.kind in ("timeout", "connection"):
        return f"Check that {source.endpoint} is reachable from this machine."
    if error.kind == "body":
        return f"{source.endpoint} does not answer like ROMA Connect's job API: check endpoint."
    if error.status == 403:
        return "Check that the account may read this instance's asset jobs."
    if error.status in (400, 404):
        return "Check the job's id and instance_id."
    return "The service is failing; jobherald keeps trying, less often while it fails."


def _auth_advice(error: FetchError, source: Source) -> str:
    where = f"source {source.name}"
    method = source.auth.method
    if method == "password":
        if error.kind == "auth" and error.retryable:
            return f"Check that iam_endpoint of {where} is reachable from this machine."
        return f"Token rejected by IAM: check user, password_file, domain and project of {where}."
    if method == "aksk":
        return f"Signature rejected: check ak and sk_file of {where}, and this machine's clock."
    return (
        f"Token rejected: put a new token in token_file (or token) of {where}; "
        "IAM tokens expire after 24 hours."
    )


def render(kind: str, event_id: str, payload: Mapping[str, Any]) -> Message:
    """The title, body and apprise notify type of one event."""
    event = payload.get("event", {})
    if payload.get("job") is None:
        return _render_source(kind, event_id, event, payload.get("source") or {})
    job = payload["job"]
    name = job.get("name") or job.get("id")
    lines = [_headline(kind, name, event), f"id: {job.get('id')}"]
    if job.get("type"):
        lines.append(f"type: {job['type']}")
    if job.get("source"):
        lines.append(f"source: {job['source']}")
    if kind in ("started", "progress", "stalled") and job.get("progress") is not None:
        lines.append(f"progress: {job['progress'] * 100:.0f}%")
    duration = format_duration(job.get("duration"))
    if duration:
        lines.append(f"duration: {duration}")
    if job.get("archive_id") and kind == "succeeded":
        lines.append(f"archive_id: {job['archive_id']}")
    if kind == "error" and job.get("error"):
        lines.append(f"error: {job['error']}")
    reasons = job.get("reasons") or []
    if kind == "failed":
        if reasons:
            lines.append(f"reasons ({len(reasons)}):")
            lines.extend(f"- {_reason_line(r)}" for r in reasons)
        else:
            lines.append("reasons: none given by the service")
    if event.get("advice"):
        lines += ["", str(event["advice"])]
    lines += ["", f"event {event_id}"]
    return Message(f"{name} {kind}", "\n".join(lines), notify_type(kind))


def _headline(kind: str, name: str, event: Mapping[str, Any]) -> str:
    detail = event.get("detail")
    if kind in ("succeeded", "failed", "started") or not detail:
        return f"Job {name} {kind}."
    if kind == "error":
        return f"Polling job {name} fails: {detail}."
    if kind == "recovered":
        return f"Polling job {name} works again: {detail}."
    if kind == "lost":
        return f"Job {name} is lost: {detail}."
    if kind == "progress":
        return f"Job {name}: {detail}."
    return f"Job {name} {kind}: {detail}."


def _render_source(
    kind: str, event_id: str, event: Mapping[str, Any], source: Mapping[str, Any]
) -> Message:
    name = source.get("name", "?")
    if kind == "recovered":
        lines = [f"Source {name} works again: {event.get('detail')}."]
    else:
        lines = [f"Source {name}: {event.get('detail')}.", f"error: {source.get('error')}"]
    lines.append(f"endpoint: {source.get('endpoint')}")
    lines.append(f"auth: {source.get('auth')}")
    if event.get("advice"):
        lines += ["", str(event["advice"])]
    lines += ["", f"event {event_id}"]
    return Message(f"source {name} {kind}", "\n".join(lines), notify_type(kind))


def _reason_line(reason: Mapping[str, Any]) -> str:
    where = " ".join(str(reason[k]) for k in ("resource_type", "resource_name") if reason.get(k))
    what = ": ".join(str(reason[k]) for k in ("error_code", "error_msg") if reason.get(k))
    if where and what:
        return f"{where}: {what}"
    return where or what or "(no details)"


def retry_delay(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failures: doubling, capped, jittered."""
    base = min(RETRY_FIRST * (2 ** max(attempts - 1, 0)), RETRY_MAX)
    return float(base * random.uniform(0.8, 1.2))


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Sender:
    """One apprise object per notifier, built once."""

    def __init__(self, notifiers: Mapping[str, Notifier]) -> None:
        import apprise

        self._apprise: dict[str, Any] = {}
        for name, notifier in notifiers.items():
            obj = apprise.Apprise()
            for url in notifier.urls:
                obj.add(url)
            self._apprise[name] = obj

    def __contains__(self, name: str) -> bool:
        return name in self._apprise

    async def send(self, notifier: str, message: Message) -> bool:
        obj = self._apprise[notifier]
        result = await obj.async_notify(
            body=message.body, title=message.title, notify_type=message.notify_type
        )
        return bool(result)

    def describe(self, notifier: str) -> list[str]:
        """The notifier's URLs with secrets masked."""
        return [str(server.url(privacy=True)) for server in self._apprise[notifier]]


class Dispatcher:
    """Sends due outbox rows and marks each; never raises for one bad delivery."""

    def __init__(
        self,
        store: Store,
        notifiers: Mapping[str, Notifier],
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.store = store
        self.sender = Sender(notifiers)
        self.clock = clock
        self._wake = asyncio.Event()
        self._limit = asyncio.Semaphore(SEND_CONCURRENCY)

    def wake(self) -> None:
        self._wake.set()

    async def deliver_due(self) -> int:
        """One pass over due deliveries; returns how many were tried."""
        tried = 0
        while True:
            due = await self.store.due_deliveries(self.clock())
            if not due:
                return tried
            await asyncio.gather(*(self._deliver(d) for d in due))
            tried += len(due)

    async def _deliver(self, delivery: Delivery) -> None:
        async with self._limit:
            if delivery.notifier not in self.sender:
                await self.store.mark_failed(
                    delivery.id, f"notifier {delivery.notifier!r} is no longer configured", None
                )
                log.warning(
                    "dropped %s event %s for notifier %s: no longer configured",
                    delivery.kind,
                    delivery.event_id,
                    delivery.notifier,
                )
                return
            message = render(delivery.kind, delivery.event_id, delivery.payload)
            try:
                ok = await self.sender.send(delivery.notifier, message)
                error = "" if ok else "the service did not accept the message"
            except Exception as exc:  # a plugin failing must not stop the others
                ok, error = False, f"{type(exc).__name__}: {exc}"
            now = self.clock()
            job = delivery.payload.get("job", {})
            if ok:
                await self.store.mark_delivered(delivery.id, now)
                log.info(
                    "delivered %s of job %s (%s) to %s",
                    delivery.kind,
                    job.get("name"),
                    job.get("id"),
                    delivery.notifier,
                )
                return
            created = datetime.fromisoformat(delivery.payload["event"]["at"])
            retry_at = now + timedelta(seconds=retry_delay(delivery.attempts + 1))
            if retry_at - created > RETRY_FOR:
                await self.store.mark_failed(delivery.id, error, None)
                log.error(
                    "gave up delivering %s of job %s (%s) to %s after %d attempts: %s",
                    delivery.kind,
                    job.get("name"),
                    job.get("id"),
                    delivery.notifier,
                    delivery.attempts + 1,
                    error,
                )
                return
            await self.store.mark_failed(delivery.id, error, retry_at)
            log.warning(
                "delivering %s of job %s (%s) to %s failed (%s); retry at %s",
                delivery.kind,
                job.get("name"),
                job.get("id"),
                delivery.notifier,
                error,
                retry_at.isoformat(timespec="seconds"),
            )

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until ``stopping`` is set, sleeping until the next due row or a wake-up."""
        while not stopping.is_set():
            self._wake.clear()
            try:
                await self.deliver_due()
            except Exception:
                log.exception("delivery pass failed; trying again shortly")
                await _wait(self._wake, stopping, 5.0)
                continue
            next_at = await self.store.next_delivery_at()
            timeout = 60.0
            if next_at is not None:
                timeout = max(0.0, min(timeout, (next_at - self.clock()).total_seconds()))
            await _wait(self._wake, stopping, timeout)


async def _wait(wake: asyncio.Event, stopping: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopping.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
