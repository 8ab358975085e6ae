"""Prometheus metrics: what web and worker count, and the scrape that gathers them.

gunicorn and the Celery prefork pool run several processes, so counters and histograms use
prometheus_client's multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set (the library
reads that variable itself; ``Settings.metrics_dir`` is the same value): each process writes
its own file in that directory and a scrape of the web app's ``/metrics`` merges them, worker
processes of the same machine included. The state of the system (jobs by status, queue
depth) is not counted at all but read from the database and the broker at scrape time, so it
is right however many processes or machines there are.

Metric objects are made on first use, not at import: in multiprocess mode making one
creates a file, and nothing happens at import time.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from shared.store.models import UNFINISHED_STATUSES, Job, JobStatus, Operation

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "timebatch_"
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)

# This process's metrics, when they are not in multiprocess files.
LOCAL = CollectorRegistry()


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.http_requests = Counter(
            "timebatch_http_requests",
            "HTTP requests answered, by route and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "timebatch_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self.http_in_progress = Gauge(
            "timebatch_http_requests_in_progress",
            "HTTP requests being answered",
            ["method"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.jobs_finished = Counter(
            "timebatch_jobs_finished",
            "Jobs a worker finished, by operation and final status",
            ["operation", "status"],
            registry=registry,
        )
        self.job_duration = Histogram(
            "timebatch_job_duration_seconds",
            "Time a worker spent on the run of a job that finished it",
            ["operation", "status"],
            buckets=JOB_BUCKETS,
            registry=registry,
        )
        self.job_queue_wait = Histogram(
            "timebatch_job_queue_wait_seconds",
            "From a job's submission to its first start",
            ["operation"],
            buckets=JOB_BUCKETS,
            registry=registry,
        )
        self.entries_applied = Counter(
            "timebatch_entries_applied",
            "Time entries created, updated, deleted, approved or unapproved by succeeded jobs",
            ["operation"],
            registry=registry,
        )
        self.jobs_in_progress = Gauge(
            "timebatch_jobs_in_progress",
            "Job tasks being run by worker processes",
            ["queue"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.sweeper_republished = Counter(
            "timebatch_sweeper_republished_jobs",
            "Stuck jobs the sweeper published again",
            ["queue"],
            registry=registry,
        )
        self.submissions_refused = Counter(
            "timebatch_submissions_refused",
            "Submissions refused with 429, by the organization limit they would have passed",
            ["limit"],
            registry=registry,
        )
        self.webhook_attempts = Counter(
            "timebatch_webhook_attempts",
            "Webhook delivery attempts, by outcome (delivered, retried, failed, disabled)",
            ["outcome"],
            registry=registry,
        )
        self.webhook_latency = Histogram(
            "timebatch_webhook_delivery_latency_seconds",
            "From the commit that ended a job to a receiver's 2xx for its event",
            buckets=JOB_BUCKETS,
            registry=registry,
        )
        self.jobs_purged = Counter(
            "timebatch_retention_purged_jobs",
            "Finished jobs whose batch and result retention dropped",
            registry=registry,
        )


_made = threading.Lock()


@cache
def _metrics() -> Metrics:
    return Metrics(LOCAL)


def metrics() -> Metrics:
    # functools.cache lets two threads build at once (a gthread web worker's first requests),
    # and the second registration of the same series raises.
    with _made:
        return _metrics()


def request_finished(method: str, route: str, status: int, seconds: float) -> None:
    m = metrics()
    m.http_requests.labels(method, route, str(status)).inc()
    m.http_duration.labels(method, route).observe(seconds)


def job_finished(
    *, operation: str, status: str, queue_wait: float | None, duration: float, entries: int
) -> None:
    """Count a job the worker just finished (not one a redelivery found finished)."""
    m = metrics()
    m.jobs_finished.labels(operation, status).inc()
    m.job_duration.labels(operation, status).observe(max(duration, 0.0))
    if queue_wait is not None:
        m.job_queue_wait.labels(operation).observe(max(queue_wait, 0.0))
    if status == JobStatus.SUCCEEDED:
        m.entries_applied.labels(operation).inc(entries)


def webhook_attempted(outcome: str, *, since: dt.datetime | None = None) -> None:
    """Count an attempt; a delivered one records its latency from `since`, the job's end."""
    m = metrics()
    m.webhook_attempts.labels(outcome).inc()
    if since is not None:
        m.webhook_latency.observe(max((dt.datetime.now(dt.UTC) - since).total_seconds(), 0.0))


def multiprocess_mode() -> bool:
    """True when this process keeps its metrics in files (PROMETHEUS_MULTIPROC_DIR was set)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def prepare_directory(directory: Path, *, clear: bool) -> None:
    """Make the multiprocess directory; `clear` drops the files of an earlier run."""
    directory.mkdir(parents=True, exist_ok=True)
    if clear:
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)


def forget_process(directory: Path | None, pid: int) -> None:
    """A process of the stack exited: its live gauges must not count any more."""
    if directory is not None:
        mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


# ------------------------------------------------------------------------------- scraping


def job_counts(session: Session) -> dict[tuple[str, str], int]:
    rows = session.execute(
        select(Job.operation, Job.status, func.count()).group_by(Job.operation, Job.status)
    )
    return {(operation, status): count for operation, status, count in rows}


# Organizations with a series of their own; the rest are summed as "other", so that the
# number of series stays bounded however many organizations there are.
TOP_ORGANIZATIONS = 10


def unfinished_by_organization(session: Session) -> list[tuple[str, int, int]]:
    """(organization, unfinished jobs, entries in them): the most loaded first, then "other"."""
    rows = session.execute(
        select(Job.organization_id, func.count(), func.sum(Job.total))
        .where(Job.status.in_(UNFINISHED_STATUSES))
        .group_by(Job.organization_id)
        .order_by(func.count().desc(), Job.organization_id)
    ).all()
    found = [(str(org), int(jobs), int(entries)) for org, jobs, entries in rows]
    top, rest = found[:TOP_ORGANIZATIONS], found[TOP_ORGANIZATIONS:]
    if rest:
        top.append(("other", sum(r[1] for r in rest), sum(r[2] for r in rest)))
    return top


@dataclass
class StateCollector:
    """Jobs by operation and status from the database, queue depth from the broker."""

    session: Session
    queue: str
    queue_depth: Callable[[], int]

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "timebatch_up", "1 if the component answered this scrape", labels=["component"]
        )
        try:
            counts = job_counts(self.session)
            loads = unfinished_by_organization(self.session)
        except SQLAlchemyError:
            logger.warning("metrics: the database did not answer", exc_info=True)
            self.session.rollback()
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
            jobs = GaugeMetricFamily(
                "timebatch_jobs",
                "Jobs stored, by operation and status",
                labels=["operation", "status"],
            )
            for operation in Operation:
                for status in JobStatus:
                    jobs.add_metric([operation, status], counts.get((operation, status), 0))
            yield jobs
            unfinished = GaugeMetricFamily(
                "timebatch_organization_unfinished_jobs",
                f"Queued or running jobs of the {TOP_ORGANIZATIONS} most loaded organizations",
                labels=["organization"],
            )
            entries = GaugeMetricFamily(
                "timebatch_organization_unfinished_entries",
                "Entries in those jobs",
                labels=["organization"],
            )
            for organization, count, total in loads:
                unfinished.add_metric([organization], count)
                entries.add_metric([organization], total)
            yield unfinished
            yield entries
        try:
            depth = self.queue_depth()
        except Exception:
            logger.warning("metrics: the broker did not answer", exc_info=True)
            up.add_metric(["broker"], 0)
        else:
            up.add_metric(["broker"], 1)
            queue = GaugeMetricFamily(
                "timebatch_queue_depth", "Job messages waiting in the queue", labels=["queue"]
            )
            queue.add_metric([self.queue], depth)
            yield queue
        yield up


@dataclass
class _Merged:
    """Several collectors as one. A family found in several (this process's memory and other
    processes' files) is joined, and a series found in several is summed, as the
    multiprocess collector sums the files of several processes."""

    sources: list[Collector]

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for source in self.sources:
            for family in source.collect():
                found = families.setdefault(family.name, family)
                if found is not family:
                    found.samples.extend(family.samples)
        for family in families.values():
            totals: dict[tuple[str, tuple[tuple[str, str], ...]], Sample] = {}
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key in totals:
                    sample = sample._replace(value=totals[key].value + sample.value)
                totals[key] = sample
            family.samples = list(totals.values())
        return families.values()


@dataclass
class _Ours:
    """Only timebatch's families: other libraries' metrics may share the directory."""

    source: Collector

    def collect(self) -> Iterator[Metric]:
        return (family for family in self.source.collect() if family.name.startswith(PREFIX))


def exposition(metrics_dir: Path | None, state: Collector) -> bytes:
    """The text format of every process's metrics, plus the state read at this scrape."""
    sources: list[Collector] = []
    if metrics_dir is not None and metrics_dir.is_dir():
        files = MultiProcessCollector(None, path=str(metrics_dir))  # type: ignore[no-untyped-call]
        sources.append(_Ours(files))
    if not multiprocess_mode():
        sources.append(LOCAL)  # else this process's values are in the files already
    sources.append(state)
    return generate_latest(_Merged(sources))
