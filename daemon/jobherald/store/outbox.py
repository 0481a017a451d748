"""The outbox: one delivery per (event, notifier URL), claimed by one sender at a time."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from jobherald.store.base import StoreBase
from jobherald.store.schema import deliveries, events

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
    payload: Mapping[str, Any]
    at: datetime


class Outbox(StoreBase):
    """Deliveries: claimed, sent, marked; listed, retried and dropped by hand."""

    async def claim_due(self, now: datetime, claimer: Claimer, limit: int = 100) -> list[Delivery]:
        """Claim up to ``limit`` due deliveries for this sender and return them.

        One statement claims them (on PostgreSQL, skipping rows another replica is
        claiming in the same instant), so each delivery is sent by one sender.
        """
        due = (
            sa.select(deliveries.c.id)
            .where(deliveries.c.state == "pending", deliveries.c.next_attempt_at <= now)
            .where(self.unheld(deliveries))
            # First attempts first: a new event never waits behind retries to an endpoint
            # that keeps failing.
            .order_by(deliveries.c.attempts > 0, deliveries.c.id)
            .limit(limit)
        )
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
        async with self._writing() as conn:
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

    async def waiting_retries(self) -> int:
        """Pending deliveries that failed before: each keeps its own next attempt."""
        query = sa.select(sa.func.count()).where(
            deliveries.c.state == "pending", deliveries.c.attempts > 0
        )
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def next_delivery_at(self) -> datetime | None:
        """When the next delivery nobody holds falls due."""
        return await self.next_unheld_at(deliveries)

    async def mark_delivered(self, delivery_id: int, at: datetime, claimer: Claimer) -> bool:
        """Record a sent delivery; False if this sender's claim had been taken over."""
        async with self._writing() as conn:
            result = await conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.id == delivery_id, deliveries.c.claimed_by == claimer.token)
                .values(
                    state="delivered",
                    delivered_at=at,
                    attempts=deliveries.c.attempts + 1,
                    last_error=None,
                    claimed_by=None,
                    claimed_until=None,
                )
            )
            return bool(result.rowcount)

    async def mark_failed(
        self, delivery_id: int, error: str, retry_at: datetime | None, claimer: Claimer
    ) -> bool:
        """Record a failed attempt; with no ``retry_at`` the delivery is abandoned."""
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
        async with self._writing() as conn:
            result = await conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.id == delivery_id, deliveries.c.claimed_by == claimer.token)
                .values(**values)
            )
            return bool(result.rowcount)

    async def deliveries(self, states: Sequence[str]) -> list[sa.Row[Any]]:
        """Deliveries in the given states, oldest first, with their event and job."""
        query = (
            sa.select(
                deliveries.c.id,
                deliveries.c.event_id,
                deliveries.c.notifier,
                deliveries.c.url,
                deliveries.c.state,
                deliveries.c.attempts,
                deliveries.c.next_attempt_at,
                deliveries.c.last_error,
                deliveries.c.delivered_at,
                deliveries.c.sent_by,
                events.c.kind,
                events.c.at,
                events.c.job_id,
                events.c.source,
            )
            .join(events, events.c.id == deliveries.c.event_id)
            .where(deliveries.c.state.in_(states))
            .order_by(deliveries.c.id)
        )
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).all())

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
        """Give up on pending or abandoned deliveries (all of them when ``ids`` is None)."""
        statement = (
            sa.update(deliveries)
            .where(deliveries.c.state.in_(("pending", "abandoned")))
            .values(state="dropped")
        )
        if ids is not None:
            statement = statement.where(deliveries.c.id.in_(ids))
        async with self._writing() as conn:
            return int((await conn.execute(statement)).rowcount or 0)

    async def last_reminded(self, notifier: str) -> dict[tuple[str, str], datetime]:
        """When each (job or source, event kind) last went to this notifier."""
        subject = sa.func.coalesce(events.c.job_id, sa.literal("source:") + events.c.source)
        query = (
            sa.select(subject.label("subject"), events.c.kind, sa.func.max(events.c.at))
            .join(deliveries, deliveries.c.event_id == events.c.id)
            .where(deliveries.c.notifier == notifier)
            .group_by(subject, events.c.kind)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        out: dict[tuple[str, str], datetime] = {}
        for subject_id, kind, at in rows:
            if isinstance(at, str):
                at = datetime.fromisoformat(at)
            out[(subject_id, kind)] = at if at.tzinfo else at.replace(tzinfo=UTC)
        return out

    async def pending_count(self) -> int:
        """Deliveries waiting to be sent or retried (an index walk, however many were sent)."""
        query = sa.select(sa.func.count()).where(deliveries.c.state == "pending")
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def delivery_counts(self) -> dict[str, int]:
        query = sa.select(deliveries.c.state, sa.func.count()).group_by(deliveries.c.state)
        async with self.engine.connect() as conn:
            return {state: count for state, count in (await conn.execute(query)).all()}
