"""One daemon per SQLite database: a lock the kernel drops when its holder dies."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path

from jobherald.errors import StoreError


class DatabaseLock:
    """An exclusive flock(2) on ``<database>.lock``, holding who has it (host, pid).

    flock belongs to the open file: a daemon killed with SIGKILL leaves the file
    behind but not the lock, so the next start is never refused by a dead one.
    """

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".lock")
        self._fd: int | None = None

    def acquire(self, what: str) -> None:
        """Hold the lock, or raise StoreError naming whoever holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except FileNotFoundError:
            folder = self.path.parent
            raise StoreError(
                f"database folder {folder} does not exist: create it (install -d -m 0700 "
                f"{folder}), or start jobherald.service once, which makes its own"
            ) from None
        except OSError as exc:
            raise StoreError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = (
                f"{holder.get('what', 'jobherald')} on host {holder.get('host', '?')} "
                f"(pid {holder.get('pid', '?')})"
                if holder
                else "another jobherald process"
            )
            raise StoreError(
                f"database {self.path.with_suffix('')} is in use by {who}: "
                "one daemon per SQLite database (use PostgreSQL for several)"
            ) from None
        except OSError:
            os.close(fd)
            raise
        _keep_owner(fd, self.path.parent)
        os.ftruncate(fd, 0)
        record = {"what": what, "host": socket.gethostname(), "pid": os.getpid()}
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def holder(database: Path) -> dict[str, object] | None:
    """Who holds the lock of this SQLite database now (what, host, pid), or None when
    nobody does (no daemon runs on it)."""
    path = database.with_name(database.name + ".lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)  # held: its holder wrote who it is
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def lock_holders(database: Path) -> set[int]:
    """The pids the kernel says hold the lock of this SQLite database (its lock table in
    /proc/locks, not what the lock file says)."""
    path = database.with_name(database.name + ".lock")
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii", errors="replace") as table:
            lines = table.read().splitlines()
    except OSError:
        return set()
    file_id = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = set()
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2146381 0 EOF" ("->" marks a waiter)
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == file_id:
            with contextlib.suppress(ValueError):
                pids.add(int(fields[4]))
    return pids


def _read(fd: int) -> dict[str, object]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _keep_owner(fd: int, folder: Path) -> None:
    """Run as root beside a service's database, leave the lock file the service's own."""
    if os.geteuid() != 0:
        return
    st = folder.stat()
    with contextlib.suppress(OSError):
        os.fchown(fd, st.st_uid, st.st_gid)
