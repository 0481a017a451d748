"""The outbox: one delivery per (event, notifier URL), claimed by one sender at a time.

A notifier URL is a lane: its deliveries are claimed by the sender that holds the lane,
one batch at a time (a message, a few in flight, or a digest of many).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from jobherald.store.base import StoreBase
from jobherald.store.schema import deliveries, events, lanes
from jobherald.timing import iso

if TYPE_CHECKING:
    from jobherald.payload import EventPayload

# The longest a claim holds while its sender lives: a send takes seconds, and a claim
# whose replica stopped heart-beating is taken over at once, without waiting for this.
CLAIM_FOR = 300.0


@dataclass(frozen=True, slots=True)
class Claimer:
    """Who sends: a token unique to this process's time in the cluster, and a name to show."""

    token: str
    name: str


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    event_id: str
    kind: str
    notifier: str
    target: str
    attempts: int
    payload: EventPayload
    at: datetime


@dataclass(frozen=True, slots=True, order=True)
class Lane:
    """One notifier URL (by its key; ``*`` for every URL of the notifier)."""

    notifier: str
    target: str


@dataclass(frozen=True, slots=True)
class Batch:
    """What a lane sends next: its deliveries, and whether they go as one digest."""

    deliveries: list[Delivery]
    digest: bool


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """One delivery as `deliveries` lists it: its event, its URL, where it stands."""

    id: int
    event_id: str
    kind: str
    job_id: str | None
    source: str | None
    notifier: str
    url: str | None
    state: str
    attempts: int
    created_at: datetime
    # When it is tried next (said of pending ones only).
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None
    sent_by: str | None
    digest_id: str | None
    # What held it (silenced, summarized): "silence:ID" or "quiet".
    held_by: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The object `deliveries --json` prints (times as ISO 8601 UTC)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("created_at", "next_attempt_at", "delivered_at"):
            out[name] = iso(out[name])
        if self.state != "pending":
            out["next_attempt_at"] = None
        return out


class Outbox(StoreBase):
    """Deliveries: claimed, sent, marked; listed, retried and dropped by hand."""

    async def claim_due(
        self, now: datetime, claimer: Claimer, limit: int = 100, lane: Lane | None = None
    ) -> list[Delivery]:
        """Claim up to ``limit`` due deliveries (of one lane, if given) for this sender.

        One statement claims them (on PostgreSQL, skipping rows another replica is
        claiming in the same instant), so each delivery is sent by one sender.
        """
        async with self._writing() as conn:
            return await self._claim(conn, now, claimer, limit, lane)

    def _due(self, now: datetime, lane: Lane | None) -> sa.Select[Any]:
        due = (
            sa.select(deliveries.c.id)
            .where(deliveries.c.state == "pending", deliveries.c.next_attempt_at <= now)
            .where(self.unheld(deliveries))
        )
        if lane is not None:
            due = due.where(deliveries.c.notifier == lane.notifier)
            due = due.where(deliveries.c.target == lane.target)
        return due

    async def _claim(
        self, conn: Any, now: datetime, claimer: Claimer, limit: int, lane: Lane | None
    ) -> list[Delivery]:
        # First attempts first: a new event never waits behind retries to an endpoint
        # that keeps failing.
        due = self._due(now, lane).order_by(deliveries.c.attempts > 0, deliveries.c.id)
        due = due.limit(limit)
        if self.shared:
            due = due.with_for_update(skip_locked=True)
        claim = (
            sa.update(deliveries)
            .where(deliveries.c.id.in_(due.scalar_subquery()))
            .values(
                claimed_by=claimer.token,
                claimed_at=self.db_time(),
                claimed_until=self.db_time(CLAIM_FOR),
                sent_by=claimer.name,
            )
            .returning(deliveries.c.id)
        )
        query = (
            sa.select(
                deliveries.c.id,
                deliveries.c.event_id,
                deliveries.c.notifier,
                deliveries.c.target,
                deliveries.c.attempts,
                events.c.kind,
                events.c.payload,
                events.c.at,
            )
            .join(events, events.c.id == deliveries.c.event_id)
            .where(deliveries.c.id.in_(sa.bindparam("ids", expanding=True)))
            .order_by(deliveries.c.id)
        )
        ids = [row.id for row in await conn.execute(claim)]
        if not ids:
            return []
        rows = (await conn.execute(query, {"ids": ids})).all()
        return [
            Delivery(
                id=row.id,
                event_id=row.event_id,
                kind=row.kind,
                notifier=row.notifier,
                target=row.target,
                attempts=row.attempts,
                payload=json.loads(row.payload),
                at=row.at,
            )
            for row in rows
        ]

    async def release_claims(self, token: str) -> int:
        """Give back what this sender claimed and did not send (at a clean stop)."""
        async with self._writing() as conn:
            result = await conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.claimed_by == token, deliveries.c.state == "pending")
                .values(claimed_by=None, claimed_until=None)
            )
            return int(result.rowcount or 0)

    def _lane_held(self, but: Claimer | None = None) -> sa.ColumnElement[bool]:
        """A delivery whose lane a sender holds now (other than ``but``)."""
        held = sa.select(lanes.c.notifier).where(
            lanes.c.notifier == deliveries.c.notifier,
            lanes.c.target == deliveries.c.target,
            sa.not_(self.unheld(lanes)),
        )
        if but is not None:
            held = held.where(lanes.c.claimed_by != but.token)
        return sa.exists(held)

    async def due_lanes(self, now: datetime, claimer: Claimer) -> list[Lane]:
        """The lanes with deliveries due that nobody else is sending."""
        query = (
            sa.select(deliveries.c.notifier, deliveries.c.target)
            .where(deliveries.c.state == "pending", deliveries.c.next_attempt_at <= now)
            .where(self.unheld(deliveries), sa.not_(self._lane_held(but=claimer)))
            .distinct()
        )
        async with self.engine.connect() as conn:
            return sorted(Lane(n, t) for n, t in (await conn.execute(query)).all())

    async def claim_lane(self, lane: Lane, claimer: Claimer) -> bool:
        """Hold a lane (one sender per URL at a time, on every replica); False if another
        sender holds it."""
        key = {"notifier": lane.notifier, "target": lane.target}
        if self.shared:
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        which = sa.and_(lanes.c.notifier == lane.notifier, lanes.c.target == lane.target)
        free = sa.or_(lanes.c.claimed_by == claimer.token, self.unheld(lanes))
        async with self._writing() as conn:
            await conn.execute(insert(lanes).values(**key).on_conflict_do_nothing())
            ours = sa.select(lanes.c.notifier).where(which, free)
            if self.shared:
                ours = ours.with_for_update(skip_locked=True)
            if (await conn.execute(ours)).first() is None:
                return False
            await conn.execute(
                sa.update(lanes)
                .where(which)
                .values(claimed_by=claimer.token, claimed_until=self.db_time(CLAIM_FOR))
            )
            return True

    async def release_lane(self, lane: Lane, claimer: Claimer) -> None:
        """Let go of a lane this sender holds."""
        async with self._writing() as conn:
            await conn.execute(
                sa.update(lanes)
                .where(
                    lanes.c.notifier == lane.notifier,
                    lanes.c.target == lane.target,
                    lanes.c.claimed_by == claimer.token,
                )
                .values(claimed_by=None, claimed_until=None)
            )

    async def claim_batch(
        self,
        now: datetime,
        claimer: Claimer,
        lane: Lane,
        *,
        single: int,
        digest_after: int,
        digest_max: int,
    ) -> Batch | None:
        """Claim what a lane sends next: with ``digest_after`` or more due, up to
        ``digest_max`` of them as one digest; else up to ``single`` messages, oldest
        first. None when the lane is no longer this sender's."""
        async with self._writing() as conn:
            renewed = await conn.execute(
                sa.update(lanes)
                .where(
                    lanes.c.notifier == lane.notifier,
                    lanes.c.target == lane.target,
                    lanes.c.claimed_by == claimer.token,
                )
                .values(claimed_until=self.db_time(CLAIM_FOR))
            )
            if not renewed.rowcount:
                return None
            digest = False
            if digest_after > 0:
                counted = self._due(now, lane).limit(digest_after).subquery()
                due = (await conn.execute(sa.select(sa.func.count()).select_from(counted))).scalar()
                digest = int(due or 0) >= digest_after
            limit = digest_max if digest else single
            return Batch(await self._claim(conn, now, claimer, limit, lane), digest)

    async def waiting_retries(self) -> int:
        """Pending deliveries that failed before: each keeps its own next attempt."""
        query = sa.select(sa.func.count()).where(
            deliveries.c.state == "pending", deliveries.c.attempts > 0
        )
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def next_delivery_at(self, excluding: Collection[Lane] = ()) -> datetime | None:
        """When the next delivery nobody holds, in a lane nobody holds (nor in these),
        falls due (a lane being sent takes what comes for it)."""
        also = [sa.not_(self._lane_held())]
        if excluding:
            pairs = [(lane.notifier, lane.target) for lane in excluding]
            also.append(sa.tuple_(deliveries.c.notifier, deliveries.c.target).not_in(pairs))
        return await self.next_unheld_at(deliveries, *also)

    async def mark_delivered(self, delivery_id: int, at: datetime, claimer: Claimer) -> bool:
        """Record a sent delivery; False if this sender's claim had been taken over."""
        return bool(await self._mark_delivered([delivery_id], at, claimer, None))

    async def mark_digest_delivered(
        self, delivery_ids: Sequence[int], at: datetime, claimer: Claimer, digest_id: str
    ) -> int:
        """Record every delivery one digest carried, in one transaction; returns how many
        were still this sender's (the others' claims were taken over: they are not counted)."""
        return await self._mark_delivered(delivery_ids, at, claimer, digest_id)

    async def _mark_delivered(
        self, delivery_ids: Sequence[int], at: datetime, claimer: Claimer, digest_id: str | None
    ) -> int:
        async with self._writing() as conn:
            result = await conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.id.in_(delivery_ids), deliveries.c.claimed_by == claimer.token)
                .values(
                    state="delivered",
                    delivered_at=at,
                    attempts=deliveries.c.attempts + 1,
                    last_error=None,
                    claimed_by=None,
                    claimed_until=None,
                    digest_id=digest_id,
                )
            )
            return int(result.rowcount or 0)

    async def mark_all_failed(
        self, failures: Sequence[tuple[int, datetime | None]], error: str, claimer: Claimer
    ) -> None:
        """Record one failed attempt of several deliveries (a digest), in one transaction:
        each ``(id, retry_at)``, with no ``retry_at`` abandoned."""
        async with self._writing() as conn:
            for delivery_id, retry_at in failures:
                await conn.execute(self._failed(delivery_id, error, retry_at, claimer))

    def _failed(
        self, delivery_id: int, error: str, retry_at: datetime | None, claimer: Claimer
    ) -> sa.Update:
        values: dict[str, Any] = {
            "attempts": deliveries.c.attempts + 1,
            "last_error": error[:1000],
            "claimed_by": None,
            "claimed_until": None,
        }
        if retry_at is None:
            values["state"] = "abandoned"
        else:
            values["next_attempt_at"] = retry_at
        return (
            sa.update(deliveries)
            .where(deliveries.c.id == delivery_id, deliveries.c.claimed_by == claimer.token)
            .values(**values)
        )

    async def mark_failed(
        self, delivery_id: int, error: str, retry_at: datetime | None, claimer: Claimer
    ) -> bool:
        """Record a failed attempt; with no ``retry_at`` the delivery is abandoned."""
        async with self._writing() as conn:
            result = await conn.execute(self._failed(delivery_id, error, retry_at, claimer))
            return bool(result.rowcount)

    async def deliveries(self, states: Sequence[str]) -> list[DeliveryRow]:
        """Deliveries in the given states, oldest first, with their event and job."""
        query = (
            sa.select(  # in DeliveryRow's order, by its names
                deliveries.c.id,
                deliveries.c.event_id,
                events.c.kind,
                events.c.job_id,
                events.c.source,
                deliveries.c.notifier,
                deliveries.c.url,
                deliveries.c.state,
                deliveries.c.attempts,
                events.c.at.label("created_at"),
                deliveries.c.next_attempt_at,
                deliveries.c.delivered_at,
                deliveries.c.last_error,
                deliveries.c.sent_by,
                deliveries.c.digest_id,
                deliveries.c.held_by,
            )
            .join(events, events.c.id == deliveries.c.event_id)
            .where(deliveries.c.state.in_(states))
            .order_by(deliveries.c.id)
        )
        async with self.engine.connect() as conn:
            return [DeliveryRow(**row._mapping) for row in await conn.execute(query)]

    async def retry_deliveries(self, ids: Sequence[int] | None, now: datetime) -> int:
        """Make pending or abandoned deliveries (all of them when ``ids`` is None) due now."""
        statement = (
            sa.update(deliveries)
            .where(deliveries.c.state.in_(("pending", "abandoned")))
            .values(state="pending", next_attempt_at=now)
        )
        if ids is not None:
            statement = statement.where(deliveries.c.id.in_(ids))
        async with self._writing() as conn:
            return int((await conn.execute(statement)).rowcount or 0)

    async def drop_deliveries(self, ids: Sequence[int] | None) -> int:
        """Give up on pending, held or abandoned deliveries (all of them when ``ids`` is
        None): a held one is then left out of its quiet's summary."""
        statement = (
            sa.update(deliveries)
            .where(deliveries.c.state.in_(("pending", "silenced", "abandoned")))
            .values(state="dropped")
        )
        if ids is not None:
            statement = statement.where(deliveries.c.id.in_(ids))
        async with self._writing() as conn:
            return int((await conn.execute(statement)).rowcount or 0)

    async def last_reminded(
        self, notifier: str, job_ids: Collection[str]
    ) -> dict[tuple[str, str], datetime]:
        """When each (job, event kind) of these jobs last went to this notifier: read by
        the jobs' events (an index), never over every delivery ever made."""
        out: dict[tuple[str, str], datetime] = {}
        wanted = sorted(job_ids)
        async with self.engine.connect() as conn:
            for at in range(0, len(wanted), 500):
                query = (
                    sa.select(events.c.job_id, events.c.kind, sa.func.max(events.c.at))
                    .join(deliveries, deliveries.c.event_id == events.c.id)
                    .where(
                        events.c.job_id.in_(wanted[at : at + 500]),
                        deliveries.c.notifier == notifier,
                    )
                    .group_by(events.c.job_id, events.c.kind)
                )
                for job_id, kind, when in await conn.execute(query):
                    if isinstance(when, str):
                        when = datetime.fromisoformat(when)
                    out[(job_id, kind)] = when if when.tzinfo else when.replace(tzinfo=UTC)
        return out

    async def overdue(self, older_than: float) -> tuple[str, datetime] | None:
        """The notifier, and since when, of the pending delivery due longest ago, if it
        has been due more than ``older_than`` seconds (an index range: the due ones)."""
        since = self.db_time(-older_than)
        query = (
            sa.select(deliveries.c.notifier, deliveries.c.next_attempt_at)
            .where(deliveries.c.state == "pending", deliveries.c.next_attempt_at < since)
            .order_by(deliveries.c.next_attempt_at)
            .limit(1)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else (row.notifier, row.next_attempt_at)

    async def pending_by_notifier(self) -> dict[str, int]:
        """Deliveries waiting to be sent or retried, per notifier."""
        query = (
            sa.select(deliveries.c.notifier, sa.func.count())
            .where(deliveries.c.state == "pending")
            .group_by(deliveries.c.notifier)
        )
        async with self.engine.connect() as conn:
            return {name: int(count) for name, count in (await conn.execute(query)).all()}

    async def delivery_counts(self, states: Sequence[str] | None = None) -> dict[str, int]:
        """Deliveries per state (of these states only: an index range, not every
        delivery ever made)."""
        query = sa.select(deliveries.c.state, sa.func.count()).group_by(deliveries.c.state)
        if states is not None:
            query = query.where(deliveries.c.state.in_(list(states)))
        async with self.engine.connect() as conn:
            return {state: count for state, count in (await conn.execute(query)).all()}
