"""The status page and a job's page: HTML rendered by Jinja2 (autoescaped), an inline SVG
chart, and a little plain JavaScript that keeps the list current. No CDN, no build step,
no external fonts; no secret is ever put on a page (sources show their host only)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from jinja2 import Environment, select_autoescape

from jobherald.notify.messages import reason_line

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from jobherald.config import Config
    from jobherald.quiet import Silence
    from jobherald.report import HistoryEntry, JobStatus
    from jobherald.store import JobFilter

STATES = ("running", "pending", "unknown", "succeeded", "failed", "lost")
STATIC = {"page.js": "application/javascript", "style.css": "text/css"}
CHART_WIDTH, CHART_HEIGHT, PAD = 640, 200, 30


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["percent"] = lambda v: "-" if v is None else f"{float(v) * 100:.0f}%"
    env.filters["when"] = _when
    env.filters["seconds"] = _seconds
    env.filters["reason"] = reason_line
    return env


@lru_cache(maxsize=8)
def _template(name: str) -> Any:
    text = resources.files("jobherald.http").joinpath("templates", name).read_text("utf-8")
    return _environment().from_string(text)


def static(name: str) -> tuple[bytes, str] | None:
    if name not in STATIC:
        return None
    body = resources.files("jobherald.http").joinpath("static", name).read_bytes()
    return body, STATIC[name]


def _when(value: str | None) -> str:
    """An ISO time as people read it: ``2026-12-02 15:04:05 UTC``."""
    if not value:
        return "-"
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    return parsed.strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    from jobherald.model import format_duration

    return format_duration(value) or "-" if value is not None else "-"


def safe_link(url: str | None) -> str | None:
    """An upstream's link to a job, if it is a plain http(s) URL without credentials."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
        return None
    return url


def where(endpoint: str) -> str:
    """A source's endpoint shown without what could be a secret: scheme, host and port."""
    parts = urlsplit(endpoint)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


def _sources(cfg: Config) -> dict[str, dict[str, str]]:
    return {
        name: {"type": src.type, "where": where(src.endpoint), "auth": src.auth.method}
        for name, src in cfg.sources.items()
    }


def index(
    cfg: Config,
    rows: list[JobStatus],
    counts: dict[str, int],
    wanted: JobFilter,
    *,
    following: Any = None,
    pending: dict[str, int] | None = None,
    throttled: dict[str, datetime] | None = None,
    removed: int = 0,
    silences: Sequence[Silence] = (),
    reports: Mapping[str, str] | None = None,
) -> str:
    """The status page: one page of jobs (as the database sorted and cut them), the
    watched jobs per state, the removed ones apart, and a link to the next page."""
    return str(
        _template("index.html").render(
            rows=rows,
            counts={s: counts.get(s, 0) for s in STATES},
            total=sum(counts.values()),
            state=wanted.state,
            removed=removed,
            showing_removed=wanted.removed is not False,
            source=wanted.source or "",
            text=wanted.text or "",
            states=STATES,
            following=str(following) if following is not None else None,
            sources=_sources(cfg),
            throttled={n: at.strftime("%H:%M:%S") for n, at in (throttled or {}).items()},
            pending={name: (pending or {}).get(name, 0) for name in cfg.notifiers},
            now=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            silences=silences,
            reports=reports or {},
        )
    )


def job(cfg: Config, row: JobStatus, history: list[HistoryEntry]) -> str:
    return str(
        _template("job.html").render(
            job=row,
            link=safe_link(row.get("link")),
            source=_sources(cfg).get(row["source"]),
            history=history,
            chart=chart(row, history),
        )
    )


def not_found(job_id: str) -> str:
    return str(_template("missing.html").render(job_id=job_id))


def chart(row: JobStatus, history: list[HistoryEntry]) -> dict[str, Any] | None:
    """Progress over time as SVG coordinates: the recorded progress of each transition,
    and the latest progress at the latest poll. None with fewer than two points."""
    points: list[tuple[datetime, float]] = []
    for item in history:
        at, progress = item["at"], item["progress"]
        if progress is not None and at and "event" not in item:
            points.append((_parse(at), progress))
    polled, progress = row["last_polled_at"], row["progress"]
    if progress is not None and polled:
        points.append((_parse(polled), progress))
    points.sort(key=lambda p: p[0])
    if len(points) < 2:
        return None
    start, end = points[0][0], points[-1][0]
    span = max((end - start).total_seconds(), 1e-6)
    inner_w, inner_h = CHART_WIDTH - 2 * PAD, CHART_HEIGHT - 2 * PAD

    def xy(at: datetime, value: float) -> tuple[float, float]:
        x = PAD + inner_w * (at - start).total_seconds() / span
        y = PAD + inner_h * (1.0 - max(0.0, min(1.0, value)))
        return round(x, 1), round(y, 1)

    coords = [xy(at, value) for at, value in points]
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "pad": PAD,
        "right": CHART_WIDTH - PAD,
        "bottom": CHART_HEIGHT - PAD,
        "middle": PAD + inner_h / 2,
        "points": " ".join(f"{x},{y}" for x, y in coords),
        "dots": coords,
        "start": start.strftime("%H:%M:%S"),
        "end": end.strftime("%H:%M:%S"),
        "samples": len(points),
    }


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
