"""Templates rendered in a child process: bounded in time, memory and output.

A notifier's template is the user's code, and its input is the upstream's text: a
loop over 3,000 reasons nested three deep, a recursive macro or ``'x' * 10**9`` must
not freeze or kill the daemon. Each notifier's renders go to a long-lived child process
of its own (checks, for ``check-config`` and a reload, to another), which is killed and
started again when it does not answer within its budget or dies of its memory limit: a
notifier whose templates are slow delays its own messages only. Callers block, so the
daemon calls from a thread, never from its event loop.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

# What one batch of renders may take (wall time), and what the child may hold.
BUDGET = 2.0
MEMORY_LIMIT = 256 * 1024 * 1024
# The longest text one template may render (a message is read by people).
MAX_OUTPUT = 64 * 1024
# How long the child may take to start (import Jinja2) before it counts as broken.
START_TIMEOUT = 30.0

# One render: the template's text, and the event it renders (kind, event id, payload).
Job = tuple[str, str, str, Mapping[str, Any]]


class Renderer:
    """The child process, started on first use; thread-safe (one batch at a time)."""

    def __init__(self, budget: float = BUDGET) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None

    def render(self, jobs: Sequence[Job]) -> list[tuple[bool, str]]:
        """Each job's text ``(True, text)`` or why it failed ``(False, why)``: a batch that
        does not finish within the budget gives every job ``(False, "took longer ...")``."""
        with self._lock:
            try:
                conn = self._ensure()
            except (OSError, RuntimeError) as exc:  # no process to render in: say so
                log.debug("starting the template process failed", exc_info=exc)
                return [(False, f"template process cannot start: {exc}")] * len(jobs)
            try:
                conn.send(list(jobs))
                if conn.poll(self.budget):
                    result: list[tuple[bool, str]] = conn.recv()
                    return result
                why = f"template took longer than {self.budget:g}s: stopped"
            except (EOFError, OSError, BrokenPipeError):
                why = f"template used more than {MEMORY_LIMIT // 2**20} MB or crashed: stopped"
            self._kill()
            return [(False, why)] * len(jobs)

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _ensure(self) -> Connection:
        if self._conn is not None and self._process.is_alive():
            return self._conn
        self._kill()
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(child,), name="jobherald-render")
        process.daemon = True
        process.start()
        child.close()
        if not parent.poll(START_TIMEOUT) or parent.recv() != "ready":
            process.kill()
            raise RuntimeError("the template process did not start")
        self._process, self._conn = process, parent
        return parent

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join(5)
            self._process = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_shared: Renderer | None = None
_shared_lock = threading.Lock()
# One render process per notifier with templates: a notifier whose renders are slow
# holds up its own messages only.
_per_notifier: dict[str, Renderer] = {}


def shared() -> Renderer:
    """The process's Renderer for checks (check-config, a reload's check)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Renderer()
        return _shared


def of(notifier: str) -> Renderer:
    """The Renderer of this notifier's messages (its own child process)."""
    with _shared_lock:
        renderer = _per_notifier.get(notifier)
        if renderer is None:
            renderer = _per_notifier[notifier] = Renderer()
        return renderer


def keep_only(notifiers: Sequence[str]) -> None:
    """Stop the render processes of notifiers no longer configured."""
    with _shared_lock:
        gone = [name for name in _per_notifier if name not in notifiers]
        stopped = [_per_notifier.pop(name) for name in gone]
    for renderer in stopped:
        renderer.close()


def check_template(text: str, *, digest: bool = False, report: bool = False) -> str | None:
    """None when the template compiles and renders every sample event (with ``digest``:
    sample digests of 1, 5 and 200 events) within the render budget (in the render
    process: a template that hangs or recurses is refused), else why not."""
    from jobherald import templates  # Jinja2 only when a notifier has templates

    if report:
        jobs = [(text, templates.REPORT, "", {"report": templates.report_sample()})]
    elif digest:
        jobs = [(text, templates.DIGEST, "", payload) for payload in templates.digest_samples()]
    else:
        jobs = [
            (text, kind, templates.SAMPLE_EVENT_ID, payload)
            for kind, payload in templates.samples()
        ]
    for ok, why in shared().render(jobs):
        if not ok:
            return f"{why} on a sample event" if why.endswith("stopped") else why
    return None


def _serve(conn: Connection) -> None:  # pragma: no cover (runs in the child)
    """The child: limit memory, import the templates, then render batches until EOF."""
    import resource
    import signal

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from jobherald import templates

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    conn.send("ready")
    while True:
        try:
            jobs = conn.recv()
        except (EOFError, OSError):
            return
        conn.send([_one(templates, *job) for job in jobs])


def _die_with_parent() -> None:  # pragma: no cover (runs in the child)
    """Linux's PR_SET_PDEATHSIG: a parent killed with -9 takes a hung render with it."""
    import ctypes
    import os
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call took effect
        os._exit(0)


def _one(
    templates: Any, text: str, kind: str, event_id: str, payload: Mapping[str, Any]
) -> tuple[bool, str]:  # pragma: no cover (runs in the child)
    try:
        template = templates.compile_template(text)
        return True, templates.fill(template, kind, event_id, payload, limit=MAX_OUTPUT)
    except templates.TemplateProblem as exc:
        return False, str(exc)
    except MemoryError:
        return False, f"template does not render: used more than {MEMORY_LIMIT // 2**20} MB"
    except RecursionError:
        return False, "template does not render: it recurses too deep"
    except Exception as exc:  # the user's code: whatever it raises is its problem
        return False, f"template does not render: {type(exc).__name__}: {exc}"[:300]
