"""Replicas: who is live (a heartbeat row each), one name each, and cluster-wide locks."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobherald.errors import StoreError
from jobherald.store.base import StoreBase
from jobherald.store.schema import archives, deliveries, lanes, replicas

# Joins and clean leaves are announced here (PostgreSQL LISTEN/NOTIFY), so the others
# rebalance at once instead of at their next heartbeat.
CHANNEL = "jobherald_replicas"
# A replica row silent for this long is removed (its claims released) at the next join.
FORGET_AFTER = 86_400.0


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    incarnation: str
    host: str
    pid: int
    started_at: datetime
    joined_at: datetime
    heartbeat_at: datetime
    expires_at: datetime
    jobs: int
    live: bool


@dataclass(frozen=True, slots=True)
class Joining:
    """What a process brings to a join."""

    incarnation: str
    host: str
    pid: int
    started_at: datetime
    lease: float
    previous: str | None = None  # this process's last incarnation, when it rejoins
    previous_name: str | None = None


def _member(row: sa.Row[Any]) -> Member:
    return Member(
        name=row.name,
        incarnation=row.incarnation,
        host=row.host,
        pid=row.pid,
        started_at=row.started_at,
        joined_at=row.joined_at,
        heartbeat_at=row.heartbeat_at,
        expires_at=row.expires_at,
        jobs=row.jobs,
        live=bool(row.live),
    )


class Membership(StoreBase):
    """The replicas table."""

    async def join(self, wanted: str, me: Joining) -> str:
        """Take the first free name among ``wanted``, ``wanted:2``, ``wanted:3``...; return it.

        A name is free when nobody has it, when its replica's lease has lapsed, or when
        it is this process's own earlier incarnation (a rejoin). Claims the old holder
        left are released. (A process of the same host and a dead pid is not taken for
        gone: in containers, the pid may be another namespace's.)
        """
        await self._forget_long_silent()
        names = [wanted, *(f"{wanted}:{n}" for n in range(2, 1000))]
        if me.previous_name is not None:  # a replica rejoining keeps its name if it can
            names.insert(0, me.previous_name)
        for name in names:
            if await self._take(name, me):
                return name
        raise StoreError(f"no free replica name from {wanted!r} (999 are taken)")

    async def _take(self, name: str, me: Joining) -> bool:
        now = self.db_time()
        values = {
            "incarnation": me.incarnation,
            "host": me.host,
            "pid": me.pid,
            "started_at": me.started_at,
            "joined_at": now,
            "heartbeat_at": now,
            "expires_at": self.db_time(me.lease),
            "jobs": 0,
        }
        async with self.write_transaction() as conn:  # not behind the poll writers' queue
            query = sa.select(replicas, (replicas.c.expires_at > now).label("live")).where(
                replicas.c.name == name
            )
            if self.shared:
                query = query.with_for_update()
            row = (await conn.execute(query)).first()
            if row is None:
                insert: Any = sa.insert(replicas)
                if self.shared:
                    from sqlalchemy.dialects.postgresql import insert as pg_insert

                    insert = pg_insert(replicas).on_conflict_do_nothing()
                inserted = await conn.execute(insert.values(name=name, **values))
                taken = bool(inserted.rowcount)
            else:
                held = _member(row)
                if held.live and held.incarnation != me.previous:
                    return False
                await conn.execute(
                    sa.update(deliveries)
                    .where(deliveries.c.claimed_by == held.incarnation)
                    .values(claimed_by=None, claimed_until=None)
                )
                await conn.execute(
                    sa.update(replicas)
                    .where(replicas.c.name == name, replicas.c.incarnation == held.incarnation)
                    .values(**values)
                )
                taken = True
            if taken:
                await self._announce(conn, name)
            return taken

    async def forget_holders(self) -> None:
        """Whoever held this database before is gone (SQLite, whose lock this process
        holds): release every claim and mark every replica row silent."""
        now = self.db_time()
        async with self.write_transaction() as conn:
            for table in (deliveries, archives, lanes):
                await conn.execute(
                    sa.update(table)
                    .where(table.c.claimed_by.is_not(None))
                    .values(claimed_by=None, claimed_until=None)
                )
            await conn.execute(
                sa.update(replicas).where(replicas.c.expires_at > now).values(expires_at=now)
            )

    async def beat(self, name: str, incarnation: str, lease: float, jobs: int) -> bool:
        """Renew this replica's lease; False when it had lapsed already (or the row is gone)."""
        now = self.db_time()
        async with self.write_transaction() as conn:  # not behind the poll writers' queue
            result = await conn.execute(
                sa.update(replicas)
                .where(
                    replicas.c.name == name,
                    replicas.c.incarnation == incarnation,
                    replicas.c.expires_at > now,
                )
                .values(heartbeat_at=now, expires_at=self.db_time(lease), jobs=jobs)
            )
            return bool(result.rowcount)

    async def leave(self, name: str, incarnation: str) -> None:
        """Remove this replica's row and give back its claims: the others take over at once."""
        async with self.write_transaction() as conn:  # not behind the poll writers' queue
            for table in (deliveries, archives, lanes):
                await conn.execute(
                    sa.update(table)
                    .where(table.c.claimed_by == incarnation)
                    .values(claimed_by=None, claimed_until=None)
                )
            await conn.execute(
                sa.delete(replicas).where(
                    replicas.c.name == name, replicas.c.incarnation == incarnation
                )
            )
            await self._announce(conn, name)

    async def members(self) -> tuple[list[Member], datetime]:
        """Every replica row, by name, and the database's time now."""
        now = self.db_time()
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(replicas, (replicas.c.expires_at > now).label("live")).order_by(
                    replicas.c.name
                )
            )
            members = [_member(row) for row in rows]
            at = (await conn.execute(sa.select(self.db_time()))).scalar_one()
        return members, at

    async def _forget_long_silent(self) -> None:
        cutoff = self.db_time(-FORGET_AFTER)
        async with self.write_transaction() as conn:  # not behind the poll writers' queue
            old = sa.select(replicas.c.incarnation).where(replicas.c.expires_at < cutoff)
            for table in (deliveries, archives, lanes):
                await conn.execute(
                    sa.update(table)
                    .where(table.c.claimed_by.in_(old.scalar_subquery()))
                    .values(claimed_by=None, claimed_until=None)
                )
            await conn.execute(sa.delete(replicas).where(replicas.c.expires_at < cutoff))

    async def _announce(self, conn: Any, name: str) -> None:
        if self.shared:
            await conn.execute(sa.select(sa.func.pg_notify(CHANNEL, name)))

    async def listen(self, heard: Callable[[], None]) -> Callable[[], Any] | None:
        """Call ``heard`` whenever a replica joins or leaves (PostgreSQL only); returns
        a coroutine function that stops listening, or None where nothing is heard."""
        if not self.shared:
            return None
        conn = await self.engine.connect()
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection

        def on_notify(*_args: Any) -> None:
            heard()

        await driver.add_listener(CHANNEL, on_notify)

        async def stop() -> None:
            with contextlib.suppress(Exception):
                await driver.remove_listener(CHANNEL, on_notify)
            with contextlib.suppress(Exception):
                await conn.close()

        return stop

    @contextlib.asynccontextmanager
    async def exclusive(self, what: str) -> AsyncIterator[bool]:
        """Whether this process may do ``what`` now, once in the whole cluster (a
        PostgreSQL advisory lock held for the block; on SQLite one daemon does it all)."""
        if not self.shared:
            yield True
            return
        key = zlib.crc32(f"jobherald:{what}".encode())
        async with self.engine.connect() as conn:
            got = bool((await conn.execute(sa.select(sa.func.pg_try_advisory_lock(key)))).scalar())
            await conn.commit()
            try:
                yield got
            finally:
                if got:
                    await conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
                    await conn.commit()
