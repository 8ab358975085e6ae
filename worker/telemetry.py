"""The worker's logs and metrics: Celery signals bind the task's ids, the task wrapper counts.

Signal receivers are connected once per process by :func:`connect_signals`, not at import.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from celery import Task, signals
from sqlalchemy import Row

from shared.jobs.queue import PROCESS_JOB
from shared.jobs.runner import Outcome
from shared.ops import logs, metrics
from shared.settings import Settings

logger = logging.getLogger(__name__)

# When the running task started: a pool process runs one task at a time.
_task_started: list[float] = [0.0]


def connect_signals(settings: Settings) -> None:
    """Logging setup, task ids in the log context, in-progress gauge, dead-process cleanup."""

    def setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
        # Receiving this signal tells Celery to leave logging to us: JSON lines on stderr.
        logs.configure_logging(loglevel or logging.INFO)

    def task_started(
        task_id: str | None = None,
        task: Task[Any, Any] | None = None,
        args: Sequence[Any] | None = None,
        **_: Any,
    ) -> None:
        is_job = task is not None and task.name == PROCESS_JOB
        job_id = args[0] if is_job and args else None
        logs.bind(task_id=task_id, job_id=job_id, organization_id=None)
        _task_started[0] = time.monotonic()
        if is_job:
            metrics.metrics().jobs_in_progress.labels(settings.queue).inc()

    def task_ended(task: Task[Any, Any] | None = None, **_: Any) -> None:
        if task is not None and task.name == PROCESS_JOB:
            metrics.metrics().jobs_in_progress.labels(settings.queue).dec()
        # A pool process runs one task at a time: clearing is enough, no tokens to keep.
        logs.bind(task_id=None, job_id=None, organization_id=None)

    def process_exiting(**_: Any) -> None:
        metrics.forget_process(settings.metrics_dir, os.getpid())

    receivers = (
        (signals.setup_logging, setup_logging),
        (signals.task_prerun, task_started),
        (signals.task_postrun, task_ended),
        (signals.worker_process_shutdown, process_exiting),
    )
    for signal, receiver in receivers:
        # dispatch_uid: an app made twice in one process connects each receiver once.
        signal.connect(receiver, weak=False, dispatch_uid=f"timebatch.{receiver.__name__}")


def record_outcome(job: Row[Any], outcome: Outcome) -> None:
    """Count a job this task just ended, from its row as the run had it (the runner's
    STARTED); its organization joins the logs.

    The duration is measured here, not taken from the row: the row's timestamps come from
    different transactions' now() and are not precise enough for a histogram.
    """
    duration = time.monotonic() - _task_started[0]
    logs.bind(organization_id=job.organization_id)
    queue_wait = None
    if job.started_at is not None:  # failed before any run could mark it
        queue_wait = (job.started_at - job.created_at).total_seconds()
    metrics.job_finished(
        operation=job.operation,
        status=outcome,
        queue_wait=queue_wait,
        duration=duration,
        entries=job.total,
    )
