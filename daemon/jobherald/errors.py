"""Every exception jobherald raises on purpose, each carrying its data."""

from __future__ import annotations

import re
from collections.abc import Sequence


class JobheraldError(Exception):
    """Base of jobherald's own errors."""


# Problems of one kind said one by one, at most; the rest are counted in one line.
PROBLEMS_OF_A_KIND = 20


def problem_kind(line: str) -> str:
    """What a problem line says with its particulars taken out (file, place, values)."""
    said = line.split(": ", 1)[1] if ": " in line else line  # after the file's name
    said = re.sub(r"\[\d+\]", "[]", said)
    said = re.sub(r"'[^']*'|\"[^\"]*\"|\(.*?\)", "…", said)
    return re.sub(r"\d+", "#", said)


def capped(problems: Sequence[str]) -> list[str]:
    """The problems, with at most PROBLEMS_OF_A_KIND of one kind (a folder linked into
    itself must not give 10,000 lines), then ``and N more like: <the first>``."""
    seen: dict[str, tuple[int, str]] = {}  # kind -> how many, the first of them
    out: list[str] = []
    for line in problems:
        kind = problem_kind(line)
        count, first = seen.get(kind, (0, line))
        seen[kind] = (count + 1, first)
        if count < PROBLEMS_OF_A_KIND:
            out.append(line)
    for count, first in seen.values():
        if count > PROBLEMS_OF_A_KIND:
            said = first.split(": ", 1)[1] if ": " in first else first
            out.append(f"and {count - PROBLEMS_OF_A_KIND} more like: {said}")
    return out


class ConfigError(JobheraldError):
    """The configuration is unusable; ``problems`` holds one line per problem (at most
    PROBLEMS_OF_A_KIND of one kind, then how many more)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = capped(problems)
        super().__init__("\n".join(self.problems))


class StoreError(JobheraldError):
    """The database cannot be opened or migrated."""


class ListenError(JobheraldError):
    """The HTTP listener cannot start (its address is in use, or not this machine's)."""


class FetchError(JobheraldError):
    """One poll did not yield a snapshot.

    ``kind`` is one of ``http`` (an error status), ``timeout``, ``connection``,
    ``body`` (a 200 whose body is not the expected JSON) and ``auth`` (no
    credentials could be had). ``source_wide`` marks a failure of the source's
    credentials, which every job of the source shares; ``not_found`` an answer
    saying the job does not exist; ``retry_after`` the wait the service asked for.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
        retryable: bool = False,
        source_wide: bool = False,
        not_found: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.kind = kind
        self.message = message
        self.status = status
        self.error_code = error_code
        self.request_id = request_id
        self.retryable = retryable
        self.source_wide = source_wide
        self.not_found = not_found
        self.retry_after = retry_after
        super().__init__(self.detail)

    @property
    def throttled(self) -> bool:
        """The service asked to be left alone for a while (429 or 503 with Retry-After):
        every job of the source waits, not this one alone."""
        return self.status in (429, 503) and self.retry_after is not None

    @property
    def summary(self) -> str:
        """What went wrong, the same for every poll that fails the same way."""
        head = f"HTTP {self.status}" if self.status is not None else self.kind
        if self.error_code:
            head = f"{head} {self.error_code}"
        return f"{head}: {self.message}"

    @property
    def detail(self) -> str:
        """The summary, plus the upstream request id when there is one."""
        if self.request_id:
            return f"{self.summary} (request {self.request_id})"
        return self.summary


class TemplateProblem(JobheraldError, ValueError):
    """A template that does not compile or does not render."""


class ArchiveProblem(JobheraldError):
    """A download that arrived but is not a whole archive, or may not be kept."""

    # It cost a transfer (or would again): retried after a minute at the soonest.
    costly = True


class UntrustedFile(ArchiveProblem):
    """A symlink, or anything but a regular file, where an archive goes: never followed,
    never kept; said at once (an error event), not after error_after."""

    costly = False
