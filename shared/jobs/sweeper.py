"""Re-publish jobs that were accepted but are not moving: the job row is the source of truth.

A job stays `queued` past the grace period when its message never reached the broker (it
was down) or was lost with it; it stays `running` with a stale heartbeat when its worker
died. Publishing such a job again is always safe: the job lock makes a second delivery of a
job that is in fact still running a no-op.
"""

from __future__ import annotations

import datetime as dt
import logging

from celery import Celery
from sqlalchemy import Engine, or_, select, text, update
from sqlalchemy.orm import Session

from shared.jobs.queue import publish_job
from shared.ops import metrics
from shared.settings import Settings
from shared.store.models import Job, JobStatus

logger = logging.getLogger(__name__)


def stuck_jobs(
    session: Session, *, queued_grace: int, lease: int, limit: int = 500
) -> list[tuple[str, int]]:
    """Claim up to `limit` stuck jobs for re-publishing, with their ranks; the caller
    publishes after commit."""
    now = dt.datetime.now(dt.UTC)
    queued_before = now - dt.timedelta(seconds=queued_grace)
    heartbeat_before = now - dt.timedelta(seconds=lease)
    claimed = list(
        session.execute(
            select(Job.id, Job.rank)
            .where(
                or_(
                    (Job.status == JobStatus.QUEUED)
                    & (Job.created_at < queued_before)
                    & (
                        Job.published_at.is_(None)
                        # Back off as the job ages: a long backlog is not flooded with
                        # copies, a lost message is still sent again soon enough.
                        | (Job.published_at < queued_before)
                        & text(
                            "jobs.published_at < jobs.created_at"
                            " + (CAST(:now AS timestamptz) - jobs.created_at) / 2"
                        ).bindparams(now=now)
                    ),
                    (Job.status == JobStatus.RUNNING)
                    & (Job.heartbeat_at < heartbeat_before)
                    & (Job.published_at.is_(None) | (Job.published_at < heartbeat_before)),
                )
            )
            .order_by(Job.created_at)
            .limit(limit)
            # Several beat or CLI sweepers may run at once: each job is claimed by one of them.
            .with_for_update(skip_locked=True)
        )
    )
    if claimed:
        ids = [job_id for job_id, _ in claimed]
        session.execute(update(Job).where(Job.id.in_(ids)).values(published_at=now))
    return [(str(job_id), rank) for job_id, rank in claimed]


def recover_jobs(engine: Engine, settings: Settings, app: Celery) -> int:
    """Re-publish stuck jobs; returns how many. Publishing happens after the claim commits."""
    with Session(engine) as session, session.begin():
        ids = stuck_jobs(session, queued_grace=settings.queued_grace, lease=settings.job_lease)
    for job_id, rank in ids:
        publish_job(app, job_id, rank)
    if ids:
        metrics.metrics().sweeper_republished.labels(settings.queue).inc(len(ids))
        logger.warning("re-published %d stuck jobs", len(ids))
    return len(ids)
