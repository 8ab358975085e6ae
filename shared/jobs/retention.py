"""Retention: a finished job keeps its row and summary, but not its batch and result forever.

After the retention period the stored batch and the stored result body are dropped and
`purged_at` is set; `GET /jobs/{id}/result` then answers 410 Gone. The job's status, counts
and timestamps stay, and so do its idempotency key and request hash.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from shared.ops import metrics
from shared.settings import Settings
from shared.store.models import ENDED_STATUSES, Job

logger = logging.getLogger(__name__)

PURGE_CHUNK = 1000


def purge_expired_jobs(session: Session, *, retention_days: int, limit: int = PURGE_CHUNK) -> int:
    """Purge up to `limit` jobs finished more than `retention_days` ago; returns how many.

    One chunk per call, so that a caller committing after each chunk never holds many row
    locks or builds a huge transaction on the first run over months of jobs.
    """
    cutoff = func.now() - dt.timedelta(days=retention_days)
    chunk = (
        select(Job.id)
        .where(
            Job.purged_at.is_(None),
            Job.status.in_(ENDED_STATUSES),
            Job.finished_at < cutoff,
        )
        .order_by(Job.finished_at)
        .limit(limit)
        # Beat and `timebatch jobs purge` may run at once: each job is purged by one of them.
        .with_for_update(skip_locked=True)
    )
    purged = session.execute(
        update(Job)
        .where(Job.id.in_(chunk))
        .values(batch=None, result_body=None, purged_at=func.now())
        .returning(Job.id)
    )
    return len(purged.all())


def purge_expired(engine: Engine, settings: Settings) -> int:
    """Apply retention, one transaction per chunk of jobs; returns how many were purged."""
    total = 0
    while True:
        with Session(engine) as session, session.begin():
            purged = purge_expired_jobs(
                session, retention_days=settings.retention_days, limit=PURGE_CHUNK
            )
        total += purged
        if purged < PURGE_CHUNK:
            break
    if total:
        metrics.metrics().jobs_purged.inc(total)
        logger.info("retention purged the batches and results of %d jobs", total)
    return total
