"""Storage: jobs, their transitions, events and their deliveries (the outbox), export
archives to keep, replicas.

The store knows the database and nothing of HTTP or apprise. Everything a poll
changes is written in one transaction, the events with their deliveries included,
so that a crash can neither lose a message nor cause one twice; and it is written
only from the version the poll read, so that replicas sharing one PostgreSQL
database write each change once.
"""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from jobherald.store.archives import ArchiveClaim, Archives, Kept
from jobherald.store.base import StoreBase, sqlite_engine
from jobherald.store.events import NewEvent, Target
from jobherald.store.jobs import (
    GROUP_COMMIT,
    STATE_ORDER,
    JobIdentity,
    Jobs,
    Recorded,
    RecordedSource,
    reasons_of,
    view_of,
)
from jobherald.store.listing import JobFilter, Listing
from jobherald.store.lock import DatabaseLock
from jobherald.store.membership import Joining, Member, Membership
from jobherald.store.outbox import CLAIM_FOR, Batch, Claimer, Delivery, DeliveryRow, Lane, Outbox
from jobherald.store.pruning import TABLES as PRUNED_TABLES
from jobherald.store.pruning import Pruned, Pruning
from jobherald.store.reports import ENDS, Ended, Reports, Run
from jobherald.store.schema import (
    SCHEMA_HEAD,
    UTCDateTime,
    head_revision,
    metadata,
    migrations_path,
)
from jobherald.store.silences import Held, Released, Silences

__all__ = [
    "CLAIM_FOR",
    "ENDS",
    "GROUP_COMMIT",
    "PRUNED_TABLES",
    "SCHEMA_HEAD",
    "STATE_ORDER",
    "ArchiveClaim",
    "Batch",
    "Claimer",
    "DatabaseLock",
    "Delivery",
    "DeliveryRow",
    "Ended",
    "Held",
    "JobFilter",
    "JobIdentity",
    "Joining",
    "Kept",
    "Lane",
    "Member",
    "NewEvent",
    "Pruned",
    "Recorded",
    "RecordedSource",
    "Released",
    "Run",
    "Store",
    "StoreBase",
    "Target",
    "UTCDateTime",
    "head_revision",
    "metadata",
    "migrations_path",
    "reasons_of",
    "sqlite_engine",
    "view_of",
]


class Store(Jobs, Listing, Outbox, Archives, Membership, Pruning, Silences, Reports):
    """The database, as jobherald uses it."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self._queued = []
        self._committer: asyncio.Task[None] | None = None
