"""The daemon's log: one line per message (control characters spelled out, length
capped), journald's priorities under systemd, libraries kept quiet."""

from __future__ import annotations

import logging
import re
import sys

from jobherald.config import systemd_environment

_PRIORITIES = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


# Characters that could forge a log line or work on a terminal (C0, DEL, C1); a message
# is cut at MAX_LOG_MESSAGE characters. Upstream text reaches log lines: it is shown as text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_LOG_MESSAGE = 2000


def _visible(match: re.Match[str]) -> str:
    return "\\n" if match[0] == "\n" else f"\\x{ord(match[0]):02x}"


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of what it says."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}"


class SafeFormatter(logging.Formatter):
    """A message as one line of text: control characters spelled out, length capped
    (a traceback after it keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        if len(message) > MAX_LOG_MESSAGE:
            message = f"{message[:MAX_LOG_MESSAGE]}… ({len(message) - MAX_LOG_MESSAGE} more)"
        record.message = _CONTROL.sub(_visible, message)
        return super().formatMessage(record)


class JournalFormatter(SafeFormatter):
    """Lines for journald: a syslog priority prefix, no timestamp (the journal has one)."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITIES.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])


def setup_logging(level: str) -> None:
    """Configure logging once: to stderr (journald-style under systemd), quiet libraries."""
    handler = logging.StreamHandler(sys.stderr)
    if systemd_environment().journal_stream:
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # apprise at debug level may show parts of notification URLs (credentials among
    # them), and aiosqlite every statement: neither belongs in jobherald's log.
    logging.getLogger("apprise").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    quiet = logging.WARNING if level != "debug" else logging.NOTSET
    for noisy in ("aiohttp.access", "alembic"):
        logging.getLogger(noisy).setLevel(quiet)
    # "skipped: maximum number of running instances reached" would repeat every
    # interval while an upstream is slow; the poll's own error says it once.
    logging.getLogger("apscheduler").setLevel(logging.ERROR if level != "debug" else logging.NOTSET)
    # Polls cut off at shutdown end as cancelled tasks, which APScheduler's executor logs
    # as errors; every other failure of a poll is caught and logged by jobherald itself.
    logging.getLogger("apscheduler.executors").setLevel(
        logging.CRITICAL if level != "debug" else logging.NOTSET
    )
