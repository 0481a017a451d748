"""History that ends, in the background: every so often (at least hourly, and ten times
per ``keep_history``) the jobs removed longer ago than ``keep_history`` are deleted with
their rows, a batch per transaction, by one replica at a time; then the file shrinks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from jobherald.model import counted, format_duration
from jobherald.store import Pruned, Store

log = logging.getLogger(__name__)

HOURLY = 3600.0


def prune_every(keep: float | None) -> float:
    """How often a pass runs: hourly, or ten times per ``keep_history`` if that is sooner."""
    return HOURLY if keep is None else min(HOURLY, keep / 10)


class Pruner:
    """One pass at a time over what ``keep_history`` (read at each pass) no longer keeps."""

    def __init__(
        self,
        store: Store,
        keep: Callable[[], float | None],
        clock: Callable[[], datetime],
        may_act: Callable[[], bool] = lambda: True,
    ) -> None:
        self.store = store
        self.keep = keep
        self.clock = clock
        self.may_act = may_act
        # Told of each table's rows deleted (metrics), and of the database's size.
        self.on_pruned: Callable[[str, int], None] | None = None
        self.on_size: Callable[[int], None] | None = None

    async def run_pass(self) -> Pruned:
        """Prune what is due; say so in the log once when anything went."""
        keep = self.keep()
        done = Pruned()
        if keep is None:
            await self._measure()
            return done
        async with self.store.exclusive("pruning") as ours:
            if not ours or not self.may_act():
                return done  # another replica prunes now
            now = self.clock()
            cutoff = now - timedelta(seconds=keep)
            before = await self.store.database_bytes()
            while counts := await self.store.prune_batch(cutoff, now):
                done.add(counts)
                self._count(counts)
                await asyncio.sleep(0)  # polls and deliveries write between batches
            while gone := await self.store.prune_events(cutoff):
                done.add({"events": gone})
                self._count({"events": gone})
                await asyncio.sleep(0)
            await self.store.forget_pruned(cutoff)
            if any(done.rows.values()):
                await self.store.reclaim()
                done.freed = max(0, before - await self.store.database_bytes())
        if done.jobs or done.rows["events"]:
            log.info(
                "pruned %s older than %s (%s)",
                counted(done.jobs, "finished job").replace(f"{done.jobs} ", f"{done.jobs:,} "),
                format_duration(keep),
                megabytes(done.freed),
            )
        await self._measure()
        return done

    def _count(self, counts: dict[str, int]) -> None:
        if self.on_pruned is not None:
            for table, n in counts.items():
                if n:
                    self.on_pruned(table, n)

    async def _measure(self) -> None:
        if self.on_size is not None:
            self.on_size(await self.store.database_bytes())


def megabytes(size: int) -> str:
    """A size as the log and `prune` say it: MB, or KB under one."""
    if size >= 2**20:
        return f"{size / 2**20:,.0f} MB"
    return f"{size / 1024:,.0f} KB"
