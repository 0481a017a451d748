"""Silences, and the deliveries they (or quiet hours) hold: kept as "silenced" with what
holds them; when the quiet ends, summarised in one delivery per notifier URL, in the
transaction that ends them (so once, whatever replicas and kills do)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobherald.quiet import QUIET, Silence, silence_key
from jobherald.store.base import StoreBase
from jobherald.store.events import NewEvent, Target, insert_events
from jobherald.store.outbox import Claimer
from jobherald.store.schema import deliveries, events, silences

# How many ended silences `silence list` shows beside the open ones.
ENDED_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Held:
    """One held delivery's event, as a summary tells it."""

    event_id: str
    kind: str
    payload: dict[str, Any]
    at: datetime


@dataclass(frozen=True, slots=True)
class Released:
    """What the end of a quiet did for one notifier URL: how many deliveries it had held,
    and the summary's event (None: dropped, as the notifier asked)."""

    notifier: str
    target: str
    held: int
    summary: str | None


# Builds a summary's payload from the held events (oldest first) and what held them.
Summarize = Callable[[Sequence[Held], str, Silence | None], dict[str, Any]]


def _silence(row: Any) -> Silence:
    return Silence(
        id=row.id,
        job=row.job,
        source=row.source,
        notifier=row.notifier,
        kinds=tuple(json.loads(row.kinds)) if row.kinds is not None else None,
        everything=bool(row.everything),
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        created_by=row.created_by,
        reason=row.reason,
        created_at=row.created_at,
        expired_at=row.expired_at,
        ended_at=row.ended_at,
    )


class Silences(StoreBase):
    """Silences kept, listed and ended; deliveries held and released."""

    async def add_silence(
        self,
        *,
        job: str | None,
        source: str | None,
        notifier: str | None,
        kinds: Sequence[str] | None,
        everything: bool,
        starts_at: datetime,
        ends_at: datetime,
        created_by: str,
        reason: str,
        now: datetime,
    ) -> Silence:
        async with self._writing() as conn:
            result = await conn.execute(
                sa.insert(silences)
                .values(
                    job=job,
                    source=source,
                    notifier=notifier,
                    kinds=json.dumps(list(kinds)) if kinds else None,
                    everything=everything,
                    starts_at=starts_at,
                    ends_at=ends_at,
                    created_by=created_by,
                    reason=reason,
                    created_at=now,
                )
                .returning(*silences.c)
            )
            return _silence(result.one())

    async def open_silences(self) -> list[Silence]:
        """Silences whose end has not been told yet (active, to come, or just ended)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(silences).where(silences.c.ended_at.is_(None)).order_by(silences.c.id)
            )
            return [_silence(row) for row in rows]

    async def silences_shown(self) -> list[Silence]:
        """The open silences, then the last ENDED_SHOWN ended ones (latest first)."""
        async with self.engine.connect() as conn:
            ended = await conn.execute(
                sa.select(silences)
                .where(silences.c.ended_at.is_not(None))
                .order_by(silences.c.ended_at.desc(), silences.c.id.desc())
                .limit(ENDED_SHOWN)
            )
            done = [_silence(row) for row in ended]
        return [*await self.open_silences(), *done]

    async def silence(self, silence_id: int) -> Silence | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(silences).where(silences.c.id == silence_id))
            ).first()
            return _silence(row) if row is not None else None

    async def expire_silence(self, silence_id: int, now: datetime) -> Silence | None:
        """End a silence now (its summary follows); None when there is no such silence.
        One that has ended already is left as it is."""
        async with self._writing() as conn:
            await conn.execute(
                sa.update(silences)
                .where(
                    silences.c.id == silence_id,
                    silences.c.expired_at.is_(None),
                    silences.c.ended_at.is_(None),
                    silences.c.ends_at > now,
                )
                .values(expired_at=now)
            )
            row = (
                await conn.execute(sa.select(silences).where(silences.c.id == silence_id))
            ).first()
            return _silence(row) if row is not None else None

    async def hold(self, held: Sequence[tuple[int, str]], claimer: Claimer) -> int:
        """Keep these claimed deliveries back (``(id, held_by)``): state "silenced",
        no longer claimed. Returns how many were this sender's to hold."""
        by_holder: dict[str, list[int]] = {}
        for delivery_id, held_by in held:
            by_holder.setdefault(held_by, []).append(delivery_id)
        count = 0
        async with self._writing() as conn:
            for held_by, ids in by_holder.items():  # one statement per silence (or quiet)
                result = await conn.execute(
                    sa.update(deliveries)
                    .where(
                        deliveries.c.id.in_(ids),
                        deliveries.c.claimed_by == claimer.token,
                        deliveries.c.state == "pending",
                    )
                    .values(state="silenced", held_by=held_by, claimed_by=None, claimed_until=None)
                )
                count += int(result.rowcount or 0)
        return count

    async def end_silence(
        self,
        silence: Silence,
        now: datetime,
        on_end: Mapping[str, str],
        summarize: Summarize,
    ) -> list[Released] | None:
        """Tell a silence's end: its held deliveries summarised (or dropped), in the
        transaction that marks it ended. None when another process told it already."""
        async with self._writing() as conn:
            told = await conn.execute(
                sa.update(silences)
                .where(silences.c.id == silence.id, silences.c.ended_at.is_(None))
                .values(ended_at=now)
            )
            if not told.rowcount:
                return None
            return await self._release(
                conn, silence_key(silence.id), None, silence, now, on_end, summarize
            )

    async def end_quiet(
        self,
        notifier: str,
        now: datetime,
        on_end: Mapping[str, str],
        summarize: Summarize,
    ) -> list[Released]:
        """Tell the end of a notifier's quiet hours: what they held, summarised (or
        dropped); nothing when nothing was held (or another process told it)."""
        async with self._writing() as conn:
            return await self._release(conn, QUIET, notifier, None, now, on_end, summarize)

    async def _release(
        self,
        conn: Any,
        held_by: str,
        notifier: str | None,
        silence: Silence | None,
        now: datetime,
        on_end: Mapping[str, str],
        summarize: Summarize,
    ) -> list[Released]:
        # Taken in one statement: a second process doing the same finds none left.
        taking = sa.update(deliveries).where(
            deliveries.c.state == "silenced", deliveries.c.held_by == held_by
        )
        if notifier is not None:
            taking = taking.where(deliveries.c.notifier == notifier)
        taken = (
            await conn.execute(
                taking.values(state="summarized").returning(
                    deliveries.c.id,
                    deliveries.c.event_id,
                    deliveries.c.notifier,
                    deliveries.c.target,
                    deliveries.c.url,
                )
            )
        ).all()
        lanes: dict[tuple[str, str], list[Any]] = {}
        for row in taken:
            lanes.setdefault((row.notifier, row.target), []).append(row)
        released = []
        for (name, target), rows in sorted(lanes.items()):
            ids = [row.id for row in rows]
            if on_end.get(name, "summary") == "drop":
                await conn.execute(
                    sa.update(deliveries)
                    .where(deliveries.c.id.in_(ids))
                    .values(state="dropped", last_error=f"held ({held_by}); on_quiet_end = drop")
                )
                released.append(Released(name, target, len(ids), None))
                continue
            held = await self._held_events(conn, [row.event_id for row in rows])
            why = "silence" if silence is not None else "quiet"
            summary = NewEvent(
                "summary",
                summarize(held, why, silence),  # type: ignore[arg-type]
                [Target(name, target, rows[0].url or "")],
            )
            (summary_id,) = await insert_events(conn, [summary], now)
            await conn.execute(
                sa.update(deliveries).where(deliveries.c.id.in_(ids)).values(digest_id=summary_id)
            )
            released.append(Released(name, target, len(ids), summary_id))
        return released

    @staticmethod
    async def _held_events(conn: Any, event_ids: Sequence[str]) -> list[Held]:
        found: list[Held] = []
        for start in range(0, len(event_ids), 500):
            rows = await conn.execute(
                sa.select(events.c.id, events.c.kind, events.c.payload, events.c.at).where(
                    events.c.id.in_(event_ids[start : start + 500])
                )
            )
            found += [Held(r.id, r.kind, json.loads(r.payload), r.at) for r in rows]
        return sorted(found, key=lambda h: (h.at, h.event_id))

    async def held_counts(self) -> dict[str, int]:
        """Deliveries held now, per notifier."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(deliveries.c.notifier, sa.func.count())
                .where(deliveries.c.state == "silenced")
                .group_by(deliveries.c.notifier)
            )
            return {row[0]: int(row[1]) for row in rows}
