"""The config file's vocabulary, shared by every section wherever it is declared (the
sources declare their own tables): durations, sizes, endpoints, path segments, watch-rule
fields and the strict base model of every table."""

from __future__ import annotations

import math
import re
from typing import Annotated, ClassVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from jobherald.model import Rules

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from a number, or from text such as ``500ms``, ``30s``, ``5m``, ``1h30m``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(
                    f"bad duration {value!r}: use seconds or a text like 500ms, 30s, 5m, 1h"
                ) from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError(f"expected a duration, got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"duration {value!r} is not a number of seconds")
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be more than zero")
    if seconds > 10 * 365 * 86400:
        raise ValueError(f"duration {value!r} is longer than ten years")
    return seconds


def parse_duration_or_off(value: object) -> float:
    """Like parse_duration, but 0 (or "0", "off") turns the rule off: 0.0."""
    if value in (0, "0", "off") and not isinstance(value, bool):
        return 0.0
    return parse_duration(value)


_SIZE = re.compile(r"^(\d+)\s*(|b|bytes|kb|kib|mb|mib|gb|gib|tb|tib)$", re.IGNORECASE)
_UNIT_BYTES = {"": 1, "b": 1, "bytes": 1, "kb": 2**10, "mb": 2**20, "gb": 2**30, "tb": 2**40}
MIN_BODY = 1024
MAX_BODY = 2**30


def parse_size(value: object, low: int = MIN_BODY, high: int = MAX_BODY) -> int:
    """Bytes from a whole number, or from text such as ``512KB``, ``4 MB``, ``1GiB``."""
    if isinstance(value, bool):
        raise ValueError("expected a size, got a boolean")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.match(value.strip())
        if match is None:
            raise ValueError(f"bad size {value!r}: use bytes or a text like 512KB, 4MB")
        unit = match[2].lower().replace("ib", "b")
        size = int(match[1][:16]) * _UNIT_BYTES[unit]
    else:
        raise ValueError(f"expected a size, got {type(value).__name__}")
    if not low <= size <= high:
        raise ValueError(f"size {value!r} must be between {_shown(low)} and {_shown(high)}")
    return size


def _shown(size: int) -> str:
    for unit in ("TB", "GB", "MB", "KB"):
        if size >= _UNIT_BYTES[unit.lower()] and size % _UNIT_BYTES[unit.lower()] == 0:
            return f"{size // _UNIT_BYTES[unit.lower()]}{unit}"
    return f"{size} bytes"


def parse_archive_size(value: object) -> int:
    return parse_size(value, 2**20, 2**44)


def parse_keep(value: object) -> float | None:
    """How long history is kept: a duration of a minute or more, or "forever" (None)."""
    if isinstance(value, str) and value.strip().lower() == "forever":
        return None
    seconds = parse_duration(value)
    if seconds < 60:
        raise ValueError(f'{value!r} is less than a minute: give 1m or more, or "forever"')
    return seconds


Size = Annotated[int, BeforeValidator(parse_size)]
# An export archive: from 1MB up to 16TB.
ArchiveSize = Annotated[int, BeforeValidator(parse_archive_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
DurationOrOff = Annotated[float, BeforeValidator(parse_duration_or_off)]
# None: forever.
Keep = Annotated[float | None, BeforeValidator(parse_keep)]


class Section(BaseModel):
    """A table of the config file: unknown keys refused, frozen once read, and a boolean
    never taken for a number (``concurrency = true`` is refused, not read as 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        found = []
        for key, value in data.items():
            field = cls.model_fields.get(key) if isinstance(value, bool) else None
            if field is not None and not _takes_bool(field.annotation):
                found.append((key, _kind(field.annotation)))
        if found:
            # Every such key of the table at once (the config's problems are told as one
            # line each, see config.problems).
            raise PydanticCustomError(
                "bool_for_number",
                "{keys}: a boolean where a number goes",
                {"keys": ", ".join(key for key, _ in found), "found": found},
            )
        return data


def _takes_bool(annotation: object) -> bool:
    """Whether a field's type admits a boolean (bool itself, or a union or annotation
    holding it)."""
    if annotation is bool:
        return True
    return any(_takes_bool(arg) for arg in get_args(annotation))


def _kind(annotation: object) -> str:
    text = str(annotation)
    if "float" in text:
        return "a number or a duration"
    if "int" in text:
        return "a whole number"
    return "a value of another type"


class RuleFields(Section):
    """Watch rules: in [daemon] as defaults, overridable per source and per job."""

    error_after: Duration | None = None
    stall_after: DurationOrOff | None = None
    lost_after: int | None = Field(default=None, ge=1, le=1000)
    max_duration: DurationOrOff | None = None
    progress_steps: tuple[float, ...] | None = None
    # A running job past this many times its typical duration: "stalled" (0: off).
    slow_after: float | None = None

    @field_validator("slow_after", mode="before")
    @classmethod
    def _slow(cls, value: object) -> object:
        if isinstance(value, str) and value.strip() in ("0", "off"):
            return 0.0
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ValueError(
                    f"slow_after {value!r}: give a multiple such as 2.0, or 0 (off)"
                ) from None
        return value

    @field_validator("slow_after")
    @classmethod
    def _slow_range(cls, value: float | None) -> float | None:
        if value is not None and value != 0 and not 1.0 < value <= 1000.0:
            raise ValueError(
                f"slow_after {value!r} must be more than 1 (2.0: twice as long as usual), or 0 (off)"
            )
        return value

    @field_validator("progress_steps")
    @classmethod
    def _steps(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is None:
            return None
        for step in value:
            if not 0.0 < step < 1.0:
                raise ValueError(f"progress step {step!r} must be between 0 and 1 (0.5 is 50 %)")
        return tuple(sorted(set(value)))

    def over(self, base: Rules) -> Rules:
        return Rules(
            error_after=self.error_after if self.error_after is not None else base.error_after,
            stall_after=base.stall_after
            if self.stall_after is None
            else (self.stall_after or None),
            lost_after=self.lost_after if self.lost_after is not None else base.lost_after,
            max_duration=(
                base.max_duration if self.max_duration is None else (self.max_duration or None)
            ),
            progress_steps=(
                self.progress_steps if self.progress_steps is not None else base.progress_steps
            ),
            slow_after=base.slow_after if self.slow_after is None else (self.slow_after or None),
        )


def _check_endpoint(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"endpoint {value!r} must start with https:// or http://")
    return value.rstrip("/")


Endpoint = Annotated[str, AfterValidator(_check_endpoint)]


def _check_segment(value: str) -> str:
    """An id that becomes one segment of a URL path: "." and ".." would change the path."""
    if value.strip() in (".", ".."):
        raise ValueError(f"{value!r} is not an id (it would change the request's path)")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


PathSegment = Annotated[str, AfterValidator(_check_segment)]


class SourceFields(RuleFields):
    """What every source table has, whatever its type: its watch rules, how long a
    request may take, TLS, the largest answer read, a request budget and the longest
    pause a source may ask for. What a type adds (and ``type`` itself) is its own."""

    # Whether its jobs may name an instance of their own (`instance_id`) and take params,
    # and whether a token it is given is a bearer token (and may be left out).
    instances: ClassVar[bool] = False
    params: ClassVar[bool] = False
    bearer: ClassVar[bool] = False

    timeout: Duration = 10.0
    verify_tls: bool = True
    max_body: Size = 4 * 1024 * 1024
    max_rate: float | None = Field(default=None, gt=0, le=100000)
    max_retry_after_source: Duration = Field(default=600.0, le=86400.0)
