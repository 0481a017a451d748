"""Validation against the tables' models, and each problem as one line naming the file,
the key path and what is wrong (never echoing a value that may be a secret)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from jobherald.config.sections import (
    EVENTS,
    M,
)
from jobherald.sources.sections import (
    AUTH_METHODS,
    HTTP_AUTH_METHODS,
    SOURCE_TYPES,
)


def _key_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _validate(model: type[M], raw: dict[str, Any], label: str, invalid: list[str]) -> M | None:
    """The validated model, or None with one line per problem added to ``invalid``."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        invalid.extend(line for err in exc.errors() for line in _lines(err, label, raw))
        return None


# Keys whose values are never echoed in a problem line (they may be secrets).
_SECRET_KEYS = frozenset(
    {"token", "password", "sk", "security_token", "heartbeat_url", "urls", "url", "headers"}
)


def _known_keys() -> list[str]:
    """Every key any section takes: what an unknown key is compared with."""
    from jobherald.config import sections
    from jobherald.sources.sections import tables

    names: set[str] = set()
    for model in [*vars(sections).values(), *tables()]:
        if isinstance(model, type) and issubclass(model, BaseModel):
            names.update(model.model_fields)
    return sorted(names)


def _job_named(loc: Sequence[int | str], raw: dict[str, Any] | None) -> str:
    """`` (id 'backup')`` after ``jobs[5]`` when the job gives an id."""
    if raw is None or len(loc) < 2 or loc[0] != "jobs" or not isinstance(loc[1], int):
        return ""
    jobs = raw.get("jobs")
    if not isinstance(jobs, list) or not 0 <= loc[1] < len(jobs):
        return ""
    job_id = jobs[loc[1]].get("id") if isinstance(jobs[loc[1]], dict) else None
    return f" (id {job_id!r})" if isinstance(job_id, str) and len(job_id) <= 128 else ""


def _given(err: Any, loc: Sequence[int | str]) -> str:
    """`` (given 'x')``: the value a wrong type was given as, unless it may be a secret."""
    if any(isinstance(p, str) and p in _SECRET_KEYS for p in loc) or "input" not in err:
        return ""
    value = err["input"]
    if isinstance(value, dict | list):
        return ""
    shown = repr(value)
    return f" (given {shown[:60]}{'…' if len(shown) > 60 else ''})"


def _lines(err: Any, label: str, raw: dict[str, Any] | None = None) -> list[str]:
    """One line per problem a pydantic error holds (a table's booleans where numbers go
    are one error, a line each)."""
    if err["type"] == "bool_for_number":
        loc = list(err["loc"])
        return [
            f"{label}: {_key_path([*loc, key])}: expected {what}, got a boolean"
            for key, what in (err.get("ctx") or {}).get("found") or []
        ]
    return [_describe(err, label, raw)]


def _describe(err: Any, label: str, raw: dict[str, Any] | None = None) -> str:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    # A tagged union puts the tag in the path: sources.s.auth.password.user → sources.s.auth.user
    methods: tuple[str, ...] = AUTH_METHODS
    if len(loc) > 2 and loc[0] == "sources" and loc[2] == "http-json":
        methods = HTTP_AUTH_METHODS
    loc = [
        p
        for i, p in enumerate(loc)
        if not (i > 0 and loc[i - 1] == "auth" and p in (*AUTH_METHODS, *HTTP_AUTH_METHODS))
        and not (i == 2 and loc[0] == "sources" and p in SOURCE_TYPES)
    ]
    kind = err["type"]
    is_source = len(loc) == 2 and loc[0] == "sources"
    tag = (err.get("ctx") or {}).get("tag")
    given_tag = f" {tag!r}" if isinstance(tag, str) and len(tag) <= 60 else ""
    if kind == "extra_forbidden":
        import difflib

        message = "unknown key"
        key = loc[-1] if loc else None
        known = [k for k in _known_keys() if k != key]
        close = (
            difflib.get_close_matches(key, known, n=1, cutoff=0.8) if isinstance(key, str) else []
        )
        if close:
            message += f" (did you mean {close[0]}?)"
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "too_short":
        message = "must not be empty"
    elif kind == "union_tag_invalid" and is_source:
        message = f"unknown source type{given_tag} (known: {', '.join(SOURCE_TYPES)})"
        loc = [*loc, "type"]
    elif kind == "union_tag_not_found" and is_source:
        message = f"required key 'type' is missing ({', '.join(SOURCE_TYPES)})"
    elif kind == "union_tag_invalid":
        message = f"unknown method{given_tag} (known: {', '.join(methods)})"
        loc = [*loc, "method"]
    elif kind == "union_tag_not_found":
        message = f"required key 'method' is missing ({', '.join(methods)})"
    else:
        message = str(err["msg"]).removeprefix("Value error, ")
        if kind in ("literal_error", "enum") and loc and loc[-2:-1] == ["on"]:
            message = f"unknown event {err.get('input')!r} (known: {', '.join(EVENTS)})"
        elif kind.endswith(("_type", "_parsing")) or kind == "literal_error":
            message += _given(err, loc)
    place = _key_path(loc)
    if named := _job_named(loc, raw):
        place = place.replace(f"jobs[{loc[1]}]", f"jobs[{loc[1]}]{named}", 1)
    return f"{label}: {place}: {message}"
