"""The command line: ``jobherald run | check-config | status | history | prune | roma ...``.

One module per kind of command; importing this package registers them all on ``cli``.
"""

from jobherald.cli import daemon, history, jobs, outbox, reports, roma, silences, starter, views
from jobherald.cli.base import cli, main

__all__ = [
    "cli",
    "daemon",
    "history",
    "jobs",
    "main",
    "outbox",
    "reports",
    "roma",
    "silences",
    "starter",
    "views",
]
