"""Sending through apprise: one apprise object per notifier URL, each send in a thread of
its own with a deadline (``send_timeout``): a URL that never answers fails its attempts
on time and holds only its own threads, never another URL's, the shutdown or the exit."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from jobherald.config import Notifier
from jobherald.notify.messages import Message
from jobherald.store import Target

# Sends to one URL still stuck in their threads past their deadline: with this many
# (beside its max_in_flight), a new attempt to that URL fails at once rather than take
# one more thread.
STUCK_PER_URL = 4


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
    """One apprise object per URL, so each URL succeeds or fails on its own.

    A service's own pace (apprise waits 5.5 s between two emails through one object,
    1.2 s between two Slack messages) is kept here, by waiting on the event loop before
    a send rather than asleep in a send thread: a URL waiting for its turn holds no thread.
    """

    def __init__(self, notifiers: Mapping[str, Notifier]) -> None:
        self.notifiers = dict(notifiers)
        self._apprise: dict[tuple[str, str], Any] = {}
        self._targets: dict[str, list[Target]] = {}
        self._unusable: set[tuple[str, str]] = set()
        self._pace: dict[tuple[str, str], float] = {}
        self._last_sent: dict[tuple[str, str], float] = {}
        # Send threads alive per URL (those past their deadline among them).
        self._threads: dict[tuple[str, str], int] = {}
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
                pace = 0.0
                for server in obj:
                    pace = max(pace, float(getattr(server, "request_rate_per_sec", 0) or 0))
                    server.request_rate_per_sec = 0  # kept by wait_before(), not in a thread
                self._pace[(name, key)] = pace
                if not len(obj):
                    self._unusable.add((name, key))
                masked = next((_masked(server) for server in obj), url.split(":", 1)[0] + "://")
                self._targets[name].append(Target(name, key, masked))
        self._loaded = True

    def targets(self, notifier: str) -> list[Target]:
        self.load()
        return list(self._targets.get(notifier, ()))

    def knows(self, notifier: str, target: str) -> bool:
        self.load()
        if target == "*":
            return notifier in self._targets
        return (notifier, target) in self._apprise

    def _keys(self, notifier: str, target: str) -> list[str]:
        return [t.key for t in self._targets[notifier]] if target == "*" else [target]

    def wait_before(self, notifier: str, target: str) -> float:
        """Seconds until this URL's service may be sent to again (its own pace)."""
        self.load()
        now = time.monotonic()
        waits = [
            self._last_sent.get((notifier, k), -1e9) + self._pace.get((notifier, k), 0.0) - now
            for k in self._keys(notifier, target)
        ]
        return max([0.0, *waits])

    async def send(self, notifier: str, target: str, message: Message) -> tuple[bool, str]:
        """Send to one URL (``*``: every URL of the notifier); say whether it was accepted, and why not."""
        self.load()
        if (wait := self.wait_before(notifier, target)) > 0:
            await asyncio.sleep(wait)
        keys = self._keys(notifier, target)
        settings = self.notifiers[notifier]
        results = await asyncio.gather(
            *(
                self._send_one(notifier, k, message, settings)
                for k in keys
                if (notifier, k) not in self._unusable
            )
        )
        for k in keys:
            self._last_sent[(notifier, k)] = time.monotonic()
        reasons = [why for ok, why in results if not ok]
        if any((notifier, k) in self._unusable for k in keys):
            reasons.append("apprise cannot use this URL (unknown service or missing parts)")
        return not reasons, "; ".join(reasons)

    async def _send_one(
        self, notifier: str, key: str, message: Message, settings: Notifier
    ) -> tuple[bool, str]:
        """One attempt to one URL, in a thread of its own, ended after ``send_timeout``
        seconds (the thread, if the URL still holds it, ends whenever its socket does: a
        daemon thread, which neither a shutdown nor the interpreter's exit waits for)."""
        lane = (notifier, key)
        body_format, deadline = settings.format, settings.send_timeout
        alive = self._threads.get(lane, 0)
        if alive >= settings.max_in_flight + STUCK_PER_URL:
            return False, f"{alive} earlier sends to this URL are still without an answer"
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[bool, str]] = loop.create_future()
        obj = self._apprise[lane]

        def settle(result: tuple[bool, str]) -> None:
            self._threads[lane] = self._threads.get(lane, 1) - 1
            if not done.done():
                done.set_result(result)

        def work() -> None:
            result = self._send_sync(obj, message, body_format)
            # (RuntimeError: the loop has closed meanwhile; nobody waits any more.)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, result)

        self._threads[lane] = alive + 1
        threading.Thread(target=work, name=f"send-{notifier}", daemon=True).start()
        try:
            return await asyncio.wait_for(asyncio.shield(done), deadline)
        except TimeoutError:
            return False, f"no answer within send_timeout ({deadline:g}s)"

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
        """Nothing to stop: each send's thread ends with its send (a send under way goes
        on, whatever ``cancel`` says; none waits in a queue)."""
