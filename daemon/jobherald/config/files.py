"""Reading the files: TOML (never more than a config file holds, never blocking on a
FIFO), drop-ins by pattern, ``${VAR}`` from the environment."""

from __future__ import annotations

import glob
import os
import re
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import tomli

from jobherald.auth import READ_SECRETS, SECRET_KEYS
from jobherald.config.sections import _VAR
from jobherald.errors import ConfigError


def _pop_jobs(raw: dict[str, Any]) -> list[Any]:
    """The file's ``[[jobs]]`` tables, taken out of it (left in when not an array of them,
    for the file's validation to say so)."""
    jobs = raw.get("jobs")
    if isinstance(jobs, list):
        del raw["jobs"]
        return jobs
    return []


def _display(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


# A config file larger than this is not one (and /dev/zero would never end).
MAX_CONFIG_BYTES = 16 * 1024 * 1024


def _read(path: Path, label: str, problems: list[str]) -> dict[str, Any]:
    """The file's tables with ``${VAR}`` expanded (what cannot be, in ``problems``); a file
    that cannot be read raises ConfigError. A file without a "$" has no ${VAR}: its
    100,000 jobs are not walked."""
    raw, dollars = _read_toml(path, label)
    return _expand(raw, label, "", problems) if dollars else raw


def _read_toml(path: Path, label: str) -> tuple[dict[str, Any], bool]:
    """The file's tables, and whether it holds a "$" anywhere."""
    try:
        # Opened without blocking: a FIFO would wait for a writer for ever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError
            if not stat.S_ISREG(mode):
                raise ConfigError([f"{label}: not a regular file (a FIFO, a device...)"])
            data = handle.read(MAX_CONFIG_BYTES + 1)
            if len(data) > MAX_CONFIG_BYTES:
                raise ConfigError([f"{label}: larger than {MAX_CONFIG_BYTES // 2**20} MB"])
            text = data.decode("utf-8")
            return tomli.loads(text), "$" in text
    except FileNotFoundError:
        raise ConfigError([f"{label}: file not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{label}: is a folder, not a file"]) from None
    except PermissionError:
        raise ConfigError([f"{label}: permission denied"]) from None
    except tomli.TOMLDecodeError as exc:
        raise ConfigError([f"{label}: not valid TOML: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{label}: not valid UTF-8"]) from None
    except RecursionError:
        raise ConfigError([f"{label}: not valid TOML: nested too deeply"]) from None
    except OSError as exc:  # a symbolic link loop, a file that cannot be read...
        raise ConfigError([f"{label}: cannot read it: {exc.strerror or exc}"]) from None


_CREDENTIAL = re.compile(r"\$\{CREDENTIALS_DIRECTORY\}/([^/$]+)")


def _expand(value: Any, label: str, where: str, problems: list[str]) -> Any:
    """Replace ``${VAR}`` from the environment in every string (``$$`` is a dollar).

    Outside the service, ``${CREDENTIALS_DIRECTORY}/ID`` is the file the installed unit
    loads as credential ID (its ``LoadCredential=ID:PATH``), so that commands run by hand
    read what the service would. Tables and arrays are changed in place (a config of
    100,000 jobs is not copied), and only strings holding a ``$`` are looked at."""
    if isinstance(value, str):
        return _expand_text(value, label, where, problems) if "$" in value else value
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str | dict | list) and _has_dollar(item):
                value[key] = _expand(item, label, f"{where}.{key}" if where else key, problems)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str | dict | list) and _has_dollar(item):
                value[i] = _expand(item, label, f"{where}[{i}]", problems)
    return value


def _has_dollar(value: str | dict[str, Any] | list[Any]) -> bool:
    if isinstance(value, str):
        return "$" in value
    items = value.values() if isinstance(value, dict) else value
    return any(isinstance(v, dict | list) or (isinstance(v, str) and "$" in v) for v in items)


def _expand_text(value: str, label: str, where: str, problems: list[str]) -> str:
    if not READ_SECRETS.get() and (
        where.rsplit(".", 1)[-1].removesuffix("_file") in SECRET_KEYS or ".headers." in where
    ):
        return ""  # a secret this command does not read: its variables need not be set
    if "CREDENTIALS_DIRECTORY" not in os.environ and (found := _CREDENTIAL.fullmatch(value)):
        from jobherald.config.paths import UNIT, unit_credentials

        source = unit_credentials().get(found[1])
        if source is not None:
            return str(source)
        problems.append(
            f"{label}: {where}: environment variable CREDENTIALS_DIRECTORY is not set, "
            f"and the installed {UNIT} loads no credential {found[1]!r} (LoadCredential=)"
        )
        return ""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        if name not in os.environ:
            problems.append(f"{label}: {where}: environment variable {name} is not set")
            return ""
        return os.environ[name]

    return _VAR.sub(substitute, value)


def _included(base: Path, patterns: Sequence[str], label: str) -> Iterator[Path]:
    seen: set[Path] = set()
    for i, pattern in enumerate(patterns):
        full = pattern if os.path.isabs(pattern) else str(base / pattern)
        for match in sorted(glob.glob(full)):
            path = Path(match)
            # Anything matched is read, or said in a line why not: a FIFO, a device, a
            # symlink loop or an unreadable file is never skipped in silence.
            if path in seen:
                continue
            seen.add(path)
            yield path
        if not any(ch in pattern for ch in "*?[") and not Path(full).exists():
            raise ConfigError([f"{label}: daemon.include[{i}]: file not found: {pattern}"])
        if Path(full).is_dir():
            raise ConfigError(
                [
                    f"{label}: daemon.include[{i}]: {pattern} is a folder: name its files, "
                    f"e.g. {pattern.rstrip('/')}/*.toml"
                ]
            )
