"""Several replicas on one database: this one's lease, who is live, and its share of the jobs.

Ownership is rendezvous hashing over the live replicas' names: each unfinished job
belongs to the live replica whose hash with the job's id is highest. Every replica
computes the same answer from the same live set, with nothing written per job; when a
replica joins or leaves, only the jobs it gains or loses move (about 1/N of them).

A replica may act (poll, record, send) only while its lease holds by its own
monotonic clock. The lease is renewed every third of ``lease``; it ends locally a
little before the database lets the others take over, so that a replica stopped
(SIGSTOP, a lost connection) stops acting before anyone acts in its place, and after
that it must join again, with a new token, before it does anything at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime

from jobherald.aio import first_of
from jobherald.model import counted, owner
from jobherald.store import Claimer, Joining, Member, Store

log = logging.getLogger(__name__)

# The local lease ends this much (at most) before the database's: clocks drift, and a
# heartbeat is written a moment after it is sent.
MARGIN = 1.0
# A heartbeat that failed is tried again this soon.
RETRY_EVERY = 1.0


class Replica:
    """This process among the replicas: joining, heart-beating, and the jobs it polls.

    Whenever this replica's share changes, ``start(ids, first)`` (one call at a time)
    starts polling the jobs it gained and ``stop(ids)`` stops polling those it lost;
    ``jobs()`` names the unfinished jobs and ``polling()`` counts those being polled.
    """

    def __init__(
        self,
        store: Store,
        wanted: str | None,
        lease: float,
        *,
        jobs: Callable[[], Iterable[str]],
        start: Callable[[set[str], bool], Awaitable[None]],
        stop: Callable[[set[str]], None],
        polling: Callable[[], int],
    ) -> None:
        self.store = store
        self.wanted = wanted or socket.gethostname()
        self._configured = wanted is not None
        self.name = self.wanted
        self.lease = lease
        self._jobs = jobs
        self._start = start
        self._stop = stop
        self._polling = polling
        self.token: str | None = None
        self._previous: str | None = None
        self._valid_until = 0.0
        self.live: tuple[str, ...] = ()
        self.owned: set[str] = set()
        self.started_at = datetime.now(UTC)
        self._heard = asyncio.Event()
        self._unlisten: Callable[[], object] | None = None
        self._lock = asyncio.Lock()
        # A rebalance failed midway (the database did not answer): the next beat does it again.
        self._unbalanced = False
        self._next_expiry: float | None = None
        self._failing: str | None = None

    # -- what the others may ask --------------------------------------------------------

    def valid(self) -> bool:
        return self.token is not None and time.monotonic() < self._valid_until

    def term(self) -> str | None:
        """The token this replica acts under now, or None while it may not act at all."""
        return self.token if self.valid() else None

    def claimer(self) -> Claimer | None:
        token = self.term()
        return None if token is None else Claimer(token, self.name)

    def status(self, total: int) -> str:
        if not self.valid():
            return f"replica {self.name}: lease lapsed, not polling until it has rejoined"
        return (
            f"replica {self.name}, 1 of {len(self.live)} live, "
            f"polling {self._polling():,} of {total:,} jobs"
        )

    # -- joining and leaving ------------------------------------------------------------

    async def join(self) -> None:
        """Join (or rejoin) the replicas and take this replica's share of the jobs."""
        token = uuid.uuid4().hex
        started = time.monotonic()
        me = Joining(
            token,
            socket.gethostname(),
            os.getpid(),
            self.started_at,
            self.lease,
            self._previous,
            self.name if self._previous else None,
        )
        rejoining = self._previous is not None
        self.name = await self.store.join(self.wanted, me)
        self._previous = token  # should what follows fail, the next try takes this row back
        members, now = await self.store.members()
        self._valid_until = started + self.lease - min(MARGIN, self.lease / 10)
        self.token = token
        await self._listen()
        live = [m.name for m in members if m.live]
        log.info(
            "replica %s %s (host %s, pid %d, lease %gs): %d live%s",
            self.name,
            "rejoined" if rejoining else "joined",
            me.host,
            me.pid,
            self.lease,
            len(live),
            f" ({', '.join(live)})" if len(live) > 1 else "",
        )
        if self.name != self.wanted and not rejoining:
            # Expected for the default (the host name) with several replicas on one host.
            log.log(
                logging.WARNING if self._configured else logging.INFO,
                "replica name %s is held by a live replica: this one is %s",
                self.wanted,
                self.name,
            )
        await self._adopt(members, now, first=True)

    async def _listen(self, again: bool = False) -> None:
        """Hear joins and leaves as they happen (else: at the next heartbeat)."""
        if again:
            await self._stop_listening()
        if self._unlisten is not None:
            return
        try:
            self._unlisten = await self.store.listen(self._heard.set)
        except Exception as exc:
            log.warning("replica %s: cannot listen for joins and leaves: %s", self.name, exc)

    async def _stop_listening(self) -> None:
        if self._unlisten is not None:
            stop, self._unlisten = self._unlisten, None
            result = stop()
            if asyncio.iscoroutine(result):
                await result

    async def leave(self) -> None:
        """Hand every job over now: remove this replica's row (its claims released)."""
        await self._stop_listening()
        token, self.token = self.token, None
        if token is None:
            return
        try:
            await self.store.leave(self.name, token)
            if self.store.shared:  # on SQLite there are no others to hand anything to
                log.info(
                    "replica %s left: its %s go to the others",
                    self.name,
                    counted(len(self.owned), "job"),
                )
        except Exception as exc:
            log.warning(
                "replica %s: leaving failed (%s); the others wait out its lease", self.name, exc
            )

    # -- the heartbeat ------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Renew the lease and follow the live set until ``stopping`` is set."""
        beat_every = self.lease / 3
        next_beat = time.monotonic() + beat_every
        while not stopping.is_set():
            now = time.monotonic()
            wait = next_beat - now
            if self._next_expiry is not None:
                wait = min(wait, self._next_expiry - now)
            if self.token is not None:
                wait = min(wait, self._valid_until - now)
            await first_of(self._heard, stopping, timeout=max(0.0, wait))
            if stopping.is_set():
                return
            now = time.monotonic()
            try:
                if self.token is not None and now >= self._valid_until:
                    self._lapse(f"no heartbeat for {self.lease:g}s")
                if self.token is None:
                    await self.join()
                elif now >= next_beat:
                    await self._beat()
                else:
                    self._heard.clear()
                    await self._adopt(*await self.store.members())
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"[:300]
                if self._failing is None:  # once per outage
                    log.warning("replica %s: heartbeat failed: %s", self.name, text)
                    self._failing = text
                next_beat = time.monotonic() + RETRY_EVERY
                continue
            if self._failing is not None:
                log.info("replica %s: heartbeats work again", self.name)
                self._failing = None
                await self._listen(again=True)  # the old listening connection may be gone
            if now >= next_beat:
                next_beat = now + beat_every

    async def _beat(self) -> None:
        assert self.token is not None
        started = time.monotonic()
        renewed = await self.store.beat(self.name, self.token, self.lease, self._polling())
        if not renewed:
            self._lapse("its lease ran out in the database")
            await self.join()
            return
        if self.token is not None:
            self._valid_until = started + self.lease - min(MARGIN, self.lease / 10)
        self._heard.clear()
        await self._adopt(*await self.store.members())
        if self._unbalanced:
            await self.rebalance()

    def _lapse(self, why: str) -> None:
        """Stop acting at once: no polls, no sends, until this replica has joined again."""
        log.warning(
            "replica %s: lease lapsed (%s): stopped polling and sending until it has rejoined",
            self.name,
            why,
        )
        self.token = None
        lost, self.owned = self.owned, set()
        self._stop(lost)

    # -- the live set and this replica's share ------------------------------------------

    async def _adopt(self, members: list[Member], now: datetime, first: bool = False) -> None:
        if self.token is None:
            return
        live = tuple(sorted({m.name for m in members if m.live} | {self.name}))
        rows = {m.name: m for m in members}
        before = self.live
        for name in sorted(set(live) - set(before) - {self.name}):
            if not first:
                m = rows[name]
                log.info("replica %s joined (host %s, pid %d)", name, m.host, m.pid)
        for name in sorted(set(before) - set(live)):
            how = "stopped" if name not in rows else "went silent: its lease lapsed"
            log.info("replica %s %s", name, how)
        expiries = [
            (m.expires_at - now).total_seconds() for m in members if m.live and m.name != self.name
        ]
        self._next_expiry = time.monotonic() + min(expiries) + 0.05 if expiries else None
        if live == before and not first:
            return
        self.live = live
        await self.rebalance(before, first)

    async def rebalance(self, before: Sequence[str] = (), first: bool = False) -> None:
        """Poll exactly the jobs this replica owns among the live ones (again after a reload)."""
        async with self._lock:
            if self.token is None:
                return
            live = self.live
            active = set(self._jobs())
            mine = {job_id for job_id in active if owner(job_id, live) == self.name}
            gained, lost = mine - self.owned, (self.owned - mine) & active
            if finished := self.owned - active - mine:
                self._stop(finished)  # finished or removed: nobody polls them any more
            self.owned = mine
            if lost:
                self._stop(lost)
            if gained or first:
                try:
                    await self._start(gained, first)
                except BaseException:
                    self.owned -= gained  # not polled: gained again by the next rebalance
                    self._unbalanced = True
                    raise
            self._unbalanced = False
            if first or not before:
                return
            if gained:
                _moved(self.name, "took over", "from", Counter(owner(j, before) for j in gained))
            if lost:
                _moved(self.name, "handed over", "to", Counter(owner(j, live) for j in lost))


def _moved(name: str, what: str, way: str, others: Counter[str | None]) -> None:
    parts = ", ".join(f"{n} {way} {other}" for other, n in sorted(others.items(), key=str))
    log.info("replica %s %s %d jobs (%s)", name, what, others.total(), parts)
