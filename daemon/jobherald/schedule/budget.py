"""Request budgets per source, and a pause of a whole source that said stop.

A source with ``max_rate`` has a token bucket shared by all its jobs (split among the
live replicas). Polls due faster than it allows wait in the source's waiting room and
leave it most urgent first: jobs whose ETA is past (they have most likely finished),
then the longest overdue; a job whose ETA is near waits for it rather than being polled
just before. A 429 or 503 with ``Retry-After`` pauses every job of the
source until then (at most ``max_retry_after_source``); when the pause ends one poll
goes first, and the others follow only once it was not refused again, so a source that
still says stop hears one request, not every job's.

Times are the event loop's monotonic seconds. Sources without a budget and not paused
pass straight through: their polls cost one dictionary lookup here.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from jobherald.schedule.queue import Entry

log = logging.getLogger(__name__)

# A bucket holds at most this many seconds of its rate: a quiet source may send a short
# burst. Polls leave within 1.05 times the rate in any second; the other 0.05 is room for
# their way to the upstream (a poll admitted is sent some ms later, some later than
# others), so that no second arrives with more than 1.1 times the rate. With a tenth of
# a second here, requests timed at the upstream came to 56 in a second at a rate of 50.
BURST_SECONDS = 0.05


class TokenBucket:
    """``rate`` tokens a second, at most ``rate * BURST_SECONDS`` (and at least one) held."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * BURST_SECONDS)
        self.tokens = self.capacity
        self.at = now

    def _fill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
            self.at = now

    def take(self, now: float) -> bool:
        self._fill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def give_back(self) -> None:
        """A token taken and not spent."""
        self.tokens = min(self.capacity, self.tokens + 1.0)

    def wait(self, now: float) -> float:
        """Seconds until a token is there."""
        self._fill(now)
        return max(0.0, (1.0 - self.tokens) / self.rate)


@dataclass(eq=False)
class Gate:
    """One source's budget, pause and waiting room."""

    source: str
    max_rate: float | None
    max_pause: float
    bucket: TokenBucket | None = None
    paused_until: float = 0.0
    paused_wall: datetime | None = None
    # After a pause: the one poll sent first, until it ends.
    probe: Entry | None = None
    probing: bool = False
    # The waiting room: each entry once, ordered two ways (stale heap items skipped).
    # Each waiting entry with its ETA (None: unknown).
    waiting: dict[int, tuple[Entry, float | None]] = field(default_factory=dict)
    by_due: list[tuple[float, int]] = field(default_factory=list)
    by_eta: list[tuple[float, int]] = field(default_factory=list)
    deferred: int = 0
    timer: asyncio.TimerHandle | None = None
    timer_at: float = 0.0  # when the timer fires (uvloop's handles do not say)

    @property
    def passes(self) -> bool:
        """Nothing to hold back: no budget, no pause, nobody waiting."""
        return self.bucket is None and not self.probing and not self.waiting


class Gates:
    """The gates of every source; the pool asks them before it hands a poll out."""

    def __init__(
        self,
        hand: Callable[[Entry], None],
        source_of: Callable[[str], str | None],
        eta: Callable[[Entry], float | None] | None = None,
    ) -> None:
        self._hand = hand
        self._source_of = source_of
        # A job's estimated end (epoch seconds), or None: a job whose end is past leaves
        # the waiting room first, earliest end first; then the longest overdue.
        self._eta = eta or (lambda entry: None)
        self._gates: dict[str, Gate] = {}
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._spenders: dict[str, Callable[[], Awaitable[None]]] = {}
        self.replicas = 1

    def configure(self, limits: dict[str, tuple[float | None, float]]) -> None:
        """Each source's ``(max_rate, max_retry_after_source)``; sources gone are dropped."""
        now = self._now()
        for name in list(self._gates):
            if name not in limits:
                gone = self._gates.pop(name)
                if gone.timer is not None:
                    gone.timer.cancel()
                for entry, _ in gone.waiting.values():
                    self._hand(entry)  # the pool drops what left the config
        for name, (rate, pause) in limits.items():
            gate = self._gates.get(name)
            if gate is None:
                gate = self._gates[name] = Gate(name, rate, pause)
            gate.max_rate, gate.max_pause = rate, pause
            self._rebudget(gate, now)
            self._drain(gate)

    def share(self, replicas: int) -> None:
        """The number of live replicas the budgets are split among."""
        replicas = max(1, replicas)
        if replicas != self.replicas:
            self.replicas = replicas
            now = self._now()
            for gate in self._gates.values():
                self._rebudget(gate, now)

    def _rebudget(self, gate: Gate, now: float) -> None:
        if gate.max_rate is None:
            gate.bucket = None
            return
        rate = gate.max_rate / self.replicas
        if gate.bucket is None or gate.bucket.rate != rate:
            gate.bucket = TokenBucket(rate, now)

    def _now(self) -> float:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    # -- what the pool asks -------------------------------------------------------------

    def admit(self, entry: Entry, now: float) -> bool:
        """True: poll it now. False: it waits in its source's room (the gate hands it on)."""
        gate = self._gate_of(entry)
        if gate is None or gate.passes:
            return True
        self._wait(gate, entry, now)
        self._drain(gate)
        return False

    def hold(self, entry: Entry) -> bool:
        """At the moment a poller takes it: True when its source was paused meanwhile (the
        entry goes back to the room)."""
        gate = self._gate_of(entry)
        if gate is None or not gate.probing or gate.probe is entry:
            return False
        self._wait(gate, entry, self._now())
        return True

    def ended(self, entry: Entry, throttle: float | None) -> None:
        """A poll ended; with ``throttle`` its source asked to be left alone that long."""
        gate = self._gate_of(entry)
        if gate is None:
            return
        if throttle is not None:
            self.pause(gate.source, throttle)
        elif gate.probe is entry:
            gate.probe, gate.probing = None, False
            log.info("source %s answers again: polling resumes", gate.source)
            self._drain(gate)

    def dropped(self, entry: Entry) -> None:
        """A poll handed out was dropped before it began (its job left the config): when
        it was its source's probe, another one goes (else the source would stay paused
        for good)."""
        for gate in self._gates.values():
            if gate.probe is entry:
                gate.probe = None
                self._drain(gate)

    def spender(self, entry: Entry) -> Callable[[], Awaitable[None]] | None:
        """What takes a token of this poll's source for each retry within it (None: its
        source has no budget)."""
        gate = self._gate_of(entry)
        if gate is None or gate.bucket is None:
            return None
        spender = self._spenders.get(gate.source)
        if spender is None:  # one per source, not one per poll
            spender = self._spenders[gate.source] = functools.partial(self.spend, gate.source)
        return spender

    async def spend(self, source: str) -> None:
        """Take a token of ``source``'s budget for one more request of a poll under way
        (a retry), waiting for it as long as the budget says."""
        gate = self._gates.get(source)
        while gate is not None and gate.bucket is not None:
            now = self._now()
            if gate.bucket.take(now):
                return
            await asyncio.sleep(gate.bucket.wait(now))

    def pause(self, source: str, seconds: float) -> None:
        """Leave every job of ``source`` alone for ``seconds`` (at most its cap)."""
        gate = self._gates.get(source)
        if gate is None:
            return
        now = self._now()
        seconds = max(0.0, min(seconds, gate.max_pause))
        until = now + seconds
        if until > gate.paused_until:
            first = not gate.probing
            gate.paused_until = until
            gate.paused_wall = datetime.now(UTC) + timedelta(seconds=seconds)
            if first:
                log.warning(
                    "source %s asked to be left alone: every job of it waits until %s",
                    source,
                    gate.paused_wall.strftime("%H:%M:%S"),
                )
        gate.probing, gate.probe = True, None
        self._arm(gate, until)

    # -- what is shown ------------------------------------------------------------------

    def throttled(self) -> dict[str, datetime]:
        """Sources paused now, and until when (wall clock)."""
        now = self._now() if self._loop is not None else time.monotonic()
        return {
            name: gate.paused_wall
            for name, gate in self._gates.items()
            if gate.paused_wall is not None and gate.paused_until > now
        }

    def deferred(self) -> dict[str, int]:
        """Polls per source that waited longer than their interval for the budget."""
        return {name: gate.deferred for name, gate in self._gates.items()}

    # -- inside -------------------------------------------------------------------------

    def _gate_of(self, entry: Entry) -> Gate | None:
        source = self._source_of(entry.job_id)
        return self._gates.get(source) if source is not None else None

    def _wait(self, gate: Gate, entry: Entry, now: float) -> None:
        seq = next(self._seq)
        eta = self._eta(entry)
        gate.waiting[seq] = (entry, eta)
        heapq.heappush(gate.by_due, (entry.due, seq))
        if eta is not None:
            heapq.heappush(gate.by_eta, (eta, seq))

    @staticmethod
    def _next(gate: Gate, wall: float, hold_near: bool = True) -> Entry | None:
        """The most urgent waiting poll, taken out of the room: a job whose end is past,
        earliest first; else the one due longest ago. A job whose end is near (within its
        interval) is held until then (``hold_near``): polled before its end it would
        most likely still run, and the budget would pay for it twice."""
        waiting = gate.waiting
        by_eta, by_due = gate.by_eta, gate.by_due
        while by_eta and by_eta[0][1] not in waiting:
            heapq.heappop(by_eta)
        if by_eta and (by_eta[0][0] <= wall or not hold_near):
            return waiting.pop(heapq.heappop(by_eta)[1])[0]
        while by_due:
            seq = heapq.heappop(by_due)[1]
            if seq not in waiting:
                continue
            entry, end = waiting[seq]
            if end is not None and end - wall <= entry.interval:
                continue  # near its end: it stays in the room, for its end
            del waiting[seq]
            return entry
        return None

    def _drain(self, gate: Gate) -> None:
        """Hand on the most urgent waiting polls the budget allows now; arm the gate's
        timer for the next."""
        now = self._now()
        wall = time.time()
        if gate.probing:
            if gate.probe is not None or now < gate.paused_until:
                if gate.probe is None:
                    self._arm(gate, gate.paused_until)
                return  # paused, or its probe still out
            if gate.bucket is not None and gate.waiting and not gate.bucket.take(now):
                self._arm(gate, now + gate.bucket.wait(now))  # a probe takes a token too
                return
            if (first := self._next(gate, wall, hold_near=False)) is not None:
                gate.probe = first
                self._hand(first)
            else:
                if gate.bucket is not None and gate.waiting:
                    gate.bucket.give_back()
                gate.probing = False
            return
        while gate.waiting:
            if gate.bucket is not None and not gate.bucket.take(now):
                self._arm(gate, now + gate.bucket.wait(now))
                return
            entry = self._next(gate, wall)
            if entry is None:  # only jobs near their end wait: the first end wakes the gate
                if gate.bucket is not None:
                    gate.bucket.give_back()
                if gate.by_eta:
                    self._arm(gate, now + max(0.0, gate.by_eta[0][0] - wall))
                break
            if now - entry.due > entry.current_interval:
                gate.deferred += 1
            self._hand(entry)

    def _arm(self, gate: Gate, at: float) -> None:
        if gate.timer is not None:
            if gate.timer_at <= at:
                return
            gate.timer.cancel()
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        gate.timer = loop.call_at(at, self._fire, gate)
        gate.timer_at = at

    def _fire(self, gate: Gate) -> None:
        gate.timer = None
        self._drain(gate)

    def close(self) -> None:
        for gate in self._gates.values():
            if gate.timer is not None:
                gate.timer.cancel()
                gate.timer = None
