"""Events and their deliveries, written in the transaction of whatever caused them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from jobherald.store.schema import deliveries, events

if TYPE_CHECKING:
    from jobherald.payload import EventPayload


@dataclass(frozen=True, slots=True)
class Target:
    """One place a message goes: a notifier's URL, by key (a hash) and masked for display."""

    notifier: str
    key: str
    url: str


@dataclass(frozen=True, slots=True)
class NewEvent:
    kind: str
    payload: EventPayload
    targets: Sequence[Target]


async def insert_events(
    conn: AsyncConnection,
    new_events: Sequence[NewEvent],
    at: datetime,
    *,
    job_id: str | None = None,
    source: str | None = None,
) -> list[str]:
    event_ids: list[str] = []
    for new in new_events:
        event_id = uuid.uuid4().hex
        event_ids.append(event_id)
        await conn.execute(
            sa.insert(events).values(
                id=event_id,
                job_id=job_id,
                source=source,
                kind=new.kind,
                at=at,
                payload=json.dumps(new.payload, default=str),
            )
        )
        if new.targets:
            await conn.execute(
                sa.insert(deliveries),
                [
                    {
                        "event_id": event_id,
                        "notifier": t.notifier,
                        "target": t.key,
                        "url": t.url,
                        "state": "pending",
                        "attempts": 0,
                        "next_attempt_at": at,
                    }
                    for t in new.targets
                ],
            )
    return event_ids
