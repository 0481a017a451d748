"""A report: what a window of history holds, gathered from the store, and the message
that tells it (in text, markdown or html; or the report's own templates).

The same two functions make what `jobherald report NAME` prints and what is queued when
the report is due: what is printed is what is sent."""

from __future__ import annotations

import asyncio
import fnmatch
import html
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from jobherald.config import Report
from jobherald.model import format_duration, typical_duration
from jobherald.notify.messages import Message, _escaped, _link, reason_line
from jobherald.store import ENDS, Ended, Store

FAILED_SHOWN = 20
SLOWEST_SHOWN = 5
OVERDUE_SHOWN = 10
FORMATS = ("text", "markdown", "html")


def _covered(report: Report, job: Ended | tuple[str, str]) -> bool:
    if report.jobs is None:
        return True
    names = (job.name, job.key) if isinstance(job, Ended) else job
    return any(fnmatch.fnmatchcase(n, p) for p in report.jobs for n in names)


def _url(public_url: str | None, key: str) -> str | None:
    return f"{public_url}/jobs/{quote(key, safe='')}" if public_url else None


async def report_data(
    store: Store,
    report: Report,
    start: datetime,
    end: datetime,
    now: datetime,
    public_url: str | None,
) -> dict[str, Any]:
    """The report of [start, end) as its templates see it (see templates.report_sample)."""
    ended = [
        e for e in await store.ended_between(start, end, report.sources) if _covered(report, e)
    ]
    earlier = [
        e
        for e in await store.ended_between(start - (end - start), start, report.sources)
        if _covered(report, e)
    ]
    counts, before = Counter(e.state for e in ended), Counter(e.state for e in earlier)
    failed = [e for e in ended if e.state == "failed"]
    failed_shown = []
    for job in failed[:FAILED_SHOWN]:
        previous = await store.previous_end(job)
        failed_shown.append(
            {
                "name": job.name,
                "key": job.key,
                "reason": reason_line(job.reasons[0]) if job.reasons else None,
                "new": previous == "succeeded",
                "url": _url(public_url, job.key),
            }
        )
    running = [
        r for r in await store.running_since(report.sources) if _covered(report, (r[1], r[0]))
    ]
    keys = {(e.name, e.source) for e in ended if e.state == "succeeded"}
    keys |= {(name, source) for _, name, source, _ in running}
    history = await store.durations_of(keys)

    def typical(name: str, source: str, but: str | None = None) -> float | None:
        return typical_duration([s for i, s in history.get((name, source), []) if i != but])

    slowest: list[dict[str, Any]] = []
    for job in ended:
        if job.state != "succeeded" or job.begin_time is None or job.end_time is None:
            continue
        seconds = (job.end_time - job.begin_time).total_seconds()
        usual = typical(job.name, job.source, job.key)
        if usual and seconds > usual:
            slowest.append({"name": job.name, "key": job.key, "seconds": seconds, "typical": usual})
    slowest.sort(key=lambda s: s["seconds"] / s["typical"], reverse=True)
    overdue: list[dict[str, Any]] = []
    for key, name, source, since in running:
        usual = typical(name, source)
        taken = (now - since).total_seconds()
        if usual and taken > usual:
            overdue.append({"name": name, "key": key, "running": taken, "typical": usual})
    overdue.sort(key=lambda o: o["running"] / o["typical"], reverse=True)
    sources = []
    for name, spells in sorted((await store.source_errors(start, end)).items()):
        if report.sources is not None and name not in report.sources:
            continue
        seconds = sum(
            (min(until or end, end) - max(since, start)).total_seconds()
            for since, until, _ in spells
        )
        sources.append({"name": name, "seconds": max(seconds, 0.0), "error": spells[-1][2]})
    return {
        "name": report.name,
        "start": start.isoformat().replace("+00:00", "Z"),
        "end": end.isoformat().replace("+00:00", "Z"),
        "counts": {state: counts[state] for state in ENDS if counts[state] or state != "lost"},
        "before": {state: before[state] for state in ENDS},
        "failed": failed_shown,
        "more_failed": max(0, len(failed) - FAILED_SHOWN),
        "slowest": slowest[:SLOWEST_SHOWN],
        "overdue": overdue[:OVERDUE_SHOWN],
        "sources": sources,
        "public_url": public_url,
        "zone": str(report.zone),
    }


def is_empty(data: Mapping[str, Any]) -> bool:
    """Nothing ended, nothing overdue, no source in error."""
    return not any(data["counts"].values()) and not data["overdue"] and not data["sources"]


def _when(text: str, zone: Any) -> str:
    return (
        datetime.fromisoformat(text.replace("Z", "+00:00"))
        .astimezone(zone)
        .strftime("%Y-%m-%d %H:%M")
    )


def _dur(seconds: float) -> str:
    return format_duration(seconds) or "0s"


def default_report(data: Mapping[str, Any], zone: Any, body_format: str) -> Message:
    """The report's message in ``body_format`` (text, markdown, html)."""
    counts, before = data["counts"], data["before"]
    said = ", ".join(f"{n} {state}" for state, n in counts.items())
    title = f"Report {data['name']}: {said if any(counts.values()) else 'nothing finished'}"
    span = f"From {_when(data['start'], zone)} to {_when(data['end'], zone)} ({zone})."
    if is_empty(data):
        return Message(
            title,
            _escaped(
                f"{span} Nothing finished, nothing is late, no source was in error.", body_format
            ),
            "info",
        )
    sections: list[tuple[str, list[str]]] = []
    totals = ", ".join(f"{n} {state}" for state, n in counts.items())
    earlier = ", ".join(f"{before.get(state, 0)} {state}" for state in counts)
    said_totals = f"{totals}; the window before: {earlier}."
    sections.append(("", [_escaped(span, body_format), _escaped(said_totals, body_format)]))
    if data["failed"]:
        new = sum(1 for f in data["failed"] if f["new"])
        shown = len(data["failed"]) + data["more_failed"]
        lines = [_failed_line(f, body_format) for f in data["failed"]]
        if data["more_failed"]:
            lines.append(_escaped(f"and {data['more_failed']} more", body_format))
        sections.append((f"Failed ({shown}, {new} new)" if new else f"Failed ({shown})", lines))
    if data["slowest"]:
        sections.append(
            (
                "Slowest against their usual",
                [
                    _escaped(
                        f"{s['name']} {_dur(s['seconds'])}, usually {_dur(s['typical'])}",
                        body_format,
                    )
                    for s in data["slowest"]
                ],
            )
        )
    if data["overdue"]:
        sections.append(
            (
                "Still running past their usual duration",
                [
                    _escaped(
                        f"{o['name']} running {_dur(o['running'])}, usually {_dur(o['typical'])}",
                        body_format,
                    )
                    for o in data["overdue"]
                ],
            )
        )
    if data["sources"]:
        sections.append(
            (
                "Sources in error",
                [
                    _escaped(
                        f"{s['name']}: {_dur(s['seconds'])}"
                        + (f" ({s['error']})" if s["error"] else ""),
                        body_format,
                    )
                    for s in data["sources"]
                ],
            )
        )
    if data.get("public_url"):
        url = data["public_url"] + "/"
        sections.append(
            (
                "",
                [
                    ("status page: " if body_format != "html" else "Status page: ")
                    + _linked(url, url, body_format)
                ],
            )
        )
    kind = "failure" if counts.get("failed") else "success" if any(counts.values()) else "info"
    return Message(title, _layout(sections, body_format), kind)


def _failed_line(failed: Mapping[str, Any], body_format: str) -> str:
    """``name: first reason (new)``, the name a link (in text, the link at the end)."""
    said = _escaped(
        f": {failed['reason'] or 'no reason given'}" + (" (new)" if failed["new"] else ""),
        body_format,
    )
    url = failed["url"]
    if body_format == "text":
        return str(failed["name"]) + said + (f" {url}" if url else "")
    return _linked(failed["name"], url, body_format) + said


def _linked(text: str, url: str | None, body_format: str) -> str:
    return _escaped(text, body_format) if url is None else _link(text, url, body_format)


def _layout(sections: Sequence[tuple[str, list[str]]], body_format: str) -> str:
    parts = []
    for heading, lines in sections:
        if body_format == "html":
            head = f"<h3>{html.escape(heading)}</h3>\n" if heading else ""
            items = "".join(f"<li>{line}</li>\n" for line in lines)
            parts.append(head + (f"<ul>\n{items}</ul>" if heading else "<br>\n".join(lines)))
        elif body_format == "markdown":
            head = f"**{heading}**\n\n" if heading else ""
            parts.append(head + "\n".join(f"- {line}" if heading else line for line in lines))
        else:
            head = f"{heading}:\n" if heading else ""
            parts.append(head + "\n".join(f"- {line}" if heading else line for line in lines))
    return ("\n" if body_format == "html" else "\n\n").join(parts)


async def report_messages(
    report: Report, data: Mapping[str, Any], formats: Sequence[str] = FORMATS
) -> dict[str, dict[str, str]]:
    """Title and body per format: the report's templates where it has them (rendered in
    the render process, within its budget), else the default message."""
    rendered: dict[str, str | None] = {"title": None, "body": None}
    texts = {k: v for k, v in (("title", report.title), ("body", report.body)) if v is not None}
    if texts:
        from jobherald import renderer
        from jobherald.templates import REPORT

        jobs = [(text, REPORT, "", {"report": dict(data)}) for text in texts.values()]
        results = await asyncio.to_thread(renderer.shared().render, jobs)
        for key, (ok, text) in zip(texts, results, strict=True):
            rendered[key] = text if ok else None
    out = {}
    for body_format in formats:
        default = default_report(data, report.zone, body_format)
        out[body_format] = {
            "title": rendered["title"] or default.title,
            "body": rendered["body"] or default.body,
            "type": default.notify_type,
        }
    return out


def report_payload(data: Mapping[str, Any], messages: Mapping[str, Any]) -> Any:
    """A report's event payload: its data, its message per format, its title (what a
    digest that carries it says of it)."""
    return {"report": data, "messages": messages, "title": messages["text"]["title"]}


def report_message(payload: Mapping[str, Any], body_format: str) -> Message:
    """The message of a queued report for a notifier of this format."""
    messages = payload.get("messages") or {}
    chosen = messages.get(body_format) or messages.get("text") or {}
    return Message(
        str(chosen.get("title", "report")),
        str(chosen.get("body", "")),
        str(chosen.get("type", "info")),
    )


def previous_fire(trigger: Any, slot: datetime) -> datetime | None:
    """The latest fire time before ``slot`` (None within 400 days): looked for in a
    window that widens until one holds a fire time."""
    for lookback in (
        timedelta(minutes=2),
        timedelta(hours=2),
        timedelta(days=2),
        timedelta(days=40),
        timedelta(days=400),
    ):
        last: datetime | None = None
        at: datetime | None = trigger.get_next_fire_time(None, slot - lookback)
        while at is not None and at < slot:
            last = at
            at = trigger.get_next_fire_time(at, at + timedelta(seconds=1))
        if last is not None:
            return last
    return None


def latest_fire(trigger: Any, now: datetime, within: float) -> datetime | None:
    """The latest fire time at or before ``now``, if it is at most ``within`` seconds old."""
    last = previous_fire(trigger, now + timedelta(seconds=1))
    if last is None or (now - last).total_seconds() > within:
        return None
    return last
