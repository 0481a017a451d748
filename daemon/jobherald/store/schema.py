"""The tables, the timestamp type every backend shares, and where the migrations live."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

_from_iso = datetime.fromisoformat


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timestamps stored as naive UTC, read back as aware UTC, on every backend."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def result_processor(self, dialect: sa.Dialect, coltype: object) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def from_text(value: str | None) -> datetime | None:
            # SQLite keeps the text SQLAlchemy wrote ("2026-12-04 23:28:25.956241"); read
            # as UTC in one step (ten times faster than parsing, then replacing tzinfo).
            return None if value is None else _from_iso(value + "+00:00")

        return from_text

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite hands back text from expressions such as min()
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC)


class IsoText(sa.sql.expression.FunctionElement[str]):
    """A stored timestamp as JSON output shows it (``2026-12-04T10:00:00.5Z``, as
    ``timing.iso`` writes it), written by the database: a listing of 100,000 jobs then
    makes no datetime of the times it only shows."""

    type = sa.String()
    inherit_cache = True
    name = "iso_text"


@compiles(IsoText, "sqlite")
def _iso_text_sqlite(element: IsoText, compiler: SQLCompiler, **kw: Any) -> str:
    # Stored as "2026-12-04 10:00:00.500000"; whole seconds without the fraction.
    (value,) = element.clauses
    whole = sa.func.substr(value, -7, type_=sa.String) == ".000000"
    text = sa.case((whole, sa.func.substr(value, 1, 19, type_=sa.String)), else_=value)
    return compiler.process(sa.func.replace(text, " ", "T", type_=sa.String) + "Z", **kw)


@compiles(IsoText)
def _iso_text(element: IsoText, compiler: SQLCompiler, **kw: Any) -> str:
    # PostgreSQL: a timestamp without time zone holding UTC.
    (value,) = element.clauses
    micro = sa.func.mod(sa.cast(sa.extract("microseconds", value), sa.BigInteger), 1000000)
    fraction = sa.case((micro == 0, ""), else_=sa.func.to_char(value, ".US", type_=sa.String))
    seconds = sa.func.to_char(value, 'YYYY-MM-DD"T"HH24:MI:SS', type_=sa.String)
    return compiler.process(seconds + fraction + "Z", **kw)


def iso_text(column: sa.ColumnElement[datetime]) -> sa.ColumnElement[str]:
    """``column`` (a ``UTCDateTime``) read as ISO 8601 text, labelled with its name."""
    return IsoText(column).label(column.key)


class FloatText(sa.sql.expression.FunctionElement[str]):
    """A float as text that reads back as the same float."""

    type = sa.String()
    inherit_cache = True
    name = "float_text"


@compiles(FloatText, "sqlite")
def _float_text_sqlite(element: FloatText, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite's own text of a REAL keeps 15 digits, its printf 16 unless "!"; 17 always
    # read back the same.
    (value,) = element.clauses
    return compiler.process(sa.func.printf("%!.17g", value, type_=sa.String), **kw)


@compiles(FloatText)
def _float_text(element: FloatText, compiler: SQLCompiler, **kw: Any) -> str:
    # PostgreSQL writes the shortest text that reads back the same.
    (value,) = element.clauses
    return compiler.process(sa.cast(value, sa.Text), **kw)


metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("instance_id", sa.Text, nullable=False),
    sa.Column("configured", sa.Boolean, nullable=False, default=True),
    sa.Column("state", sa.String(16), nullable=False, default="pending"),
    sa.Column("raw_status", sa.Text),
    sa.Column("progress", sa.Float),
    sa.Column("recorded_progress", sa.Float),
    sa.Column("type", sa.Text),
    sa.Column("archive_id", sa.Text),
    sa.Column("reasons", sa.Text),
    sa.Column("begin_time", UTCDateTime),
    sa.Column("end_time", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_polled_at", UTCDateTime),
    sa.Column("last_changed_at", UTCDateTime),
    sa.Column("error", sa.Text),
    sa.Column("error_since", UTCDateTime),
    sa.Column("not_found", sa.Integer, nullable=False, default=0),
    sa.Column("running_since", UTCDateTime),
    sa.Column("progress_changed_at", UTCDateTime),
    sa.Column("milestone", sa.Float, nullable=False, default=0.0),
    sa.Column("stall_notified", sa.Boolean, nullable=False, default=False),
    sa.Column("overdue_notified", sa.Boolean, nullable=False, default=False),
    sa.Column("error_notified", sa.Boolean, nullable=False, default=False),
    sa.Column("link", sa.Text),
    sa.Column(
        "slow_notified", sa.Boolean, nullable=False, default=False, server_default=sa.false()
    ),
    # Raised by every write of the job's state: replicas change a job only from the
    # version they read (compare-and-set), so one flip is written once.
    sa.Column("version", sa.Integer, nullable=False, default=0, server_default="0"),
    # The id the upstream knows the job by, when the key (id) is not it: two configured
    # jobs with one id (two namespaces, two instances) are stored as "source/id...".
    sa.Column("remote_id", sa.Text),
    # When the job left the config (None: it is watched); history is kept from then on
    # for keep_history.
    sa.Column("removed_at", UTCDateTime),
    # Listings filter by state or source and sort by name (then id) in the database.
    sa.Index("ix_jobs_state_name", "state", "name", "id"),
    sa.Index("ix_jobs_source_name", "source", "name", "id"),
    sa.Index("ix_jobs_name", "name", "id"),
    sa.Index("ix_jobs_created", "created_at", "id"),
    sa.Index("ix_jobs_remote", "remote_id"),
    # Watched jobs (configured) apart from history: a listing, a count or a start reads
    # them without a scan of every job ever finished.
    sa.Index("ix_jobs_watched", "configured", "state", "name", "id"),
    sa.Index("ix_jobs_watched_created", "configured", "created_at", "id"),
    sa.Index("ix_jobs_removed_at", "removed_at"),
)

source_health = sa.Table(
    "source_health",
    metadata,
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("error", sa.Text),
    sa.Column("error_since", UTCDateTime),
    sa.Column("error_notified", sa.Boolean, nullable=False, default=False),
    sa.Column("version", sa.Integer, nullable=False, default=0, server_default="0"),
)

transitions = sa.Table(
    "transitions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(128), sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("from_state", sa.String(16)),
    sa.Column("to_state", sa.String(16), nullable=False),
    sa.Column("progress", sa.Float),
    sa.Column("raw_status", sa.Text),
    sa.Index("ix_transitions_job", "job_id", "id"),
    # What finished when (reports read a window of it).
    sa.Index("ix_transitions_end", "to_state", "at"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("job_id", sa.String(128), sa.ForeignKey("jobs.id")),
    sa.Column("source", sa.String(64)),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Index("ix_events_job", "job_id", "at"),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(32), sa.ForeignKey("events.id"), nullable=False),
    sa.Column("notifier", sa.String(64), nullable=False),
    sa.Column("target", sa.String(32), nullable=False, default="*"),
    sa.Column("url", sa.Text),
    sa.Column("state", sa.String(16), nullable=False, default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("delivered_at", UTCDateTime),
    # Who is sending it now: a process's claim token, until when, and that replica's name.
    sa.Column("claimed_by", sa.String(32)),
    sa.Column("claimed_at", UTCDateTime),
    sa.Column("claimed_until", UTCDateTime),
    sa.Column("sent_by", sa.String(128)),
    # The message that carried it, when a digest carried it (the same for all its rows).
    sa.Column("digest_id", sa.String(32)),
    # What holds it back while its state is "silenced": "silence:ID" or "quiet" (quiet
    # hours); kept when the quiet ends (its summary's event is then its digest_id).
    sa.Column("held_by", sa.String(32)),
    sa.UniqueConstraint(
        "event_id", "notifier", "target", name="uq_deliveries_event_notifier_target"
    ),
    sa.Index("ix_deliveries_due", "state", "next_attempt_at"),
    sa.Index("ix_deliveries_lane", "notifier", "target", "state", "next_attempt_at"),
    sa.Index("ix_deliveries_held", "state", "held_by"),
)

# Silences: while one matches an event (every matcher it gives matches), the event's
# deliveries are held; when it ends they go out as one summary per notifier URL.
silences = sa.Table(
    "silences",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # Shell globs on a job's name or key, a source, a notifier; kinds as a JSON list;
    # ``everything``: a silence of every event (said with --all).
    sa.Column("job", sa.Text),
    sa.Column("source", sa.String(64)),
    sa.Column("notifier", sa.String(64)),
    sa.Column("kinds", sa.Text),
    sa.Column("everything", sa.Boolean, nullable=False, default=False),
    sa.Column("starts_at", UTCDateTime, nullable=False),
    sa.Column("ends_at", UTCDateTime, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # Ended early by hand (expire), and when its end was told (its summaries written).
    sa.Column("expired_at", UTCDateTime),
    sa.Column("ended_at", UTCDateTime),
    sa.Index("ix_silences_open", "ended_at", "ends_at"),
)

# Reports sent (or found empty and skipped): one row per report and scheduled time, the
# slot a replica claims in the transaction that queues the report's deliveries.
report_runs = sa.Table(
    "report_runs",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("scheduled_at", UTCDateTime, primary_key=True),
    sa.Column("window_start", UTCDateTime, nullable=False),
    sa.Column("window_end", UTCDateTime, nullable=False),
    # The report's event (None: its window was empty and skip_empty said so).
    sa.Column("event_id", sa.String(32)),
    sa.Column("sent_by", sa.String(128), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# One row per notifier URL that has had something to send: who sends its queue now.
# A lane is claimed as a whole, so one sender keeps a URL's order and builds its digests.
lanes = sa.Table(
    "lanes",
    metadata,
    sa.Column("notifier", sa.String(64), primary_key=True),
    sa.Column("target", sa.String(32), primary_key=True),
    sa.Column("claimed_by", sa.String(32)),
    sa.Column("claimed_until", UTCDateTime),
)

replicas = sa.Table(
    "replicas",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    # A new token on every (re)join: what a replica claims deliveries with.
    sa.Column("incarnation", sa.String(32), nullable=False),
    sa.Column("host", sa.String(256), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("joined_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("jobs", sa.Integer, nullable=False, default=0),
)


archives = sa.Table(
    "archives",
    metadata,
    sa.Column("job_id", sa.String(128), sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("archive_id", sa.Text, nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    # pending (to download), kept (on disk), failed (given up), skipped (not kept here).
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("error_since", UTCDateTime),
    sa.Column(
        "error_notified", sa.Boolean, nullable=False, default=False, server_default=sa.false()
    ),
    sa.Column("path", sa.Text),
    sa.Column("size", sa.BigInteger),
    sa.Column("sha256", sa.String(64)),
    sa.Column("done_at", UTCDateTime),
    # Who is downloading it now (a claim, as for deliveries), and which replica kept it.
    sa.Column("claimed_by", sa.String(32)),
    sa.Column("claimed_until", UTCDateTime),
    sa.Column("kept_by", sa.String(128)),
    sa.Index("ix_archives_due", "state", "next_attempt_at"),
)


# The durations of finished runs, the latest ones per job name and source: what typical
# durations, ETAs and "slower than usual" are drawn from, kept when the jobs are pruned.
durations = sa.Table(
    "durations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("job_id", sa.String(128), nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Index("ix_durations_key", "name", "source", "id"),
)

# Jobs whose history was pruned (kept as long again): `history` says so rather than
# "no such job".
pruned_jobs = sa.Table(
    "pruned_jobs",
    metadata,
    sa.Column("job_id", sa.String(128), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("pruned_at", UTCDateTime, nullable=False),
    sa.Index("ix_pruned_jobs_at", "pruned_at"),
)


def migrations_path() -> Path:
    return Path(str(resources.files("jobherald.migrations")))


# The newest revision under migrations/ (a test keeps the two the same).
SCHEMA_HEAD = "0013"


def alembic_config() -> Any:
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(migrations_path()))
    return config


def head_revision() -> str:
    """The newest schema revision this version of jobherald knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def known_revisions() -> set[str]:
    """Every schema revision this version of jobherald knows."""
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def shown_url(url: str | URL) -> str:
    """A database URL to show in a log line or an error: its password hidden, whether in
    the user part or as ``?password=``."""
    parsed = make_url(url) if isinstance(url, str) else url
    if "password" not in parsed.query:
        return parsed.render_as_string(hide_password=True)
    masked = parsed.update_query_dict({"password": "MASKED"})
    return masked.render_as_string(hide_password=True).replace("password=MASKED", "password=***")


# What a pass over the database meets while it is away (a restart, a network cut).
DATABASE_AWAY = (OSError, sa.exc.DBAPIError, sa.exc.InterfaceError)


def db_problem(exc: BaseException) -> str:
    """One line for a database failure: the driver's own words, without SQLAlchemy's
    statement and background link (they can hold row data)."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    text = lines[0] if lines else type(cause).__name__
    return text[:300]
