"""The command line: ``jobherald run | check-config | status | history | replicas | ...``.

One module per kind of command; importing this package registers them all on ``cli``.
"""

from jobherald.cli import daemon, jobs, outbox, views
from jobherald.cli.base import cli, main

__all__ = ["cli", "daemon", "jobs", "main", "outbox", "views"]
