"""Whether the daemon can write a folder it is told to keep files in (``archive_dir``).

Checked by ``check-config``, at start and at reload. Under systemd, the unit's sandbox
decides what the service may write, not the permissions a person sees: when the
config is the service's own and the unit is installed, its ``ProtectSystem``,
``StateDirectory`` and ``ReadWritePaths`` are read with ``systemctl show``, or from the
unit's files and drop-ins when systemd does not run here (a container, a chroot, a build).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

UNIT = "jobherald.service"


def writable_problem(folder: Path) -> str | None:
    """Why this process cannot create files in ``folder`` (made when missing), or None."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == folder:
            return f"{folder} is not writable here (user {_user()})"
        return f"{folder} does not exist and {existing} is not writable here (user {_user()})"
    return None


SANDBOX_KEYS = ("ProtectSystem", "ProtectHome", "StateDirectory", "ReadWritePaths")


def sandbox_problem(folder: Path, unit_dir: Path | None = None) -> str | None:
    """Why the installed service's sandbox keeps it from writing ``folder``, or None
    (also when no unit is installed, or this runs inside the service). systemd is asked
    when it runs here; else the unit file and its drop-ins are read (``unit_dir``: read
    them from there, systemd not asked)."""
    if unit_dir is None and os.environ.get("INVOCATION_ID"):
        return None  # the service itself: its own writes say what its sandbox allows
    props = _shown_by_systemd() if unit_dir is None else None
    if props is None:  # no systemd running here: the installed files say the same
        props = unit_file_settings(unit_dir)
    if props is None or props.get("LoadState") != "loaded":
        return None
    return unit_problem(
        folder,
        protect_system=props.get("ProtectSystem", "no"),
        protect_home=props.get("ProtectHome", "no"),
        state_directories=props.get("StateDirectory", "").split(),
        read_write_paths=props.get("ReadWritePaths", "").split(),
    )


def unit_file_settings(unit_dir: Path | None = None) -> dict[str, str] | None:
    """The sandbox settings of the installed unit as its files give them (drop-ins after
    the unit, a later line winning; an empty ReadWritePaths= clearing the list), or None
    when no unit is installed there."""
    folder = unit_dir or Path(os.environ.get("JOBHERALD_UNIT_DIR") or UNIT_DIR)
    unit = folder / UNIT
    if not unit.is_file():
        return None
    props = {"LoadState": "loaded"}
    for path in [unit, *sorted((folder / f"{UNIT}.d").glob("*.conf"))]:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = (part.strip() for part in line.partition("="))
            if not sep or key not in SANDBOX_KEYS:
                continue
            if key in ("ReadWritePaths", "StateDirectory") and value:
                props[key] = f"{props.get(key, '')} {value}".strip()
            else:
                props[key] = value
    return props


def _shown_by_systemd() -> dict[str, str] | None:
    """The unit's sandbox settings as the running systemd has them, or None when no
    systemd runs here."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    try:
        shown = subprocess.run(  # noqa: S603 (fixed arguments)
            [
                systemctl,
                "show",
                UNIT,
                "--property=LoadState,ProtectSystem,ProtectHome,StateDirectory,ReadWritePaths",
            ],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if shown.returncode != 0:
        return None  # no systemd running here
    return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)


def unit_problem(
    folder: Path,
    *,
    protect_system: str,
    protect_home: str,
    state_directories: list[str],
    read_write_paths: list[str],
) -> str | None:
    """Why a unit with these settings cannot write ``folder``, or None."""
    allowed = [Path("/var/lib") / d for d in state_directories]
    allowed += [Path(p.lstrip("-+")) for p in read_write_paths]
    if any(_within(folder, a) for a in allowed):
        return None
    read_only: list[Path] = []
    if protect_system == "strict":
        read_only = [Path("/")]
    elif protect_system in ("yes", "full"):
        read_only = [Path("/usr"), Path("/boot"), Path("/efi")]
        if protect_system == "full":
            read_only.append(Path("/etc"))
    if protect_home in ("yes", "read-only", "tmpfs"):
        read_only += [Path("/home"), Path("/root"), Path("/run/user")]
    if not any(_within(folder, r) for r in read_only):
        return None
    state = f"/var/lib/{state_directories[0]}" if state_directories else "/var/lib/jobherald"
    return (
        f"{folder} is read-only for {UNIT} (ProtectSystem={protect_system}): use a folder "
        f"under {state}, or add ReadWritePaths={folder} with `systemctl edit jobherald`"
    )


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


# Where the installed unit and its drop-ins are (as `make install` puts them).
UNIT_DIR = Path("/etc/systemd/system")


def unit_credentials(unit_dir: Path | None = None) -> dict[str, Path]:
    """The credentials the installed unit loads: ``LoadCredential=ID:PATH`` lines of
    jobherald.service and its drop-ins (later ones win, as systemd reads them); for a
    command run by hand where the service would have ``$CREDENTIALS_DIRECTORY/ID``."""
    folder = unit_dir or Path(os.environ.get("JOBHERALD_UNIT_DIR") or UNIT_DIR)
    files = [folder / UNIT, *sorted((folder / f"{UNIT}.d").glob("*.conf"))]
    found: dict[str, Path] = {}
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key.strip() in ("LoadCredential", "LoadCredentialEncrypted"):
                ident, colon, source = value.strip().partition(":")
                if colon and ident and source and key.strip() == "LoadCredential":
                    found[ident] = Path(source)
    return found
