"""The worker's Celery app: the shared configuration plus its tasks (jobs, housekeeping, and
webhook deliveries, which the webhooks process takes)."""

from __future__ import annotations

import datetime as dt
import functools
import os
import uuid
from typing import Any

import celery.worker.consumer
from celery import Celery, Task, bootsteps
from celery.utils.log import get_task_logger
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from shared.jobs.faults import Fault, classify, fingerprint
from shared.jobs.queue import (
    DELIVER_WEBHOOK,
    PROCESS_JOB,
    PURGE_JOBS,
    RECOVER_AFTER_OUTAGE,
    SWEEP_JOBS,
    create_celery,
    publish_deliveries,
)
from shared.jobs.retention import purge_expired
from shared.jobs.runner import Outcome, fail_unexpectedly, record_error, run_job
from shared.jobs.sweeper import recover_after_outage, recover_deliveries, recover_jobs
from shared.ops import metrics
from shared.settings import Settings
from shared.store.engine import make_engine
from shared.webhooks.delivery import attempt
from shared.webhooks.outbox import claim_unpublished
from worker.telemetry import connect_signals, record_outcome

logger = get_task_logger(__name__)


class EngineHolder:
    """One engine per worker process, made lazily so that it is never shared across a fork."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._pid = 0

    @property
    def engine(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            self._engine = make_engine(
                self.settings,
                # The job's transaction, plus progress, heartbeat and status on their own.
                pool_size=4,
                max_overflow=2,
                connect_args={"application_name": "timebatch-worker"},
            )
            self._pid = os.getpid()
        return self._engine


# kombu tries a lost broker again 2, 4, 6 ... and at most 30 s apart; past a long outage a
# worker would find the broker back up to 30 s late. A few seconds apart costs nothing.
RECONNECT_INTERVAL_MAX = 4
# A delivery's retry due within this many seconds waits in the broker (a countdown); later
# ones are sent by the sweeper when they are due.
COUNTDOWN_LIMIT = 60


class Consumer(celery.worker.consumer.Consumer):  # type: ignore[misc]
    """Celery's consumer, reconnecting to a lost broker every few seconds at most."""

    def ensure_connected(self, conn: Any) -> Any:
        retry = conn.ensure_connection
        conn.ensure_connection = functools.partial(retry, interval_max=RECONNECT_INTERVAL_MAX)
        return super().ensure_connected(conn)


class BrokerOutage(bootsteps.StartStopStep):  # type: ignore[misc]
    """Once the consumer has the broker back after losing it, asks for what the outage may
    have lost to be published again: a restarted Redis has forgotten its messages, and the
    jobs Celery cancelled on the connection loss are nobody's now. Recovery in seconds, not
    after the sweeper's grace periods."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.lost_at: dt.datetime | None = None

    def stop(self, parent: Any) -> None:
        # The consumer stops its steps when the connection fails, before reconnecting.
        self.lost_at = dt.datetime.now(dt.UTC)

    def shutdown(self, parent: Any) -> None:
        self.lost_at = None

    def start(self, parent: Any) -> None:
        if self.lost_at is None:
            return
        lost_at, self.lost_at = self.lost_at, None
        try:
            parent.app.send_task(RECOVER_AFTER_OUTAGE, args=[lost_at.isoformat()])
        except Exception:
            # The broker went again: the sweeper's rules still find every stuck job.
            logger.warning("could not ask for recovery after the broker outage", exc_info=True)


def create_worker_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = create_celery(settings)
    holder = EngineHolder(settings)
    if settings.metrics_dir is not None:
        metrics.prepare_directory(settings.metrics_dir, clear=False)
    connect_signals(settings)

    # shared=False: the tasks belong to this app only, not to every app made later in the
    # process (Celery's default would register them on each, and the first would win).
    # max_retries None: a fault of ours is retried until the job completes; a bug ends the
    # job once it has met the same error on job_max_attempts runs in a row.
    @app.task(name=PROCESS_JOB, bind=True, max_retries=None, shared=False)  # type: ignore[untyped-decorator]
    def process_job(self: Task[[str], str], job_id: str) -> str:
        key = uuid.UUID(job_id)
        try:
            run = run_job(
                holder.engine, key, max_runs=settings.job_max_runs, lease=settings.job_lease
            )
        except Exception as exc:
            fault = classify(exc)
            if fault is Fault.SHUTDOWN:
                # The run was cut: the job stays unfinished, redelivered or swept. Leave as
                # the signal meant, even when a cleanup turned its SystemExit into another
                # error: a process that lived on would take every later error for this one.
                logger.warning("job %s interrupted by a shutdown", job_id)
                raise SystemExit(1) from exc
            countdown = min(2**self.request.retries, 30)
            if fault is Fault.TRANSIENT:
                logger.warning("job %s hit a transient database error; retrying", job_id)
                raise self.retry(exc=exc, countdown=countdown) from exc
            streak = record_error(holder.engine, key, fingerprint(exc))
            if streak < settings.job_max_attempts:
                logger.warning(
                    "job %s raised an internal error (%d in a row); retrying",
                    job_id, streak, exc_info=True,
                )  # fmt: skip
                raise self.retry(exc=exc, countdown=countdown) from exc
            logger.exception("job %s failed with the same internal error %d times", job_id, streak)
            failed = fail_unexpectedly(holder.engine, key)
            if failed is not None:
                record_outcome(failed, Outcome.FAILED)
            raise
        if run.job is not None:
            record_outcome(run.job, run.outcome)
        if run.deliveries or run.outcome is Outcome.SKIPPED:
            # What this run recorded, or what one that ended the job and died before this step
            # may have left unsent.
            publish_job_deliveries(key)
        logger.info("job %s %s", job_id, run.outcome)
        return run.outcome

    def publish_job_deliveries(key: uuid.UUID) -> None:
        try:
            with Session(holder.engine) as session, session.begin():
                deliveries = claim_unpublished(session, key)
            publish_deliveries(app, deliveries)
        except Exception:
            # The job is done whatever happens here: the sweeper sends what is left pending
            # once it is overdue (unstamped, or stamped and its message lost).
            logger.warning("could not publish the deliveries of job %s", key, exc_info=True)

    # A receiver's answer decides the next attempt; a database fault is tried again (the
    # claim makes a duplicate harmless), and the sweeper catches a message lost meanwhile.
    @app.task(
        name=DELIVER_WEBHOOK,
        shared=False,
        autoretry_for=(OperationalError,),
        retry_backoff=1,
        retry_backoff_max=30,
        max_retries=None,
    )  # type: ignore[untyped-decorator]
    def deliver_webhook(delivery_id: int) -> str:
        done = attempt(holder.engine, settings, delivery_id)
        if done.retry_in is not None and done.retry_in <= COUNTDOWN_LIMIT:
            # Longer waits are the sweeper's: a broker holding a message for hours is not
            # a schedule to rely on.
            publish_deliveries(app, [delivery_id], countdown=done.retry_in)
        logger.info("delivery %s %s", delivery_id, done.result)
        return str(done.result)

    @app.task(name=SWEEP_JOBS, acks_late=False, shared=False)  # type: ignore[untyped-decorator]
    def sweep_jobs() -> int:
        jobs = recover_jobs(holder.engine, settings, app)
        return jobs + recover_deliveries(holder.engine, app)

    # The database may be coming back with the broker: try again, the outage's start kept.
    @app.task(
        name=RECOVER_AFTER_OUTAGE,
        acks_late=False,
        shared=False,
        autoretry_for=(OperationalError,),
        retry_backoff=1,
        retry_backoff_max=30,
        max_retries=20,
    )  # type: ignore[untyped-decorator]
    def recover_outage(lost_at: str) -> int:
        return recover_after_outage(
            holder.engine, settings, app, dt.datetime.fromisoformat(lost_at)
        )

    @app.task(name=PURGE_JOBS, acks_late=False, shared=False)  # type: ignore[untyped-decorator]
    def purge_jobs() -> int:
        return purge_expired(holder.engine, settings)

    # Beat keeps its schedule in the data dir; beat opens it before any signal of its own.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app.conf.beat_schedule_filename = str(settings.data_dir / "celerybeat-schedule")
    app.conf.beat_schedule = {
        "sweep-stuck-jobs": {
            "task": SWEEP_JOBS,
            "schedule": float(settings.sweep_interval),
            "options": {"expires": float(settings.sweep_interval)},
        },
        "purge-expired-jobs": {
            "task": PURGE_JOBS,
            "schedule": float(settings.purge_interval),
            "options": {"expires": float(settings.purge_interval)},
        },
    }
    app.conf.worker_consumer = f"{__name__}:Consumer"
    app.steps["consumer"].add(BrokerOutage)
    app.conf.timebatch_settings = settings
    return app
