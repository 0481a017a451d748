"""The daemon's HTTP listener, in its own event loop: health, metrics, the JSON API and
the status page.

``/healthz`` and ``/readyz`` are open; every other route needs the token when one is
set, as ``Authorization: Bearer TOKEN`` (scripts, Prometheus) or as the password of
HTTP basic authentication (a browser asks for it once).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from jobherald.errors import ListenError
from jobherald.http.guard import Door

if TYPE_CHECKING:
    from collections.abc import Sequence

    from jobherald.config import Config
    from jobherald.metrics import Metrics
    from jobherald.quiet import Silence
    from jobherald.report import JobStatus
    from jobherald.schedule.pool import Pool
    from jobherald.schedule.reporter import Reporter
    from jobherald.store import JobFilter, Store


class Served(Protocol):
    """What the listener reads of the daemon it serves (and nothing more)."""

    config: Config
    ready: bool
    metrics: Metrics
    # Sends the scheduled reports (the page shows their next runs); None until started.
    reporter: Reporter | None

    @property
    def store(self) -> Store | None:
        """The database, once the daemon has started."""

    @property
    def pool(self) -> Pool | None:
        """The pollers, once the daemon has started."""

    def problem(self) -> str | None:
        """Why the daemon is not healthy now (None: it is)."""


log = logging.getLogger(__name__)

OPEN = frozenset({"/healthz", "/readyz"})
# Methods that write: they need [http] api_token_file's token (not the read token).
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What a POST /api/silences body may hold: the command line's names.
SILENCE_KEYS = frozenset(
    {"job", "source", "notifier", "kind", "all", "for", "until", "reason", "by"}
)
# Rows on a page or in one answer of /api/jobs: by default, and at most.
PAGE = 100
# /healthz says "degraded" while a message has been due longer than this (seconds).
LANE_LATE = 600.0
# ?removed=: watched jobs (the default), removed ones only, or both.
_REMOVED: dict[str, bool | None] = {"": False, "0": False, "1": True, "all": None}
MAX_PAGE = 1000
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a NUL in its path, a broken header) at
    ERROR with a traceback: anyone who can connect could fill the journal. Such a record
    becomes one warning line, at most one a minute (saying how many were not logged)."""

    EVERY = 60.0

    def __init__(self) -> None:
        super().__init__()
        self.last = float("-inf")
        self.hidden = 0

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = time.monotonic()
        if now - self.last < self.EVERY:
            self.hidden += 1
            return False
        lines = [ln.strip() for ln in str(exc.message).splitlines() if ln.strip()]
        why = (lines[0] if lines else type(exc).__name__).rstrip(":")[:200]
        more = f" ({self.hidden} more since, not logged)" if self.hidden else ""
        record.msg = "refused a malformed HTTP request (%s)%s"
        record.args = (why, more)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self.last, self.hidden = now, 0
        return True


class HttpServer:
    """Serves one daemon's routes; ``start`` binds (or raises ListenError), ``stop`` closes."""

    def __init__(self, daemon: Served) -> None:
        from jobherald.http import pages

        self.daemon = daemon
        http = daemon.config.http
        assert http is not None
        self.config = http
        self.app = web.Application(middlewares=[self._guard])
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/api/jobs", self._api_jobs)
        self.app.router.add_get("/api/counts", self._api_counts)
        self.app.router.add_get("/api/jobs/{job_id:.+}/history", self._api_history)
        self.app.router.add_get("/api/replicas", self._api_replicas)
        self.app.router.add_get("/api/silences", self._api_silences)
        self.app.router.add_post("/api/silences", self._api_silence_add)
        self.app.router.add_delete("/api/silences/{silence_id}", self._api_silence_expire)
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/jobs/{job_id:.+}", self._job)
        self.app.router.add_get("/static/{name}", self._static)
        self.pages = pages
        self._runner: web.AppRunner | None = None
        self._failing = False
        self._malformed = MalformedRequests()
        self._listener: asyncio.AbstractServer | None = None
        self.door = Door(http.header_timeout, http.max_connections)

    async def start(self) -> None:
        logging.getLogger("aiohttp.server").addFilter(self._malformed)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        assert self._runner.server is not None
        try:
            self._listener = await loop.create_server(
                self.door.factory(self._runner.server),
                self.config.host,
                self.config.port,
                reuse_address=True,
            )
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenError(
                f"http.listen: cannot listen on {self.config.host}:{self.config.port}: "
                f"{why.lower()} (another jobherald? give [http] listen "
                'another port, or "" to turn the listener off)'
            ) from None
        log.info("status page, metrics and API at %s/", self.config.address)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
        logging.getLogger("aiohttp.server").removeFilter(self._malformed)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # The request head is in: its connection's header_timeout waits for the next one.
        self.door.busy(request.protocol)
        try:
            return await self._answer(request, handler)
        finally:
            self.door.idle(request.protocol)

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # A write carries the API token instead (checked by its handler).
        writing = request.method in WRITES
        if request.path not in OPEN and not writing and not self._allowed(request):
            return web.Response(
                status=401,
                text="401: this needs the token of [http] (Authorization: Bearer TOKEN)\n",
                headers={
                    "WWW-Authenticate": 'Basic realm="jobherald", charset="UTF-8"',
                    **SECURITY_HEADERS,
                },
            )
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            # A 400, 404 or 405 says so with the headers every answer carries.
            exc.headers.update(SECURITY_HEADERS)
            raise
        except Exception as exc:
            # The database away (a restart, a network cut): one line per outage.
            if not self._failing:
                log.warning(
                    "HTTP %s failed: %s", request.path, f"{type(exc).__name__}: {exc}"[:200]
                )
            self._failing = True
            return web.Response(
                status=503,
                text="503: the database cannot be read now\n",
                headers=SECURITY_HEADERS,
            )
        self._failing = False
        response.headers.update(SECURITY_HEADERS)
        return response

    def _allowed(self, request: web.Request) -> bool:
        token = self.config.token
        if token is None:
            return True
        expected = token.get_secret_value().encode()
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() == "bearer":
            return hmac.compare_digest(value.strip().encode(), expected)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(decoded.partition(b":")[2], expected)
        return False

    async def _healthz(self, request: web.Request) -> web.Response:
        problem = self.daemon.problem()
        if problem is not None:
            return web.Response(status=503, text=f"stuck: {problem}\n")
        store = self.daemon.store
        late = await store.overdue(LANE_LATE) if store is not None else None
        if late is not None:
            notifier, since = late
            minutes = (datetime.now(UTC) - since).total_seconds() / 60
            return web.Response(
                status=503,
                text=f"degraded: a message to notifier {notifier} has been due for "
                f"{minutes:.0f} minutes\n",
            )
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.daemon.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="starting\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        store = self.daemon.store
        if store is not None:
            try:
                metrics = self.daemon.metrics
                metrics.notifiers = tuple(self.daemon.config.notifiers)
                metrics.deliveries_pending = await store.pending_by_notifier()
            except Exception as exc:  # the database away: the rest still counts
                log.debug("counting pending deliveries failed: %s", exc)
        return web.Response(
            body=self.daemon.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _page(
        self, request: web.Request, active: Sequence[Silence] | None = None
    ) -> tuple[list[JobStatus], str | None, JobFilter]:
        """The page of jobs a request asks for (``limit``, ``cursor``, ``state``, ``source``,
        ``q``), read from the database: filtered, sorted and cut there, each row a silence
        in force holds marked (``active``: those silences, when read already); and the next
        page's cursor (None: the last page)."""
        from jobherald.report import page_rows
        from jobherald.store import JobFilter

        query = request.query
        try:
            limit = int(query.get("limit") or PAGE)
        except ValueError:
            raise _bad("limit must be a whole number") from None
        if not 1 <= limit <= MAX_PAGE:
            raise _bad(f"limit must be between 1 and {MAX_PAGE}")
        after = _cursor(query.get("cursor"))
        removed = query.get("removed") or ""
        if removed not in _REMOVED:
            raise _bad("removed must be 1 (removed jobs only) or all (watched and removed)")
        wanted = JobFilter(
            state=query.get("state") or None,
            source=query.get("source") or None,
            text=(query.get("q") or "").strip()[:200] or None,
            removed=_REMOVED[removed],
        )
        store = self.daemon.store
        if store is None:
            return [], None, wanted
        rows, following = await page_rows(self.daemon.config, store, wanted, limit, after)
        if rows:
            _mark_silenced(rows, active if active is not None else await self._active_silences())
        return rows, _encode_cursor(following), wanted

    async def _active_silences(self) -> list[Silence]:
        store = self.daemon.store
        if store is None:
            return []
        now = datetime.now(UTC)
        return [s for s in await store.open_silences() if s.active(now)]

    async def _api_jobs(self, request: web.Request) -> web.StreamResponse:
        rows, following, _ = await self._page(request)
        body = json.dumps(rows).encode()
        tag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        headers = {"ETag": tag}
        if following is not None:
            url = request.rel_url.update_query({"cursor": following})
            headers["Link"] = f'<{url}>; rel="next"'
        if tag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def _api_counts(self, request: web.Request) -> web.Response:
        store = self.daemon.store
        source = request.query.get("source") or None
        counts = await store.state_counts(source) if store is not None else {}
        removed = await store.removed_count(source) if store is not None else 0
        # "all": the watched jobs; those that left the config apart.
        return web.json_response({"all": sum(counts.values()), **counts, "removed": removed})

    async def _api_history(self, request: web.Request) -> web.Response:
        from jobherald.report import configured_jobs, history_rows

        job_id = request.match_info["job_id"]
        store = self.daemon.store
        items = await history_rows(store, job_id) if store is not None else None
        if items is None:
            if job_id in configured_jobs(self.daemon.config):
                return web.json_response([])
            if store is not None and await store.pruned_job(job_id) is not None:
                why = f"the history of job {job_id!r} was pruned after keep_history"
                return web.json_response({"error": why}, status=404)
            return web.json_response({"error": f"no job {job_id!r}"}, status=404)
        return web.json_response(items)

    async def _api_replicas(self, request: web.Request) -> web.Response:
        from jobherald.report import replica_rows

        store = self.daemon.store
        return web.json_response(await replica_rows(store) if store is not None else [])

    def _write_refusal(self, request: web.Request) -> web.Response | None:
        """Why this write is refused (403: the API takes none; 401: not its token)."""
        token = self.config.api_token
        if token is None:
            return web.json_response(
                {"error": "this API takes no writes: give [http] api_token_file to allow them"},
                status=403,
            )
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        given = value.strip().encode() if scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(given, token.get_secret_value().encode()):
            return web.json_response(
                {
                    "error": "writes need the token of [http] api_token_file "
                    "(Authorization: Bearer TOKEN)"
                },
                status=401,
            )
        return None

    async def _api_silences(self, request: web.Request) -> web.Response:
        store = self.daemon.store
        now = datetime.now(UTC)
        shown = await store.silences_shown() if store is not None else []
        return web.json_response([silence.as_json(now) for silence in shown])

    async def _api_silence_add(self, request: web.Request) -> web.Response:
        from jobherald.quiet import SilenceError, silence_fields, silence_span

        if (refusal := self._write_refusal(request)) is not None:
            return refusal
        store = self.daemon.store
        if store is None:
            return web.json_response({"error": "not started yet"}, status=503)
        try:
            body = await request.json(loads=json.loads)
        except ValueError:
            raise _bad("the body is not JSON") from None
        if not isinstance(body, dict):
            raise _bad("the body is not a JSON object")
        unknown = sorted(set(body) - SILENCE_KEYS)
        if unknown:
            raise _bad(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(SILENCE_KEYS))})")
        texts = {
            k: body.get(k) for k in ("job", "source", "notifier", "for", "until", "reason", "by")
        }
        if any(v is not None and not isinstance(v, str) for v in texts.values()):
            raise _bad(
                f"{next(k for k, v in texts.items() if v is not None and not isinstance(v, str))}: give a string"
            )
        kinds = body.get("kind", [])
        kinds = [kinds] if isinstance(kinds, str) else kinds
        everything = body.get("all", False)
        if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
            raise _bad("kind: give a kind or a list of kinds")
        if not isinstance(everything, bool):
            raise _bad("all: give true or false")
        config = self.daemon.config
        now = datetime.now(UTC)
        try:
            fields = silence_fields(
                config.sources,
                config.notifiers,
                job=texts["job"],
                source=texts["source"],
                notifier=texts["notifier"],
                kinds=kinds,
                everything=everything,
                reason=texts["reason"],
            )
            starts, ends = silence_span(texts["for"], texts["until"], now)
        except SilenceError as exc:
            raise _bad(exc.said("")) from None
        added = await store.add_silence(
            **fields,
            starts_at=starts,
            ends_at=ends,
            created_by=(texts["by"] or "api")[:128],
            now=now,
        )
        log.info(
            "silence %d added through the API by %s: %s",
            added.id,
            added.created_by,
            added.matchers(),
        )
        return web.json_response(added.as_json(now), status=201)

    async def _api_silence_expire(self, request: web.Request) -> web.Response:
        if (refusal := self._write_refusal(request)) is not None:
            return refusal
        store = self.daemon.store
        if store is None:
            return web.json_response({"error": "not started yet"}, status=503)
        try:
            silence_id = int(request.match_info["silence_id"])
        except ValueError:
            raise _bad("a silence's id is a number") from None
        now = datetime.now(UTC)
        found = await store.expire_silence(silence_id, now) if 0 < silence_id < 2**62 else None
        if found is None:
            return web.json_response({"error": f"no silence {silence_id}"}, status=404)
        return web.json_response(found.as_json(now))

    async def _index(self, request: web.Request) -> web.Response:
        pending: dict[str, int] = {}
        if self.daemon.store is not None:
            try:
                pending = await self.daemon.store.pending_by_notifier()
            except Exception as exc:  # the database away: the page still shows the jobs
                log.debug("counting pending deliveries failed: %s", exc)
        pool = self.daemon.pool
        throttled = pool.gates.throttled() if pool is not None and pool.gates is not None else {}
        silences = await self._active_silences()
        rows, following, wanted = await self._page(request, silences)
        store = self.daemon.store
        counts = await store.state_counts() if store is not None else {}
        removed = await store.removed_count() if store is not None else 0
        html = self.pages.index(
            self.daemon.config,
            rows,
            counts,
            wanted,
            silences=silences,
            reports=self._next_reports(),
            removed=removed,
            following=request.rel_url.update_query({"cursor": following}) if following else None,
            pending=pending,
            throttled=throttled,
        )
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    def _next_reports(self) -> dict[str, str]:
        """Each report's next run, as the page shows it."""
        reporter = self.daemon.reporter
        if reporter is None:
            return {}
        return {
            name: at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if at else "never"
            for name, at in sorted(reporter.next_runs().items())
        }

    async def _job(self, request: web.Request) -> web.Response:
        from jobherald.report import history_rows, one_row

        job_id = request.match_info["job_id"]
        row = await one_row(self.daemon.config, self.daemon.store, job_id)
        if row is None:
            html = self.pages.not_found(job_id)
            return web.Response(status=404, text=html, content_type="text/html", charset="utf-8")
        store = self.daemon.store
        history = (await history_rows(store, job_id) if store is not None else None) or []
        html = self.pages.job(self.daemon.config, row, history)
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    async def _static(self, request: web.Request) -> web.Response:
        found = self.pages.static(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        return web.Response(body=body, content_type=content_type, charset="utf-8")


def _mark_silenced(rows: list[JobStatus], active: Sequence[Silence]) -> None:
    """``"silenced": ID`` on each row a silence in force holds messages of."""
    for row in rows:
        held = next(
            (s.id for s in active if s.matches_job(row["name"], row["key"], row["source"])),
            None,
        )
        if held is not None:
            row["silenced"] = held  # type: ignore[typeddict-unknown-key]


def _bad(why: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": why}), content_type="application/json")


def _encode_cursor(key: tuple[Any, ...] | None) -> str | None:
    if key is None:
        return None
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def _cursor(value: str | None) -> tuple[int, str, str] | None:
    """A page's cursor as the store takes it: the sort key of the last row shown."""
    if not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        key = json.loads(raw)
        rank, name, job_id = key
        if not (isinstance(rank, int) and isinstance(name, str) and isinstance(job_id, str)):
            raise ValueError
        from jobherald.store import STATE_ORDER

        if isinstance(rank, bool) or not 0 <= rank <= len(STATE_ORDER):
            raise ValueError  # a state's place in the listing: no other number is one
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise _bad("cursor is not one this server gave") from None
    return rank, name, job_id
