"""The dispatcher: a lane per notifier URL, each with its own queue and its own sender.

Nothing one URL does (slow answers, timeouts, refusals, its service's pace) delays
another: each lane claims its URL's due deliveries and sends them, a message at a time
(``max_in_flight`` at once), first attempts before retries. When ``digest_after`` or more
are due for a URL at once, they go as one digest: quiet times send each event at once,
a backlog never goes out one by one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from jobherald.aio import PassFailures, first_of
from jobherald.config import Notifier
from jobherald.notify.compose import Composer
from jobherald.notify.messages import Item
from jobherald.notify.quieting import Quieting
from jobherald.notify.reports import report_message
from jobherald.notify.sender import Sender
from jobherald.notify.summary import summary_message
from jobherald.store import CLAIM_FOR, Claimer, Delivery, Lane, Store
from jobherald.store.schema import DATABASE_AWAY
from jobherald.timing import backoff, utcnow

log = logging.getLogger(__name__)

RETRY_FIRST = 30.0
RETRY_MAX = 3600.0
# After a failed send a lane waits this long before its next one, first attempts too:
# what comes meanwhile for a failing URL goes as one digest, not as a flood of attempts.
FAILED_PAUSE = 5.0


def retry_delay(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failures: doubling, capped, jittered."""
    return backoff(RETRY_FIRST, RETRY_MAX, attempts, jitter=0.2)


def _subject(delivery: Delivery) -> str:
    if delivery.kind in ("summary", "report"):
        report: Any = delivery.payload.get("report") or {}
        return f"report {report.get('name')}" if delivery.kind == "report" else "what was held"
    job = delivery.payload.get("job")
    if job and job.get("name"):
        return str(job.get("name"))
    source = delivery.payload.get("source")
    return f"source {source.get('name') if source else None}"


def _job_id(delivery: Delivery) -> str:
    if delivery.kind in ("summary", "report"):
        return delivery.event_id
    job = delivery.payload.get("job")
    return str(job.get("id") or "source") if job else "source"


def _item(delivery: Delivery) -> Item:
    return Item(delivery.kind, delivery.event_id, delivery.payload)


class Dispatcher:
    """Runs a lane per notifier URL with due deliveries; never raises for one bad delivery.

    ``claimer`` says who sends now, or None while this process may not send at all
    (a replica whose lease lapsed); a claim is sent only while it still holds.
    """

    def __init__(
        self,
        store: Store,
        notifiers: Mapping[str, Notifier],
        clock: Callable[[], datetime] = utcnow,
        claimer: Callable[[], Claimer | None] | None = None,
        public_url: str | None = None,
    ) -> None:
        self.store = store
        self.sender = Sender(notifiers)
        self.clock = clock
        self.public_url = public_url
        if claimer is None:
            alone = Claimer(uuid.uuid4().hex, socket.gethostname())
            claimer = lambda: alone  # noqa: E731
        self.claimer = claimer
        # The longest wait between passes (replicas shorten it: a dead one's claims expire).
        self.max_sleep = 60.0
        # Told of each delivery attempt's result (metrics): notifier, and delivered,
        # failed (to be retried) or abandoned; and of each delivery's lag (notifier,
        # seconds from its event to its delivery).
        self.on_delivery: Callable[[str, str], None] | None = None
        self.on_lag: Callable[[str, float], None] | None = None
        self.composer = Composer()
        self.quieting = Quieting(store)
        self.tried = 0
        self._lanes: dict[Lane, asyncio.Task[None]] = {}
        self._paused: dict[Lane, float] = {}  # a lane whose last send failed: until when
        self._resting: set[Lane] = set()  # lanes not started for a wait: woken after it
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self.sender.close()

    def reconfigure(self, notifiers: Mapping[str, Notifier], public_url: str | None) -> None:
        """Use new notifiers from now on; sends in flight finish on the old ones."""
        from jobherald import renderer

        old, self.sender = self.sender, Sender(notifiers)
        self.sender.load()  # the daemon has apprise loaded already: this is quick
        renderer.keep_only(list(notifiers))
        self.public_url = public_url
        old.close(cancel=False)
        self.wake()

    def _wait_of(self, lane: Lane, patient: bool = False) -> float:
        """Seconds before a lane may send again: its service's pace, or the pause after
        a failed send (not in a ``patient`` pass: a one-off pass does not hold back
        first attempts for a URL that failed)."""
        wait = 0.0 if patient else self._paused.get(lane, 0.0) - time.monotonic()
        if lane.notifier in self.sender.notifiers:
            wait = max(wait, self.sender.wait_before(lane.notifier, lane.target))
        return max(0.0, wait)

    def _start_lanes(self, lanes: Sequence[Lane], claimer: Claimer, patient: bool) -> None:
        """Start a sender for each lane not sending yet; ``patient`` ones wait for their
        turn, the others are left until then (the run loop wakes for them)."""
        for lane in lanes:
            if lane in self._lanes:
                continue
            if not patient and self._wait_of(lane) > 0:
                self._resting.add(lane)
                continue
            self._resting.discard(lane)
            task = asyncio.create_task(
                self._lane(lane, claimer, patient), name=f"lane {lane.notifier}"
            )
            self._lanes[lane] = task
            task.add_done_callback(lambda _, lane=lane: self._ended(lane))  # type: ignore[misc]

    def _next_turn(self) -> float | None:
        """Seconds until the first resting lane may send (those whose turn came are no
        longer resting)."""
        waits = {lane: self._wait_of(lane) for lane in self._resting}
        self._resting = {lane for lane, wait in waits.items() if wait > 0}
        return min((waits[lane] for lane in self._resting), default=None)

    def _ended(self, lane: Lane) -> None:
        self._lanes.pop(lane, None)
        self._wake.set()  # something may have come for it while it ended

    async def deliver_due(self, *, patient: bool = True) -> int:
        """Send everything due now, lane by lane, until nothing is; returns how many
        deliveries were tried. ``patient``: wait for a service's pace (or a failed URL's
        pause) within the pass, else leave those lanes for later."""
        before = self.tried
        while True:
            claimer = self.claimer()
            if claimer is None:
                break
            progress = self.tried
            lanes = await self.store.due_lanes(self.clock(), claimer)
            self._start_lanes(lanes, claimer, patient)
            if not self._lanes:
                break
            await asyncio.wait(list(self._lanes.values()))
            if self.tried == progress:
                break  # lanes held elsewhere, or lost: the next pass tries again
        return self.tried - before

    async def stop_lanes(self) -> None:
        """Cut off the lanes still sending (what they hold is sent at the next start)."""
        tasks = list(self._lanes.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _lane(self, lane: Lane, claimer: Claimer, patient: bool) -> None:
        """Send one URL's due deliveries until none is due (or, not ``patient``, until
        it must wait for its turn), holding the lane meanwhile."""
        try:
            if not await self.store.claim_lane(lane, claimer):
                return  # another sender has it
        except Exception as exc:
            log.debug("claiming the lane of %s failed: %s", lane.notifier, exc)
            return
        try:
            while self.claimer() == claimer:
                # The service's own pace is waited for before claiming: what comes
                # meanwhile joins the next batch (a digest, when enough has come).
                if (wait := self._wait_of(lane, patient)) > 0:
                    if not patient:
                        self._resting.add(lane)
                        break
                    await asyncio.sleep(wait)
                if not await self._lane_batch(lane, claimer):
                    break
        except Exception:
            log.exception("sending to notifier %s failed; trying again shortly", lane.notifier)
        finally:
            try:
                await self.store.release_lane(lane, claimer)
            except Exception as exc:  # the database away: the claim lapses by itself
                log.debug("releasing the lane of %s failed: %s", lane.notifier, exc)

    async def _lane_batch(self, lane: Lane, claimer: Claimer) -> bool:
        """Claim and send a lane's next batch; False when there was none (or the lane is
        no longer this sender's)."""
        notifier = self.sender.notifiers.get(lane.notifier)
        if notifier is None or not self.sender.knows(lane.notifier, lane.target):
            notifier = None  # the URL left the config: what is due for it is dropped
        # A claim is sent only well inside its time: never after another may take it.
        deadline = time.monotonic() + CLAIM_FOR / 2
        batch = await self.store.claim_batch(
            self.clock(),
            claimer,
            lane,
            single=notifier.max_in_flight if notifier is not None else 100,
            digest_after=notifier.digest_after if notifier is not None else 0,
            digest_max=notifier.digest_max if notifier is not None else 2,
        )
        if batch is None or not batch.deliveries:
            return False
        self.tried += len(batch.deliveries)
        if notifier is None:
            await self._drop(batch.deliveries, claimer)
            return True
        going = await self._hold(notifier, batch.deliveries, claimer)
        if not going:
            return True
        if batch.digest and len(going) > 1:
            sent = [await self._send_digest(notifier, lane, going, claimer, deadline)]
        else:
            sent = await asyncio.gather(
                *(self._send_one(notifier, d, claimer, deadline) for d in going)
            )
        if any(ok is False for ok in sent):
            self._paused[lane] = time.monotonic() + FAILED_PAUSE
        else:
            self._paused.pop(lane, None)
        return True

    async def _hold(
        self, notifier: Notifier, batch: Sequence[Delivery], claimer: Claimer
    ) -> list[Delivery]:
        """Keep back what a silence or the notifier's quiet hours hold now; the rest goes."""
        holders = await self.quieting.holders(notifier, batch, self.clock())
        held = [(d.id, why) for d, why in holders if why is not None]
        if held:
            await self.store.hold(held, claimer)
            for delivery, why in holders:
                if why is None:
                    continue
                if self.quieting.on_held is not None:
                    self.quieting.on_held(notifier.name)
                log.info(
                    "held %s of %s for %s (%s)",
                    delivery.kind,
                    _subject(delivery),
                    notifier.name,
                    why.replace(":", " "),
                )
        return [d for d, why in holders if why is None]

    async def _drop(self, batch: Sequence[Delivery], claimer: Claimer) -> None:
        """Give up, in one transaction, what is due for a URL its notifier no longer has."""
        why = f"notifier {batch[0].notifier!r} no longer has this URL"
        await self.store.mark_all_failed([(d.id, None) for d in batch], why, claimer)
        for delivery in batch:
            log.warning(
                "dropped %s of %s for notifier %s: it no longer has that URL",
                delivery.kind,
                _subject(delivery),
                delivery.notifier,
            )

    def _usable(self, claimer: Claimer, deadline: float) -> bool:
        return self.claimer() == claimer and time.monotonic() <= deadline

    async def _send_one(
        self, notifier: Notifier, delivery: Delivery, claimer: Claimer, deadline: float
    ) -> bool | None:
        """Send one delivery: whether it went (None: not tried, the claim is too old)."""
        if not self._usable(claimer, deadline):
            return None  # the claim may be someone else's by now: leave it to them
        if delivery.kind == "summary":
            message = summary_message(
                delivery.event_id, delivery.payload, self.public_url, notifier.format
            )
        elif delivery.kind == "report":
            message = report_message(delivery.payload, notifier.format)
        else:
            message = await self.composer.message(notifier, _item(delivery))
        ok, error = await self.sender.send(delivery.notifier, delivery.target, message)
        now = self.clock()
        if ok:
            await self.store.mark_delivered(delivery.id, now, claimer)
            self._delivered(notifier, [delivery], now)
            log.info(
                "delivered %s of %s (%s) to %s",
                delivery.kind,
                _subject(delivery),
                _job_id(delivery),
                delivery.notifier,
            )
            return True
        await self._failed(notifier, [delivery], error, now, claimer)
        return False

    async def _send_digest(
        self,
        notifier: Notifier,
        lane: Lane,
        batch: Sequence[Delivery],
        claimer: Claimer,
        deadline: float,
    ) -> bool | None:
        if not self._usable(claimer, deadline):
            return None
        message = await self.composer.digest(notifier, [_item(d) for d in batch], self.public_url)
        ok, error = await self.sender.send(lane.notifier, lane.target, message)
        now = self.clock()
        if ok:
            digest_id = uuid.uuid4().hex
            await self.store.mark_digest_delivered([d.id for d in batch], now, claimer, digest_id)
            self._delivered(notifier, batch, now)
            log.info(
                "sent a digest of %d events to %s (%s)",
                len(batch),
                notifier.name,
                self._where(lane),
            )
            return True
        await self._failed(notifier, batch, error, now, claimer)
        return False

    def _where(self, lane: Lane) -> str:
        """A lane's URL as a log line may name it: its host (or the service's name)."""
        masked = next(
            (t.url for t in self.sender.targets(lane.notifier) if t.key == lane.target), None
        )
        if masked is None:
            return "every URL" if lane.target == "*" else "?"
        parts = urlsplit(masked)
        return parts.hostname or parts.scheme or "?"

    def _delivered(self, notifier: Notifier, batch: Sequence[Delivery], now: datetime) -> None:
        for delivery in batch:
            if self.on_delivery is not None:
                self.on_delivery(notifier.name, "delivered")
            if self.on_lag is not None:
                self.on_lag(notifier.name, max(0.0, (now - delivery.at).total_seconds()))

    async def _failed(
        self,
        notifier: Notifier,
        batch: Sequence[Delivery],
        error: str,
        now: datetime,
        claimer: Claimer,
    ) -> None:
        """Record a failed send of these deliveries: retried together (as one digest, when
        they are enough) after the backoff of the most tried, each abandoned once past the
        notifier's ``retry_for``."""
        retry_at = now + timedelta(seconds=retry_delay(max(d.attempts for d in batch) + 1))
        failures: list[tuple[int, datetime | None]] = []
        for delivery in batch:
            gives_up = (retry_at - delivery.at).total_seconds() > notifier.retry_for
            failures.append((delivery.id, None if gives_up else retry_at))
            if self.on_delivery is not None:
                self.on_delivery(notifier.name, "abandoned" if gives_up else "failed")
        await self.store.mark_all_failed(failures, error, claimer)
        first = batch[0]
        what = (
            f"a digest of {len(batch)} events"
            if len(batch) > 1
            else f"{first.kind} of {_subject(first)}"
        )
        given_up = [d for d, (_, at) in zip(batch, failures, strict=True) if at is None]
        if given_up:
            log.error(
                "gave up delivering %s to %s after %d attempts: %s",
                what if len(given_up) == len(batch) else f"{len(given_up)} of {what}",
                notifier.name,
                max(d.attempts for d in given_up) + 1,
                error,
            )
        if len(given_up) < len(batch):
            log.warning(
                "delivering %s to %s failed (%s); retry at %s",
                what,
                notifier.name,
                error,
                retry_at.isoformat(timespec="seconds"),
            )

    async def run(self, stopping: asyncio.Event) -> None:
        """Start lanes until ``stopping`` is set, sleeping until the next due delivery or a
        wake-up; the lanes send on their own."""
        failures = PassFailures(log, "delivery pass", DATABASE_AWAY)
        while not stopping.is_set():
            self._wake.clear()
            try:
                claimer = self.claimer()
                if claimer is not None:
                    lanes = await self.store.due_lanes(self.clock(), claimer)
                    self._start_lanes(lanes, claimer, patient=False)
                turn = self._next_turn()
                next_at = await self.store.next_delivery_at(excluding=self._resting)
            except Exception as exc:
                failures.failed(exc)
                await first_of(self._wake, stopping, timeout=5.0)
                continue
            failures.worked()
            timeout = self.max_sleep
            if turn is not None:
                timeout = min(timeout, max(turn, 0.01))
            if next_at is not None:
                # Due now yet not started: a lane let go just now (its end wakes us too).
                timeout = max(0.05, min(timeout, (next_at - self.clock()).total_seconds()))
            await first_of(self._wake, stopping, timeout=timeout)
