"""A notifier's message for one event or a digest: its templates, or the defaults.

Templates are rendered in the render process, off the event loop, within a budget of
time, memory and size. One that fails, or took too long once, falls back to the default
text (said once per notifier), so the message still goes out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from jobherald.config import Notifier
from jobherald.notify.messages import Item, Message, default_digest, default_message

log = logging.getLogger(__name__)


class Composer:
    """Composes messages; remembers the templates that took too long (not tried again in
    this process: a reload with a changed template tries the new one) and the notifiers
    already warned of."""

    def __init__(self) -> None:
        self._hazards: set[str] = set()
        self._warned: set[tuple[str, str | None, str | None]] = set()

    async def message(self, notifier: Notifier, item: Item) -> Message:
        """The message for one event."""
        default = default_message(item.kind, item.event_id, item.payload, notifier.format)
        texts = (notifier.title, notifier.body)
        rendered = await self._templates(notifier, texts, (item.kind, item.event_id, item.payload))
        if rendered is None:
            return default
        title, body = rendered
        body = body if body is not None else default.body
        if item.event_id not in body:
            body = f"{body}\n\nevent {item.event_id}"
        return Message(title or default.title, body, default.notify_type)

    async def digest(
        self, notifier: Notifier, items: Sequence[Item], public_url: str | None
    ) -> Message:
        """One message for many events (see messages.default_digest)."""
        from jobherald.templates import DIGEST

        default = default_digest(items, public_url, notifier.format)
        texts = (notifier.digest_title, notifier.digest_body)
        payload = {
            "events": [(i.kind, i.event_id, i.payload) for i in items],
            "public_url": public_url,
        }
        rendered = await self._templates(notifier, texts, (DIGEST, "", payload))
        if rendered is None:
            return default
        title, body = rendered
        body = body if body is not None else default.body
        missing = [i.event_id for i in items if i.event_id not in body]
        if missing:
            body = f"{body}\n\nevents {' '.join(i.event_id for i in items)}"
        return Message(title or default.title, body, default.notify_type)

    async def _templates(
        self,
        notifier: Notifier,
        texts: tuple[str | None, str | None],
        event: tuple[str, str, object],
    ) -> tuple[str | None, str | None] | None:
        """The title and body templates rendered (None where not given), or None to send
        the default message (no templates, or one failed)."""
        given = [t for t in texts if t is not None]
        if not given:
            return None
        from jobherald import renderer

        if any(t in self._hazards for t in given):
            results = [(False, "template took too long before: not tried again")] * len(given)
        else:
            jobs = [(t, *event) for t in given]
            render = renderer.of(notifier.name).render
            results = await asyncio.to_thread(render, jobs)  # type: ignore[arg-type]
        problems = [why for ok, why in results if not ok]
        if problems:
            self._hazards.update(
                t
                for t, (ok, why) in zip(given, results, strict=True)
                if not ok and "longer than" in why
            )
            key = (notifier.name, *texts)
            if key not in self._warned:
                self._warned.add(key)
                log.error(
                    "notifier %s: %s; sending the default message instead (said once)",
                    notifier.name,
                    problems[0],
                )
            return None
        out = iter(text for _, text in results)
        return tuple(next(out) if t is not None else None for t in texts)  # type: ignore[return-value]
