"""Sending through apprise: one apprise object per notifier URL, sends in threads."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jobherald.config import Notifier
from jobherald.notify.messages import Message
from jobherald.store import Target

# Send threads: at least this many, and one per message that may be in flight to a URL,
# up to the most.
SEND_THREADS = 8
MAX_SEND_THREADS = 64


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
                pace = 0.0
                for server in obj:
                    pace = max(pace, float(getattr(server, "request_rate_per_sec", 0) or 0))
                    server.request_rate_per_sec = 0  # kept by wait_before(), not in a thread
                self._pace[(name, key)] = pace
                if not len(obj):
                    self._unusable.add((name, key))
                masked = next((_masked(server) for server in obj), url.split(":", 1)[0] + "://")
                self._targets[name].append(Target(name, key, masked))
        # A slow service holds a thread, never the event loop or the other URLs: as many
        # threads as messages may be in flight to every URL at once, within bounds.
        in_flight = sum(len(n.urls) * n.max_in_flight for n in self.notifiers.values())
        self._pool = ThreadPoolExecutor(
            max_workers=min(MAX_SEND_THREADS, max(SEND_THREADS, in_flight)),
            thread_name_prefix="send",
        )
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
        for k in keys:
            self._last_sent[(notifier, k)] = time.monotonic()
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
