"""Messages: the default title and body of one event, and of a digest of many."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from jobherald.config import Source
from jobherald.errors import FetchError
from jobherald.model import EventKind, counted, format_duration

if TYPE_CHECKING:
    from jobherald.payload import EventPayload
    from jobherald.sources.base import Advice

_NOTIFY_TYPES = {
    "succeeded": "success",
    "failed": "failure",
    "stalled": "warning",
    "lost": "warning",
    "error": "warning",
    "archived": "success",
}


@dataclass(frozen=True, slots=True)
class Message:
    title: str
    body: str
    notify_type: str


def notify_type(kind: str) -> str:
    return _NOTIFY_TYPES.get(kind, "info")


def advice(kind: EventKind, error: FetchError | None, source: Source, words: Advice) -> str | None:
    """What a person can do about an event, or None when nothing is needed; ``words``
    are the source type's own (its console, its API, what to check)."""
    if kind is EventKind.STALLED:
        return f"Look at the job in {words.console}; jobherald keeps watching it."
    if kind is EventKind.LOST:
        return (
            "The job may have been deleted, or its id or instance_id is wrong. "
            "jobherald has stopped polling it."
        )
    if kind is not EventKind.ERROR or error is None:
        return None
    if error.throttled:
        return (
            f"{source.endpoint} asks to be polled less often (HTTP {error.status}): every job "
            f"of source {source.name} waits as long as it asks. Lower max_rate of the source, "
            "or ask for a higher quota."
        )
    if error.source_wide:
        return words.credentials(error, source)
    if error.kind in ("timeout", "connection"):
        return f"Check that {source.endpoint} is reachable from this machine."
    if error.kind == "body":
        return f"{source.endpoint} does not answer like {words.api}: check endpoint."
    if error.status == 403:
        return words.forbidden
    if error.status in (400, 404):
        return words.not_found
    return "The service is failing; jobherald keeps trying, less often while it fails."


def default_message(
    kind: str, event_id: str, payload: EventPayload, body_format: str = "text"
) -> Message:
    """The title, body and apprise notify type of one event, the body written for its
    format (upstream text escaped for html and markdown, channel mentions neutralised)."""
    message = _default_text(kind, event_id, payload)
    return Message(
        neutral(message.title), formatted(message.body, body_format), message.notify_type
    )


def _default_text(kind: str, event_id: str, payload: EventPayload) -> Message:
    event = payload.get("event", {})
    if payload.get("job") is None:
        return _render_source(kind, event_id, event, payload.get("source") or {})
    job = payload["job"]
    name = job.get("name") or job.get("id") or "?"
    lines = [_headline(kind, name, event), f"id: {job.get('id')}"]
    if job.get("type"):
        lines.append(f"type: {job['type']}")
    if job.get("source"):
        lines.append(f"source: {job['source']}")
    progress = job.get("progress")
    if kind in ("started", "progress", "stalled") and progress is not None:
        lines.append(f"progress: {progress * 100:.0f}%")
    duration = format_duration(job.get("duration"))
    if duration:
        lines.append(f"duration: {duration}")
    if job.get("archive_id") and kind in ("succeeded", "archived"):
        lines.append(f"archive_id: {job['archive_id']}")
    if kind == "archived" and job.get("archive_path"):
        lines.append(f"archive: {job['archive_path']}")
        lines.append(f"size: {_size(job.get('archive_size'))}")
        lines.append(f"sha256: {job.get('archive_sha256')}")
    if kind == "error" and job.get("error"):
        lines.append(f"error: {job['error']}")
    if job.get("link"):
        lines.append(f"link: {job['link']}")
    reasons = job.get("reasons") or []
    if kind == "failed":
        if reasons:
            lines.append(f"{counted(reason_count(reasons), 'reason')}:")
            lines.extend(f"- {reason_line(r)}" for r in reasons)
        else:
            lines.append("reasons: none given by the service")
    if event.get("advice"):
        lines += ["", str(event["advice"])]
    lines += ["", f"event {event_id}"]
    return Message(f"{name} {kind}", "\n".join(lines), notify_type(kind))


def _headline(kind: str, name: str, event: Mapping[str, Any]) -> str:
    detail = event.get("detail")
    if kind in ("succeeded", "failed", "started", "archived") or not detail:
        return f"Job {name} {kind}."
    if kind == "error" and event.get("about") == "archive":
        return f"Keeping the archive of job {name} fails: {detail}."
    if kind == "error":
        return f"Polling job {name} fails: {detail}."
    if kind == "recovered":
        return f"Polling job {name} works again: {detail}."
    if kind == "lost":
        return f"Job {name} is lost: {detail}."
    if kind == "progress":
        return f"Job {name}: {detail}."
    return f"Job {name} {kind}: {detail}."


def _render_source(
    kind: str, event_id: str, event: Mapping[str, Any], source: Mapping[str, Any]
) -> Message:
    name = source.get("name", "?")
    if kind == "recovered":
        lines = [f"Source {name} works again: {event.get('detail')}."]
    else:
        lines = [f"Source {name}: {event.get('detail')}.", f"error: {source.get('error')}"]
    lines.append(f"endpoint: {source.get('endpoint')}")
    lines.append(f"auth: {source.get('auth')}")
    if event.get("advice"):
        lines += ["", str(event["advice"])]
    lines += ["", f"event {event_id}"]
    return Message(f"source {name} {kind}", "\n".join(lines), notify_type(kind))


def _size(value: Any) -> str:
    if not isinstance(value, int):
        return "unknown"
    size = float(value)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{value} bytes" if unit == "bytes" else f"{size:.1f} {unit} ({value} bytes)"
        size /= 1024
    raise AssertionError("unreachable")


_MORE = re.compile(r"^and ([\d,]+) more$")


def reason_count(reasons: Sequence[Mapping[str, Any]]) -> int:
    """How many reasons the upstream gave: the kept ones, and those the last one counts
    when the list was capped ("and 2,981 more")."""
    more = _MORE.match(str(reasons[-1].get("error_msg") or "")) if reasons else None
    if more is None or any(reasons[-1].get(k) for k in ("resource_type", "resource_name")):
        return len(reasons)
    return len(reasons) - 1 + int(more[1].replace(",", ""))


def reason_line(reason: Mapping[str, Any]) -> str:
    """One failure reason as people read it: ``app orders: E42: message`` (what of it
    there is)."""
    where = " ".join(str(reason[k]) for k in ("resource_type", "resource_name") if reason.get(k))
    what = ": ".join(str(reason[k]) for k in ("error_code", "error_msg") if reason.get(k))
    if where and what:
        return f"{where}: {what}"
    return where or what or "(no details)"


# A digest: the kinds in its title in this order, at most this many event lines (each cut
# to one line of this width), and the apprise type of its worst event.
KIND_ORDER = tuple(kind.value for kind in EventKind)
DIGEST_LINES = 50
LINE_WIDTH = 200
_WORST_FIRST = ("failure", "warning", "success", "info")


@dataclass(frozen=True, slots=True)
class Item:
    """One event as the outbox holds it."""

    kind: str
    event_id: str
    payload: EventPayload


def digest_counts(items: Sequence[Item]) -> dict[str, int]:
    """Events per kind, in the fixed order of kinds."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item.kind] = counts.get(item.kind, 0) + 1
    order = {kind: i for i, kind in enumerate(KIND_ORDER)}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def digest_type(items: Sequence[Item]) -> str:
    """The apprise notify type of a digest: that of its most serious event."""
    types = {notify_type(item.kind) for item in items}
    return next((t for t in _WORST_FIRST if t in types), "info")


def default_digest(items: Sequence[Item], public_url: str | None, body_format: str) -> Message:
    """One message for many events: ``12 jobs: 10 succeeded, 2 failed``, a line per
    event (at most DIGEST_LINES, then how many more), links to the status page when
    ``public_url`` is set, and every event id in one footer line."""
    counts = digest_counts(items)
    noun = "jobs" if all(item.payload.get("job") is not None for item in items) else "events"
    title = f"{len(items)} {noun}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items())
    lines = [_digest_line(item, public_url, body_format) for item in items[:DIGEST_LINES]]
    if len(items) > DIGEST_LINES:
        lines.append(f"and {len(items) - DIGEST_LINES} more")
    footer = []
    if public_url:
        footer.append(f"status page: {_link(public_url + '/', public_url + '/', body_format)}")
    footer.append("events " + " ".join(item.event_id for item in items))
    if body_format == "html":
        body = "<br>\n".join([*lines, "", *footer])
    else:
        body = "\n".join([*lines, "", *footer])
    return Message(title, body, digest_type(items))


def _digest_line(item: Item, public_url: str | None, body_format: str) -> str:
    if item.kind in ("summary", "report"):  # held by a quiet, or a digest's neighbour
        said: Any = item.payload
        return f"- {_escaped(str(said.get('title') or item.kind), body_format)}"
    job = item.payload.get("job")
    event = item.payload.get("event") or {}
    if job is None:
        source = item.payload.get("source") or {}
        subject = f"source {source.get('name', '?')}"
        said = event.get("detail") or source.get("error")
        detail = f": {said}" if said else ""
        url = None
    else:
        subject = str(job.get("name") or job.get("id"))
        detail = _event_detail(item.kind, job, event)
        key = str(job.get("key") or job.get("id"))
        url = f"{public_url}/jobs/{quote(key, safe='')}" if public_url else None
    text = _one_line(f"{subject}: {item.kind}{detail}")
    if url is None:
        return f"- {_escaped(text, body_format)}"
    if body_format == "text" or not text.startswith(subject):
        return f"- {_escaped(text, body_format)} {_link(url, url, body_format)}"
    return f"- {_link(subject, url, body_format)}{_escaped(text[len(subject) :], body_format)}"


def _event_detail(kind: str, job: Mapping[str, Any], event: Mapping[str, Any]) -> str:
    """What one line says after the kind: a duration, the first reason, or the detail."""
    reasons = job.get("reasons") or []
    if kind == "failed" and reasons:
        more = reason_count(reasons) - 1
        return ": " + reason_line(reasons[0]) + (f" (and {more} more)" if more > 0 else "")
    if kind in ("succeeded", "failed", "archived"):
        duration = format_duration(job.get("duration"))
        return f" in {duration}" if duration else ""
    if kind == "error" and job.get("error"):
        return f": {job['error']}"
    detail = event.get("detail")
    return f": {detail}" if detail else ""


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= LINE_WIDTH else flat[: LINE_WIDTH - 1] + "…"


# Mentions that would ping a whole channel (Slack's <!channel>, <!here>, <!everyone>;
# Discord's and others' @everyone, @here, @channel): a zero-width space breaks each.
_MENTION = re.compile(r"<(?=!(?:channel|here|everyone)\b)|@(?=(?:everyone|here|channel)\b)", re.I)
# What markdown reads as markup (raw HTML included): each shown as itself.
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+!|<>~])")


def neutral(text: str) -> str:
    """Text with its channel mentions neutralised."""
    return _MENTION.sub(lambda m: m[0] + "\u200b", text)


def _escaped(text: str, body_format: str) -> str:
    """Text that may hold upstream words, as the format shows text (no markup taken)."""
    text = neutral(text)
    if body_format == "html":
        return html.escape(text, quote=False)
    if body_format == "markdown":
        return _MARKDOWN.sub(r"\\\1", text)
    return text


def formatted(body: str, body_format: str) -> str:
    """A body of plain lines written for its format: each line's text escaped (a list's
    "- " kept), lines broken with <br> in html."""
    lines = []
    for line in body.split("\n"):
        bullet = "- " if line.startswith("- ") and body_format == "markdown" else ""
        lines.append(bullet + _escaped(line[len(bullet) :], body_format))
    return ("<br>\n" if body_format == "html" else "\n").join(lines)


def _link(text: str, url: str, body_format: str) -> str:
    if body_format == "html":
        return f'<a href="{html.escape(url)}">{_escaped(text, body_format)}</a>'
    if body_format == "markdown":
        target = url.replace("(", "%28").replace(")", "%29").replace(" ", "%20")
        return f"[{_escaped(text, body_format)}]({target})"
    return url
