"""What tells the world the daemon lives: sd_notify(3) to systemd (ready, status, the
watchdog), and a dead man's switch, a GET of ``heartbeat_url`` while the daemon is healthy
(polling works and the database takes a write), never while it is not."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import SecretStr

from jobherald.errors import FetchError
from jobherald.fetch import Fetcher

if TYPE_CHECKING:
    from prometheus_client import Counter

    from jobherald.store import Store

log = logging.getLogger(__name__)


class SystemdNotifier:
    """sd_notify(3) over $NOTIFY_SOCKET; silent when the socket is not set."""

    def __init__(self, address: str | None) -> None:
        self._address = ("\0" + address[1:]) if address and address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)

    def __bool__(self) -> bool:
        return self._socket is not None

    def send(self, *lines: str) -> None:
        if self._socket is None or self._address is None:
            return
        try:
            self._socket.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class DeadMansSwitch:
    """A GET of ``heartbeat_url`` while the daemon is healthy (polling works and the
    database takes a write), never while it is not; failures are logged once per outage.
    The URL is a secret of sorts (it identifies the check): only its host is logged."""

    def __init__(
        self,
        url: Callable[[], SecretStr | None],
        problem: Callable[[], str | None],
        counter: Counter,
        store: Store,
        fetcher: Fetcher,
    ) -> None:
        # The URL as the config says now, what is wrong with the daemon now (None: all
        # well), and the counter of pings by outcome (sent, skipped, failed).
        self.url = url
        self.problem = problem
        self.counter = counter
        self.store = store
        self.fetcher = fetcher
        self.failing: str | None = None

    async def ping(self) -> None:
        from urllib.parse import urlsplit

        url = self.url()
        if url is None:
            return
        host = urlsplit(url.get_secret_value()).hostname
        problem = self.problem()
        if problem is None:
            try:
                await self.store.probe_write()
            except Exception as exc:
                problem = f"the database takes no write: {type(exc).__name__}"
        if problem is not None:
            self.counter.labels("skipped").inc()
            self._failed(f"not pinging {host}: {problem}")
            return
        try:
            response = await self.fetcher.request(
                "GET", url.get_secret_value(), headers={}, timeout=10.0, retry=False
            )
        except FetchError as exc:
            self.counter.labels("failed").inc()
            self._failed(f"heartbeat to {host} failed: {exc.message}")
            return
        if response.status >= 400:
            self.counter.labels("failed").inc()
            self._failed(f"heartbeat to {host} failed: HTTP {response.status}")
            return
        self.counter.labels("sent").inc()
        if self.failing is not None:
            log.info("heartbeat to %s works again", host)
            self.failing = None

    def _failed(self, why: str) -> None:
        if self.failing is None:  # once per outage
            log.warning("%s", why)
        self.failing = why
