"""A burst of finishes: 500 jobs flip to SUCCEEDED within 1 s, one more 20 s later.

Four notifier URLs hear them: a fast chat webhook, email to a local SMTP sink, a webhook
answering in 3 s and one that always fails. Measured: how long each finished job took to
reach chat (p50 / p99, and until every one had), how many emails carried the burst, and
how long the late job took to reach chat while the slow and dead URLs were still busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from common import daemon, pct, serving, write_config


def carried(text: str) -> list[str]:
    """The event ids a message carries: its footer, ``event ID`` or ``events ID ID ...``."""
    lines = text.strip().splitlines()
    for line in reversed(lines[-3:]):
        words = line.strip().split()
        if len(words) >= 2 and words[0] in ("event", "events"):
            return words[1:]
    return []


def job_of_events(db: Path) -> dict[str, str]:
    """Each finishing event's job, from the daemon's database."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return dict(
            conn.execute("select id, job_id from events where kind in ('succeeded', 'failed')")
        )


@dataclass
class Sinks:
    """The receivers: what reached each, and when (wall clock)."""

    chat: dict[str, float] = field(default_factory=dict)  # event id: first arrival
    chat_messages: int = 0
    emails: list[tuple[float, list[str]]] = field(default_factory=list)
    slow_messages: int = 0
    dead_attempts: int = 0


@contextlib.asynccontextmanager
async def sinks() -> AsyncIterator[tuple[Sinks, dict[str, str]]]:
    """The chat, slow and dead webhooks and an SMTP sink on 127.0.0.1; their apprise URLs."""
    from aiosmtpd.smtp import SMTP

    got = Sinks()

    async def chat(request: web.Request) -> web.Response:
        now = time.time()
        body = await request.json()
        got.chat_messages += 1
        for event_id in carried(body["message"]):
            got.chat.setdefault(event_id, now)
        return web.Response(text="ok")

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(3.0)
        got.slow_messages += 1
        return web.Response(text="ok")

    async def dead(request: web.Request) -> web.Response:
        await request.read()
        got.dead_attempts += 1
        return web.Response(status=503, text="down")

    class Mail:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            from email import message_from_bytes, policy

            mail = message_from_bytes(envelope.content, policy=policy.default)
            body = mail.get_body(("plain",))
            text = body.get_content() if body is not None else ""
            got.emails.append((time.time(), carried(text)))
            return "250 OK"

    app = web.Application()
    app.router.add_post("/chat", chat)
    app.router.add_post("/slow", slow)
    app.router.add_post("/dead", dead)
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(lambda: SMTP(Mail()), "127.0.0.1", 0)
    smtp_port = smtp.sockets[0].getsockname()[1]
    mail = f"mailto://127.0.0.1:{smtp_port}?mode=insecure&from=jh@example.com&to=ops@example.com"
    try:
        async with serving(app) as port:
            hooks = {name: f"json://127.0.0.1:{port}/{name}" for name in ("chat", "slow", "dead")}
            yield got, {**hooks, "mail": mail}
    finally:
        smtp.close()


async def burst(
    python: str,
    base: str,
    count: int = 500,
    late_after: float = 20.0,
    window: float = 90.0,
    code: Path | None = None,
) -> dict[str, Any]:
    """Run one daemon (this tree's, or the older one at ``code``) through the burst."""
    async with sinks() as (got, urls):
        with tempfile.TemporaryDirectory(prefix="jh-burst-") as tmp:
            start = time.time() + 8.0  # the daemon has started and polled by then
            flips = {
                f"flip-{int((start + i / count) * 1000)}-{i}": start + i / count
                for i in range(count)
            }
            late_at = start + late_after
            late = f"flip-{int(late_at * 1000)}-{count}"
            config = write_config(
                Path(tmp),
                base,
                [*flips, late],
                {
                    "chat": [urls["chat"]],
                    "mail": [urls["mail"]],
                    "hooks": [urls["slow"], urls["dead"]],
                },
                concurrency=32,
            )
            async with daemon(python, config, code):
                deadline = late_at + window
                while time.time() < deadline:
                    mailed = {e for _, ids in got.emails for e in ids}
                    if len(got.chat) > count and len(mailed) > count:
                        break
                    await asyncio.sleep(0.2)
            jobs = job_of_events(Path(tmp) / "bench.db")
    chat = {jobs[e]: at for e, at in got.chat.items() if e in jobs}
    delays = [chat[j] - at for j, at in flips.items() if j in chat]
    last_flip = max(flips.values())
    mailed = {jobs[e] for _, ids in got.emails for e in ids if e in jobs}
    return {
        "count": count,
        "window": window,
        "chat_received": len(delays),
        "chat_messages": got.chat_messages,
        "chat_p50": pct(delays, 0.5),
        "chat_p99": pct(delays, 0.99),
        "chat_all": (max(chat[j] for j in flips) - last_flip) if len(delays) == count else None,
        "late": chat[late] - late_at if late in chat else None,
        "emails": len(got.emails),
        "emailed_jobs": len(mailed & (set(flips) | {late})),
        "slow_messages": got.slow_messages,
        "dead_attempts": got.dead_attempts,
    }


def rows(label: str, f: dict[str, Any]) -> list[tuple[str, str]]:
    """Table rows of one run's figures."""
    total = f["count"] + 1
    window = (
        f"> {f['window']:.0f} s after the late job ({f['chat_received']} of {f['count']} by then)"
    )
    return [
        (
            f"{label}: chat, finish to message p50 / p99",
            f"{f['chat_p50']:.2f} s / {f['chat_p99']:.2f} s",
        ),
        (
            f"{label}: chat, until every finished job had its message",
            f"{f['chat_all']:.2f} s after the last finish" if f["chat_all"] is not None else window,
        ),
        (f"{label}: chat messages for {total} events", f"{f['chat_messages']}"),
        (
            f"{label}: the job finishing 20 s later, finish to chat",
            f"{f['late']:.2f} s" if f["late"] is not None else "not received in the window",
        ),
        (
            f"{label}: emails / events they carried",
            f"{f['emails']} / {f['emailed_jobs']} of {total}",
        ),
        (
            f"{label}: 3 s webhook messages / dead webhook attempts",
            f"{f['slow_messages']} / {f['dead_attempts']}",
        ),
    ]
