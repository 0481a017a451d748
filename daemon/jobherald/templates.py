"""Message templates: sandboxed Jinja2 over a documented event object.

A template sees ``event`` (kind, id, at, detail, advice) and ``job`` (id, name,
source, type, state, previous_state, raw_status, progress, archive_id, reasons,
begin_time, end_time, duration, error, link, eta, typical_duration, and for a kept
export archive_path, archive_size, archive_sha256); for an event about a whole source,
``job`` names the source and ``source`` holds its name, endpoint, auth and error.
Unknown names are errors, so a typo is found by ``check-config``, not at 3 a.m.

A digest's templates (``digest_title``, ``digest_body``) see ``events``, a list whose
items hold what a single event's template sees (``event``, ``job``, ``source``),
``counts`` (event kind -> number) and ``public_url`` (or None).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from jobherald.errors import TemplateProblem
from jobherald.model import MAX_REASONS

FORMATS = ("text", "markdown", "html")

JOB_FIELDS = (
    "id",
    "key",
    "name",
    "source",
    "instance_id",
    "type",
    "state",
    "previous_state",
    "raw_status",
    "progress",
    "archive_id",
    "reasons",
    "begin_time",
    "end_time",
    "duration",
    "error",
    "link",
    "archive_path",
    "archive_size",
    "archive_sha256",
    "eta",
    "typical_duration",
)


# The most a ``*`` may make (a text, a list) and the largest exponent of ``**``: beyond
# these a template would spend its memory or time in one operation.
MAX_PRODUCT = 1024 * 1024
MAX_EXPONENT = 1000


class _Bounded(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, with ``*`` and ``**`` bounded."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"an exponent above {MAX_EXPONENT} is not allowed")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_PRODUCT
                ):
                    raise SecurityError(f"a product over {MAX_PRODUCT} items is not allowed")
        return super().call_binop(context, operator, left, right)


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    env = _Bounded(
        undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True
    )
    env.filters["percent"] = lambda value: "-" if value is None else f"{float(value) * 100:.0f}%"
    env.filters["duration"] = _duration_filter
    return env


def _duration_filter(value: Any) -> str:
    from jobherald.model import format_duration

    return format_duration(float(value)) or "-" if value is not None else "-"


@lru_cache(maxsize=256)
def compile_template(text: str) -> Any:
    """A compiled template, kept: a notifier's template is compiled once, not per message."""
    try:
        return environment().from_string(text)
    except TemplateError as exc:
        raise TemplateProblem(f"template does not compile: {exc}") from None


# The kind a digest is rendered as; its payload holds ``events``, a list of
# ``(kind, event_id, payload)``, and ``public_url``.
DIGEST = "digest"


# The kind a report's templates are rendered as; they see ``report`` (see report_sample).
REPORT = "report"


def context(kind: str, event_id: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The names a template sees, for an event as stored in the outbox (or a digest)."""
    if kind == REPORT:
        return {"report": payload["report"]}
    if kind == DIGEST:
        items = [context(k, i, p) for k, i, p in payload["events"]]
        from jobherald.model import EventKind

        counts = {kind.value: 0 for kind in EventKind}
        for item in items:
            counts[item["event"]["kind"]] = counts.get(item["event"]["kind"], 0) + 1
        return {"events": items, "counts": counts, "public_url": payload.get("public_url")}
    event = dict(payload.get("event") or {})
    event.setdefault("kind", kind)
    event.setdefault("detail", None)
    event.setdefault("advice", None)
    event.setdefault("at", None)
    event["id"] = event_id
    source = payload.get("source")
    job = payload.get("job")
    if job is None:
        source = dict(source or {})
        job = {name: None for name in JOB_FIELDS}
        job.update(
            {
                "id": "",
                "name": f"source {source.get('name')}",
                "source": source.get("name"),
                "reasons": [],
                "error": source.get("error"),
            }
        )
    else:
        job = {**{name: None for name in JOB_FIELDS}, **job}
        source = {"name": job.get("source"), "endpoint": None, "auth": None, "error": None}
    return {"event": event, "job": job, "source": source}


def fill(
    template: Any,
    kind: str,
    event_id: str,
    payload: Mapping[str, Any],
    limit: int | None = None,
) -> str:
    """The template's text for one event; with ``limit``, a TemplateProblem as soon as
    the text passes ``limit`` characters."""
    try:
        if limit is None:
            return str(template.render(context(kind, event_id, payload))).strip()
        pieces: list[str] = []
        size = 0
        for piece in template.generate(context(kind, event_id, payload)):
            size += len(piece)
            if size > limit:
                raise TemplateProblem(f"template renders more than {limit // 1024} KB")
            pieces.append(piece)
        return "".join(pieces).strip()
    except TemplateProblem:
        raise
    except TemplateError as exc:
        raise TemplateProblem(f"template does not render: {exc}") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise TemplateProblem(f"template does not render: {type(exc).__name__}: {exc}") from None


SAMPLE_EVENT_ID = "0123456789abcdef0123456789abcdef"


def samples() -> list[tuple[str, dict[str, Any]]]:
    """Events of every shape, to try a template on before it is needed."""
    job = {
        "id": "ff8080814dbd65d7014dbe0d84db0013",
        "name": "nightly export",
        "source": "exports-prod",
        "instance_id": "ab12",
        "type": "exportAsset",
        "state": "succeeded",
        "previous_state": "running",
        "raw_status": "SUCCEEDED",
        "progress": 1.0,
        "archive_id": "ff8080814dbd65d7014dbe0d84db0014",
        "reasons": [],
        "begin_time": "2026-01-01T00:00:00+00:00",
        "end_time": "2026-01-01T00:04:12+00:00",
        "duration": 252.0,
        "error": None,
        "link": "https://console.example.com/jobs/ff8080814dbd65d7014dbe0d84db0013",
        "archive_path": None,
        "archive_size": None,
        "archive_sha256": None,
        "eta": None,
        "typical_duration": 240.0,
    }
    running = {
        **job,
        "state": "running",
        "previous_state": "running",
        "raw_status": "RUNNING",
        "progress": 0.5,
        "archive_id": None,
        "end_time": None,
        "duration": None,
        "eta": "2026-01-01T00:08:00+00:00",
    }
    archived = {
        **job,
        "archive_path": "/var/lib/jobherald/archives/nightly export-ff80.zip",
        "archive_size": 48213,
        "archive_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    }
    failed = {
        **job,
        "state": "failed",
        "raw_status": "FAILED",
        "archive_id": None,
        # As many reasons as a job keeps: a template that is slow on them is refused early.
        "reasons": [
            {
                "resource_type": "task",
                "resource_name": f"sync{i}",
                "error_code": "E.1",
                "error_msg": "broken " * 40,
            }
            for i in range(MAX_REASONS)
        ],
    }
    pending = {name: None for name in JOB_FIELDS} | {
        "id": "j2",
        "name": "j2",
        "source": "exports-prod",
        "state": "pending",
        "previous_state": "pending",
        "reasons": [],
        "error": "HTTP 503: down",
    }
    event = {"at": "2026-01-01T00:04:13+00:00", "detail": "what happened", "advice": "what to do"}
    source = {
        "name": "exports-prod",
        "endpoint": "https://jobs.example.com",
        "auth": "token",
        "error": "HTTP 401: bad token",
        "error_since": None,
    }
    return [
        ("succeeded", {"event": {**event, "kind": "succeeded"}, "job": job}),
        ("failed", {"event": {**event, "kind": "failed"}, "job": failed}),
        ("archived", {"event": {**event, "kind": "archived"}, "job": archived}),
        ("progress", {"event": {**event, "kind": "progress"}, "job": running}),
        ("error", {"event": {**event, "kind": "error"}, "job": pending}),
        ("error", {"event": {**event, "kind": "error"}, "job": None, "source": source}),
    ]


# The sizes of digest a digest template is tried on.
DIGEST_SAMPLES = (1, 5, 200)


def digest_samples() -> list[dict[str, Any]]:
    """Digests of 1, 5 and 200 events, made of the sample events in turn."""
    events = samples()
    out = []
    for size in DIGEST_SAMPLES:
        picked = [events[i % len(events)] for i in range(size)]
        out.append(
            {
                "events": [
                    (k, f"{SAMPLE_EVENT_ID[:-4]}{i:04d}", p) for i, (k, p) in enumerate(picked)
                ],
                "public_url": "https://jobs.example.com",
            }
        )
    return out


def report_sample() -> dict[str, Any]:
    """A report as its templates see it (what reports.report_data makes): for check-config."""
    return {
        "name": "morning",
        "start": "2026-12-07T07:00:00Z",
        "end": "2026-12-08T07:00:00Z",
        "counts": {"succeeded": 480, "failed": 20, "lost": 3},
        "before": {"succeeded": 470, "failed": 4, "lost": 0},
        "failed": [
            {
                "name": f"pipeline {i:02d}",
                "key": f"job-{i}",
                "reason": "task sync-orders: E0427: The data source does not exist.",
                "new": i < 3,
                "url": None,
            }
            for i in range(20)
        ],
        "more_failed": 0,
        "slowest": [
            {"name": "nightly export", "key": "job-x", "seconds": 11400.0, "typical": 3900.0}
        ],
        "overdue": [{"name": "full backup", "key": "job-y", "running": 9000.0, "typical": 3600.0}],
        "sources": [{"name": "prod-api", "seconds": 2100.0, "error": "HTTP 503"}],
        "public_url": None,
    }
