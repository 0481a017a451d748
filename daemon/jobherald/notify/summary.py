"""What was held while it was quiet, told in one message when the quiet ends: a digest as
any other (counts, a line per job, ``and N more``), each job at its last state with the
earlier ones noted, under ``While silenced:`` or ``During quiet hours:``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jobherald.notify.messages import (
    DIGEST_LINES,
    Item,
    Message,
    _digest_line,
    _escaped,
    digest_counts,
    digest_type,
)
from jobherald.quiet import Silence
from jobherald.store import Held

# Event ids a summary lists in its footer at most (a summary of a long outage holds more).
FOOTER_IDS = 1000
PREFIX = {"silence": "While silenced", "quiet": "During quiet hours"}


def _subject(held: Held) -> str:
    """Whose event it is: a job (by key), a source, else the event alone."""
    job = held.payload.get("job")
    if job:
        return f"job:{job.get('key') or job.get('id')}"
    source = held.payload.get("source")
    if source:
        return f"source:{source.get('name')}"
    return f"event:{held.event_id}"


def summary_payload(held: Sequence[Held], why: str, silence: Silence | None) -> dict[str, Any]:
    """The summary event's payload: each subject's last event (with the kinds before it),
    the first DIGEST_LINES of them whole, counts of all, every held event's id."""
    last: dict[str, tuple[Held, list[str]]] = {}
    for item in held:  # oldest first: the last one of a subject wins
        before = last.pop(_subject(item), None)
        earlier = [*before[1], before[0].kind] if before is not None else []
        last[_subject(item)] = (item, earlier)
    latest = list(last.values())
    counts = digest_counts([Item(h.kind, h.event_id, h.payload) for h, _ in latest])  # type: ignore[arg-type]
    payload: dict[str, Any] = {
        "summary": {
            "why": why,
            "silence": (
                {"id": silence.id, "by": silence.created_by, "reason": silence.reason}
                if silence is not None
                else None
            ),
            "held": len(held),
            "subjects": len(latest),
            "jobs": all(h.payload.get("job") is not None for h, _ in latest),
            "counts": counts,
            "events": [h.event_id for h in held[:FOOTER_IDS]],
        },
        "items": [
            {"kind": h.kind, "event_id": h.event_id, "payload": h.payload, "earlier": earlier}
            for h, earlier in latest[:DIGEST_LINES]
        ],
    }
    payload["title"] = summary_title(payload)  # what a digest that carries it says of it
    return payload


def summary_title(payload: Mapping[str, Any]) -> str:
    summary = payload.get("summary") or {}
    subjects = int(summary.get("subjects", 0))
    noun = ("job" if subjects == 1 else "jobs") if summary.get("jobs") else "events"
    counts = ", ".join(f"{n} {kind}" for kind, n in (summary.get("counts") or {}).items())
    prefix = PREFIX.get(str(summary.get("why")), "While quiet")
    return f"{prefix}: {subjects} {noun}: {counts}"


def summary_message(
    event_id: str, payload: Mapping[str, Any], public_url: str | None, body_format: str
) -> Message:
    summary = payload.get("summary") or {}
    silence = summary.get("silence")
    held = int(summary.get("held", 0))
    said = f"{held} message{'s' if held != 1 else ''} held"
    if silence:
        head = f"Silence {silence['id']} by {silence['by']} ended ({silence['reason']}): {said}."
    else:
        head = f"Quiet hours ended: {said}."
    items = [
        (Item(str(i["kind"]), str(i["event_id"]), i["payload"]), i.get("earlier") or [])
        for i in payload.get("items") or []
    ]
    lines = [_escaped(head, body_format), ""]
    for item, earlier in items:
        line = _digest_line(item, public_url, body_format)
        if earlier:
            line += _escaped(f" (earlier: {', '.join(earlier)})", body_format)
        lines.append(line)
    subjects = int(summary.get("subjects", len(items)))
    if subjects > len(items):
        lines.append(f"and {subjects - len(items)} more")
    ids = list(summary.get("events") or [])
    footer = "events " + " ".join(ids)
    if held > len(ids):
        footer += f" and {held - len(ids)} more"
    lines += ["", footer, f"summary {event_id}"]
    body = ("<br>\n" if body_format == "html" else "\n").join(lines)
    return Message(summary_title(payload), body, digest_type([i for i, _ in items]))
