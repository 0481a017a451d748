"""Resolving source tables: credentials (secrets read from files) and what each source
type holds beyond the common keys (its table says what, in ``sources/``)."""

from __future__ import annotations

from pathlib import Path

from jobherald.auth import READ_SECRETS, SECRET_KEYS, UNREAD, Secrets, read_secret, resolve_auth
from jobherald.config.model import Source
from jobherald.config.sections import _NAME
from jobherald.model import Rules
from jobherald.sources.sections import SourceTable

__all__ = [
    "READ_SECRETS",
    "SECRET_KEYS",
    "UNREAD",
    "Secrets",
    "read_secret",
]


def _resolve_source(
    name: str,
    section: SourceTable,
    base: Path,
    label: str,
    rules: Rules,
    problems: list[str],
) -> Source | None:
    where = f"{label}: sources.{name}"
    if not _NAME.match(name):
        problems.append(f"{where}: bad name (letters, digits, _.-)")
    auth = resolve_auth(section, where, base, problems, bearer=section.bearer)
    fields = section.source_fields(where, problems)
    if auth is None or fields is None:
        return None
    return Source(
        name=name,
        auth=auth,
        timeout=section.timeout,
        verify_tls=section.verify_tls,
        rules=section.over(rules),
        type=section.type,
        max_body=section.max_body,
        max_rate=section.max_rate,
        max_retry_after_source=section.max_retry_after_source,
        **fields,
    )
