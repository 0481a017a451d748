"""Prometheus metrics: one registry per daemon, counted where things happen, the rest read
from the running parts at each scrape.

Labels are bounded: sources, notifiers, event kinds, states and outcomes, never job ids.
Counters live as long as the daemon (a reload keeps them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from jobherald import __version__

if TYPE_CHECKING:
    from jobherald.config import WatchedJob
    from jobherald.errors import FetchError
    from jobherald.schedule.pool import PoolStats

STATES = ("pending", "running", "succeeded", "failed", "unknown", "lost")
POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


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
            "jobherald_deliveries_pending", "Messages waiting to be delivered (or retried)."
        )
        pending.add_metric([], m.deliveries_pending)
        yield pending
        if m.pool_stats is not None:
            from jobherald.schedule.pool import LAG_BOUNDS

            stats = m.pool_stats()
            buckets, total = [], 0
            for bound, count in zip(LAG_BOUNDS, stats.lag_buckets, strict=True):
                total += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
            lag = HistogramMetricFamily(
                "jobherald_schedule_lag_seconds",
                "How late polls start after they fall due.",
                buckets=buckets,
                sum_value=stats.lag_sum,
            )
            yield lag


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
        self.polls = Counter(
            "jobherald_polls",
            "Polls of jobs, by source and outcome (ok, error, not_found, refused).",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.poll_seconds = Histogram(
            "jobherald_poll_duration_seconds",
            "How long one poll took (its retries included).",
            ["source"],
            buckets=POLL_BUCKETS,
            registry=self.registry,
        )
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
        self.deliveries_pending = 0
        # Readers of the running daemon, set by whoever runs it.
        self.job_counts: Callable[[], Mapping[str, int]] | None = None
        self.sources_up: Callable[[], Mapping[str, bool]] | None = None
        self.pool_stats: Callable[[], PoolStats] | None = None
        self.registry.register(_Live(self))
        self._by_source: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

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
        children = self._by_source.get(key)
        if children is None:
            children = self._by_source[key] = (
                self.polls.labels(job.source, outcome),
                self.poll_seconds.labels(job.source),
            )
        children[0].inc()
        children[1].observe(seconds)

    def event(self, kind: str) -> None:
        self.events.labels(kind).inc()

    def delivery(self, notifier: str, result: str) -> None:
        self.deliveries.labels(notifier, result).inc()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
