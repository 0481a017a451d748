"""Notifications: messages from events, and the dispatcher that empties the outbox.

This module knows apprise and the outbox; it never talks to a job source.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import exc as sa_exc

from jobherald.aio import first_of
from jobherald.config import Notifier, Source
from jobherald.errors import FetchError
from jobherald.model import EventKind, format_duration
from jobherald.store import CLAIM_FOR, Claimer, Delivery, Store, Target

if TYPE_CHECKING:
    from jobherald.sources.base import Advice

log = logging.getLogger(__name__)

RETRY_FIRST = 30.0
RETRY_MAX = 3600.0
SEND_CONCURRENCY = 8

_NOTIFY_TYPES = {
    "succeeded": "success",
    "failed": "failure",
    "stalled": "warning",
    "lost": "warning",
    "error": "warning",
    "archived": "success",
}


@dataclass(frozen=True, slots=True)
class Message:
    title: str
    body: str
    notify_type: str


def notify_type(kind: str) -> str:
    return _NOTIFY_TYPES.get(kind, "info")


def advice(kind: EventKind, error: FetchError | None, source: Source, words: Advice) -> str | None:
    """What a person can do about an event, or None when nothing is needed; ``words``
    are the source type's own (its console, its API, what to check)."""
    if kind is EventKind.STALLED:
        return f"Look at the job in {words.console}; jobherald keeps watching it."
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
        return f"{source.endpoint} does not answer like {words.api}: check endpoint."
    if error.status == 403:
        return words.forbidden
    if error.status in (400, 404):
        return words.not_found
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
    if job.get("archive_id") and kind in ("succeeded", "archived"):
        lines.append(f"archive_id: {job['archive_id']}")
    if kind == "archived" and job.get("archive_path"):
        lines.append(f"archive: {job['archive_path']}")
        lines.append(f"size: {_size(job.get('archive_size'))}")
        lines.append(f"sha256: {job.get('archive_sha256')}")
    if kind == "error" and job.get("error"):
        lines.append(f"error: {job['error']}")
    reasons = job.get("reasons") or []
    if kind == "failed":
        if reasons:
            lines.append(f"reasons ({reason_count(reasons)}):")
            lines.extend(f"- {_reason_line(r)}" for r in reasons)
        else:
            lines.append("reasons: none given by the service")
    if event.get("advice"):
        lines += ["", str(event["advice"])]
    lines += ["", f"event {event_id}"]
    return Message(f"{name} {kind}", "\n".join(lines), notify_type(kind))


def _headline(kind: str, name: str, event: Mapping[str, Any]) -> str:
    detail = event.get("detail")
    if kind in ("succeeded", "failed", "started", "archived") or not detail:
        return f"Job {name} {kind}."
    if kind == "error" and event.get("about") == "archive":
        return f"Keeping the archive of job {name} fails: {detail}."
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


def _size(value: Any) -> str:
    if not isinstance(value, int):
        return "unknown"
    size = float(value)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{value} bytes" if unit == "bytes" else f"{size:.1f} {unit} ({value} bytes)"
        size /= 1024
    raise AssertionError("unreachable")


_MORE = re.compile(r"^and ([\d,]+) more$")


def reason_count(reasons: Sequence[Mapping[str, Any]]) -> int:
    """How many reasons the upstream gave: the kept ones, and those the last one counts
    when the list was capped ("and 2,981 more")."""
    more = _MORE.match(str(reasons[-1].get("error_msg") or "")) if reasons else None
    if more is None or any(reasons[-1].get(k) for k in ("resource_type", "resource_name")):
        return len(reasons)
    return len(reasons) - 1 + int(more[1].replace(",", ""))


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


class _Capture(logging.Handler):
    """Collects what apprise logs in the current thread, to say why a send failed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        lines = getattr(self.local, "lines", None)
        if lines is not None:
            lines.append(record.getMessage())


_capture = _Capture()


def _apprise() -> Any:
    """apprise, imported on first use (with the handler that keeps its reasons)."""
    import apprise

    logger = logging.getLogger("apprise")
    if _capture not in logger.handlers:
        logger.addHandler(_capture)
    return apprise


def url_key(url: str) -> str:
    """A stable key for a URL that does not reveal it."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def _masked(server: Any) -> str:
    return str(server.url(privacy=True)).split("?", 1)[0]


class Sender:
    """One apprise object per URL, so each URL succeeds or fails on its own."""

    def __init__(self, notifiers: Mapping[str, Notifier]) -> None:
        self.notifiers = dict(notifiers)
        self._apprise: dict[tuple[str, str], Any] = {}
        self._targets: dict[str, list[Target]] = {}
        self._unusable: set[tuple[str, str]] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._loaded = False

    def load(self) -> None:
        """Build one apprise object per URL (apprise is imported here, on first need)."""
        if self._loaded:
            return
        if not any(n.urls for n in self.notifiers.values()):
            self._targets = {name: [] for name in self.notifiers}
            self._loaded = True
            return  # nothing to send to: no apprise
        apprise = _apprise()
        for name, notifier in self.notifiers.items():
            self._targets[name] = []
            for url in notifier.urls:
                obj = apprise.Apprise()
                obj.add(url)
                key = url_key(url)
                self._apprise[(name, key)] = obj
                if not len(obj):
                    self._unusable.add((name, key))
                masked = next((_masked(server) for server in obj), url.split(":", 1)[0] + "://")
                self._targets[name].append(Target(name, key, masked))
        # A slow service holds a thread, never the event loop or the other URLs.
        self._pool = ThreadPoolExecutor(max_workers=SEND_CONCURRENCY, thread_name_prefix="send")
        self._loaded = True

    def targets(self, notifier: str) -> list[Target]:
        self.load()
        return list(self._targets.get(notifier, ()))

    def knows(self, notifier: str, target: str) -> bool:
        self.load()
        if target == "*":
            return notifier in self._targets
        return (notifier, target) in self._apprise

    async def send(self, notifier: str, target: str, message: Message) -> tuple[bool, str]:
        """Send to one URL (``*``: every URL of the notifier); say whether it was accepted, and why not."""
        self.load()
        keys = [t.key for t in self._targets[notifier]] if target == "*" else [target]
        body_format = self.notifiers[notifier].format
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(
                loop.run_in_executor(
                    self._pool, self._send_sync, self._apprise[(notifier, k)], message, body_format
                )
                for k in keys
                if (notifier, k) not in self._unusable
            )
        )
        reasons = [why for ok, why in results if not ok]
        if any((notifier, k) in self._unusable for k in keys):
            reasons.append("apprise cannot use this URL (unknown service or missing parts)")
        return not reasons, "; ".join(reasons)

    @staticmethod
    def _send_sync(obj: Any, message: Message, body_format: str) -> tuple[bool, str]:
        _capture.local.lines = []
        try:
            ok = obj.notify(
                body=message.body,
                title=message.title,
                notify_type=message.notify_type,
                body_format=body_format,
            )
        except Exception as exc:  # a plugin failing must not stop the others
            return False, f"{type(exc).__name__}: {exc}"[:300]
        finally:
            lines, _capture.local.lines = _capture.local.lines, None
        if ok:
            return True, ""
        return False, (lines[-1] if lines else "the service did not accept the message")[:300]

    def close(self, *, cancel: bool = True) -> None:
        """Stop the send threads; with ``cancel=False`` sends already queued still go out."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=cancel)


# Templates that did not finish within their budget: not tried again in this process
# (a reload with a changed template tries the new one); and notifiers already warned of.
_hazards: set[str] = set()
_warned: set[tuple[str, str | None, str | None]] = set()


async def compose(
    notifier: Notifier, kind: str, event_id: str, payload: Mapping[str, Any]
) -> Message:
    """The message for one notifier: its templates, or the defaults when it has none.

    Templates are rendered in the render process, off the event loop, within a budget
    of time, memory and size. One that fails, or took too long once, falls back to the
    default text (said once per notifier), so the message still goes out.
    """
    default = render(kind, event_id, payload)
    if notifier.title is None and notifier.body is None:
        return default
    from jobherald import render as render_module

    texts = [t for t in (notifier.title, notifier.body) if t is not None]
    if any(t in _hazards for t in texts):
        results = [(False, "template took too long before: not tried again")] * len(texts)
    else:
        jobs = [(t, kind, event_id, payload) for t in texts]
        results = await asyncio.to_thread(render_module.shared().render, jobs)
    problems = [why for ok, why in results if not ok]
    if problems:
        _hazards.update(
            t
            for t, (ok, why) in zip(texts, results, strict=True)
            if not ok and "longer than" in why
        )
        key = (notifier.name, notifier.title, notifier.body)
        if key not in _warned:
            _warned.add(key)
            log.error(
                "notifier %s: %s; sending the default message instead (said once)",
                notifier.name,
                problems[0],
            )
        return default
    rendered = iter(text for _, text in results)
    title = next(rendered) if notifier.title is not None else default.title
    body = next(rendered) if notifier.body is not None else default.body
    if event_id not in body:
        body = f"{body}\n\nevent {event_id}"
    return Message(title or default.title, body, default.notify_type)


class Dispatcher:
    """Claims due outbox rows, sends them and marks each; never raises for one bad delivery.

    ``claimer`` says who sends now, or None while this process may not send at all
    (a replica whose lease lapsed); a claim is sent only while it still holds.
    """

    def __init__(
        self,
        store: Store,
        notifiers: Mapping[str, Notifier],
        clock: Callable[[], datetime] = _utcnow,
        claimer: Callable[[], Claimer | None] | None = None,
    ) -> None:
        self.store = store
        self.sender = Sender(notifiers)
        self.clock = clock
        if claimer is None:
            alone = Claimer(uuid.uuid4().hex, socket.gethostname())
            claimer = lambda: alone  # noqa: E731
        self.claimer = claimer
        # The longest wait between passes (replicas shorten it: a dead one's claims expire).
        self.max_sleep = 60.0
        # Told of each delivery attempt's result (metrics): notifier, and delivered,
        # failed (to be retried) or abandoned.
        self.on_delivery: Callable[[str, str], None] | None = None
        self._wake = asyncio.Event()
        self._limit = asyncio.Semaphore(SEND_CONCURRENCY)

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self.sender.close()

    def reconfigure(self, notifiers: Mapping[str, Notifier]) -> None:
        """Use new notifiers from now on; sends in flight finish on the old ones."""
        old, self.sender = self.sender, Sender(notifiers)
        self.sender.load()  # the daemon has apprise loaded already: this is quick
        old.close(cancel=False)
        self.wake()

    async def deliver_due(self) -> int:
        """One pass over due deliveries; returns how many were tried."""
        tried = 0
        while True:
            claimer = self.claimer()
            if claimer is None:
                return tried
            # A claim is sent only well inside its time: never after another may take it.
            deadline = time.monotonic() + CLAIM_FOR / 2
            due = await self.store.claim_due(self.clock(), claimer)
            if not due:
                return tried
            await asyncio.gather(*(self._deliver(d, claimer, deadline) for d in due))
            tried += len(due)

    async def _deliver(self, delivery: Delivery, claimer: Claimer, deadline: float) -> None:
        async with self._limit:
            if self.claimer() != claimer or time.monotonic() > deadline:
                return  # the claim may be someone else's by now: leave it to them
            job = delivery.payload.get("job") or {}
            subject = (
                job.get("name") or f"source {(delivery.payload.get('source') or {}).get('name')}"
            )
            if not self.sender.knows(delivery.notifier, delivery.target):
                await self.store.mark_failed(
                    delivery.id,
                    f"notifier {delivery.notifier!r} no longer has this URL",
                    None,
                    claimer,
                )
                log.warning(
                    "dropped %s of %s for notifier %s: it no longer has that URL",
                    delivery.kind,
                    subject,
                    delivery.notifier,
                )
                return
            notifier = self.sender.notifiers[delivery.notifier]
            message = await compose(notifier, delivery.kind, delivery.event_id, delivery.payload)
            ok, error = await self.sender.send(delivery.notifier, delivery.target, message)
            now = self.clock()
            if self.on_delivery is not None:
                retry_soon = now + timedelta(seconds=retry_delay(delivery.attempts + 1))
                gives_up = (retry_soon - delivery.at).total_seconds() > notifier.retry_for
                self.on_delivery(
                    delivery.notifier, "delivered" if ok else "abandoned" if gives_up else "failed"
                )
            if ok:
                await self.store.mark_delivered(delivery.id, now, claimer)
                log.info(
                    "delivered %s of %s (%s) to %s",
                    delivery.kind,
                    subject,
                    job.get("id") or "source",
                    delivery.notifier,
                )
                return
            retry_at = now + timedelta(seconds=retry_delay(delivery.attempts + 1))
            if (retry_at - delivery.at).total_seconds() > notifier.retry_for:
                await self.store.mark_failed(delivery.id, error, None, claimer)
                log.error(
                    "gave up delivering %s of %s to %s after %d attempts: %s",
                    delivery.kind,
                    subject,
                    delivery.notifier,
                    delivery.attempts + 1,
                    error,
                )
                return
            await self.store.mark_failed(delivery.id, error, retry_at, claimer)
            log.warning(
                "delivering %s of %s to %s failed (%s); retry at %s",
                delivery.kind,
                subject,
                delivery.notifier,
                error,
                retry_at.isoformat(timespec="seconds"),
            )

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until ``stopping`` is set, sleeping until the next due row or a wake-up."""
        failing: str | None = None
        while not stopping.is_set():
            self._wake.clear()
            try:
                await self.deliver_due()
                next_at = await self.store.next_delivery_at()
            except Exception as exc:
                # The database away (a restart, a network cut): one line per outage.
                text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                if isinstance(exc, OSError | sa_exc.DBAPIError | sa_exc.InterfaceError):
                    if failing is None:  # once per outage
                        log.error("delivery pass failed (%s); trying again shortly", text)
                else:
                    log.exception("delivery pass failed; trying again shortly")
                failing = text
                await first_of(self._wake, stopping, timeout=5.0)
                continue
            if failing is not None:
                log.info("delivery passes work again")
                failing = None
            timeout = self.max_sleep
            if next_at is not None:
                timeout = max(0.0, min(timeout, (next_at - self.clock()).total_seconds()))
            await first_of(self._wake, stopping, timeout=timeout)
