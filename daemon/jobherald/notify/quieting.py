"""Holding back what a silence or quiet hours cover, and telling it when the quiet ends.

The lanes ask, for each batch they claim, what holds each delivery now (silences are read
from the database, so every replica honours a new one within a second); what is held
is kept as "silenced". A chore tells each ended silence, and each notifier's ended quiet
hours, in one summary per notifier URL (see store.silences)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from jobherald.config import Notifier
from jobherald.notify.summary import summary_payload
from jobherald.quiet import Silence, holder
from jobherald.store import Delivery, Released, Store

log = logging.getLogger(__name__)

# Silences are read again after this many seconds (a replica sees a new one this soon).
SILENCES_FOR = 1.0


class Quieting:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._silences: list[Silence] = []
        self._read_at = float("-inf")
        # Told of each held delivery (metrics): the notifier.
        self.on_held: Callable[[str], None] | None = None

    def forget(self) -> None:
        """Read the silences again at the next batch (one was added or ended here)."""
        self._read_at = float("-inf")

    async def silences(self) -> list[Silence]:
        if time.monotonic() - self._read_at > SILENCES_FOR:
            self._silences = await self.store.open_silences()
            self._read_at = time.monotonic()
        return self._silences

    async def holders(
        self, notifier: Notifier, batch: Sequence[Delivery], now: datetime
    ) -> list[tuple[Delivery, str | None]]:
        """Each delivery with what holds it now (None: it goes)."""
        silences = await self.silences()
        if not silences and notifier.quiet is None:
            return [(d, None) for d in batch]
        return [
            (
                d,
                None  # a report goes at the time it was asked for
                if d.kind == "report"
                else holder(silences, notifier.quiet, d.notifier, d.kind, d.payload, now),
            )
            for d in batch
        ]

    async def release_due(self, notifiers: Mapping[str, Notifier], now: datetime) -> int:
        """Tell every silence that has ended, and every notifier's quiet hours that are
        over, once; returns how many summaries (or drops) were written."""
        on_end = {name: n.on_quiet_end for name, n in notifiers.items()}
        told = 0
        self.forget()
        for silence in await self.silences():
            if silence.active(now) or silence.starts_at > now:
                continue
            released = await self.store.end_silence(silence, now, on_end, summary_payload)
            if released is None:
                continue  # another replica told it
            held = sum(r.held for r in released)
            log.info(
                "silence %d by %s: %d deliveries held%s",
                silence.id,
                silence.created_by,
                held,
                _told(released),
            )
            told += len(released)
        self.forget()
        waiting = await self.store.held_counts()  # a read: no write while nothing is held
        for name, notifier in notifiers.items():
            if not waiting.get(name) or (notifier.quiet is not None and notifier.quiet.holds(now)):
                continue
            released = await self.store.end_quiet(name, now, on_end, summary_payload)
            if released:
                log.info(
                    "quiet hours of %s ended: %d deliveries held%s",
                    name,
                    sum(r.held for r in released),
                    _told(released),
                )
                told += len(released)
        return told


def _told(released: Sequence[Released]) -> str:
    summaries = sum(1 for r in released if r.summary is not None)
    dropped = sum(r.held for r in released if r.summary is None)
    parts = []
    if summaries:
        parts.append(f"told in {summaries} summar{'y' if summaries == 1 else 'ies'}")
    if dropped:
        parts.append(f"{dropped} dropped (on_quiet_end = drop)")
    return f", {' and '.join(parts)}" if parts else ""
