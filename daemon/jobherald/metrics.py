"""Prometheus metrics: one registry per daemon, counted where things happen, the rest read
from the running parts at each scrape.

Labels are bounded: sources, notifiers, event kinds, states and outcomes, never job ids.
Counters live as long as the daemon (a reload keeps them).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from jobherald import __version__

if TYPE_CHECKING:
    from jobherald.config import WatchedJob
    from jobherald.errors import FetchError
    from jobherald.schedule.pool import PoolStats

STATES = ("pending", "running", "succeeded", "failed", "unknown", "lost")
# From an event to its delivery: seconds when things are quiet, minutes while a URL fails.
LAG_BUCKETS = (
    0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, float("inf")
)  # fmt: skip
POLL_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf")
)  # fmt: skip


class _Live(Collector):
    """What is read from the running daemon at each scrape: jobs by state, sources up,
    the schedule lag the pool keeps, deliveries pending (as last counted)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        jobs = GaugeMetricFamily("jobherald_jobs", "Configured jobs by state.", labels=["state"])
        counts = m.job_counts() if m.job_counts else {}
        for state in STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        up = GaugeMetricFamily(
            "jobherald_source_up",
            "1 while a source's credentials work (its last poll was not refused), else 0.",
            labels=["source"],
        )
        for source, ok in (m.sources_up() if m.sources_up else {}).items():
            up.add_metric([source], 1.0 if ok else 0.0)
        yield up
        pending = GaugeMetricFamily(
            "jobherald_deliveries_pending",
            "Messages waiting to be delivered (or retried), by notifier.",
            labels=["notifier"],
        )
        for notifier in sorted(set(m.notifiers) | set(m.deliveries_pending)):
            pending.add_metric([notifier], m.deliveries_pending.get(notifier, 0))
        yield pending
        deferred = CounterMetricFamily(
            "jobherald_polls_deferred",
            "Polls that waited longer than their interval for their source's max_rate budget.",
            labels=["source"],
        )
        for source, count in sorted((m.deferred() if m.deferred else {}).items()):
            deferred.add_metric([source], count)
        yield deferred
        polls = CounterMetricFamily(
            "jobherald_polls",
            "Polls of jobs, by source and outcome (ok, error, not_found, refused).",
            labels=["source", "outcome"],
        )
        for (source, outcome), count in sorted(m.poll_counts.items()):
            polls.add_metric([source, outcome], count)
        yield polls
        seconds = HistogramMetricFamily(
            "jobherald_poll_duration_seconds",
            "How long one poll took (its retries included).",
            labels=["source"],
        )
        for source, (spread, total) in sorted(m.poll_seconds.items()):
            seconds.add_metric([source], _cumulative(POLL_BUCKETS, spread), sum_value=total)
        yield seconds
        if m.pool_stats is not None:
            from jobherald.schedule.pool import LAG_BOUNDS

            stats = m.pool_stats()
            yield HistogramMetricFamily(
                "jobherald_schedule_lag_seconds",
                "How late polls start after they fall due.",
                buckets=_cumulative(LAG_BOUNDS, stats.lag_buckets),
                sum_value=stats.lag_sum,
            )


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus's cumulative ``le`` buckets (the last one +Inf)."""
    out, total = [], 0
    for bound, count in zip(bounds, counts, strict=True):
        total += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
    return out


class Metrics:
    """The daemon's metrics; ``render()`` gives the exposition text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.build = Gauge(
            "jobherald_build_info", "jobherald's version.", ["version"], registry=self.registry
        )
        self.build.labels(__version__).set(1)
        # Counted per poll in plain numbers (the event loop is the only writer), read at
        # each scrape: a poll costs a dictionary lookup and two additions here.
        self.poll_counts: dict[tuple[str, str], int] = {}
        self.poll_seconds: dict[str, tuple[list[int], float]] = {}
        self.events = Counter(
            "jobherald_events", "Events raised, by kind.", ["kind"], registry=self.registry
        )
        self.deliveries = Counter(
            "jobherald_deliveries",
            "Delivery attempts, by notifier and result (delivered, failed, abandoned).",
            ["notifier", "result"],
            registry=self.registry,
        )
        self.archives = Counter(
            "jobherald_archives",
            "Export archives, by result (kept, failed).",
            ["result"],
            registry=self.registry,
        )
        self.heartbeats = Counter(
            "jobherald_heartbeats",
            "Dead man's switch pings, by result (sent, failed, skipped).",
            ["result"],
            registry=self.registry,
        )
        self.pruned = Counter(
            "jobherald_pruned_rows",
            "Rows deleted past keep_history, by table.",
            ["table"],
            registry=self.registry,
        )
        self.database_bytes = Gauge(
            "jobherald_database_bytes",
            "The database's size on disk (a SQLite file with its WAL; PostgreSQL's database).",
            registry=self.registry,
        )
        self.silenced = Counter(
            "jobherald_silenced",
            "Deliveries held back by a silence or quiet hours, by notifier.",
            ["notifier"],
            registry=self.registry,
        )
        self.reports_sent = Counter(
            "jobherald_reports_sent",
            "Scheduled reports queued for their notifiers, by report.",
            ["report"],
            registry=self.registry,
        )
        self.silences_active = Gauge(
            "jobherald_silences_active",
            "Silences in force now (as last read).",
            registry=self.registry,
        )
        self.delivery_lags = Histogram(
            "jobherald_delivery_lag_seconds",
            "From an event to its delivery, by notifier (each event a digest carried counts).",
            ["notifier"],
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        # As last counted (at each scrape), per notifier; the configured notifiers show 0.
        self.deliveries_pending: dict[str, int] = {}
        self.notifiers: tuple[str, ...] = ()
        # Readers of the running daemon, set by whoever runs it.
        self.job_counts: Callable[[], Mapping[str, int]] | None = None
        self.sources_up: Callable[[], Mapping[str, bool]] | None = None
        self.pool_stats: Callable[[], PoolStats] | None = None
        self.deferred: Callable[[], Mapping[str, int]] | None = None
        self.registry.register(_Live(self))

    def poll(self, job: WatchedJob, seconds: float, error: FetchError | None) -> None:
        """Count one poll (the watcher calls this after every poll)."""
        if error is None:
            outcome = "ok"
        elif error.not_found:
            outcome = "not_found"
        elif error.source_wide:
            outcome = "refused"
        else:
            outcome = "error"
        key = (job.source, outcome)
        self.poll_counts[key] = self.poll_counts.get(key, 0) + 1
        spread = self.poll_seconds.get(job.source)
        if spread is None:
            spread = self.poll_seconds[job.source] = ([0] * len(POLL_BUCKETS), 0.0)
        spread[0][bisect.bisect_left(POLL_BUCKETS, seconds)] += 1
        self.poll_seconds[job.source] = (spread[0], spread[1] + seconds)

    def event(self, kind: str) -> None:
        self.events.labels(kind).inc()

    def delivery(self, notifier: str, result: str) -> None:
        self.deliveries.labels(notifier, result).inc()

    def held(self, notifier: str) -> None:
        self.silenced.labels(notifier).inc()

    def delivery_lag(self, notifier: str, seconds: float) -> None:
        self.delivery_lags.labels(notifier).observe(seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
