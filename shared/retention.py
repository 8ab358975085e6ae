"""Retention: a finished job keeps its row and summary, but not its batch and result forever.

After the retention period the stored batch and the stored result body are dropped and
`purged_at` is set; `GET /jobs/{id}/result` then answers 410 Gone. The job's status, counts
and timestamps stay, and so do its idempotency key and request hash.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.models import Job

PURGEABLE = ("succeeded", "failed", "canceled")


def purge_expired_jobs(session: Session, *, retention_days: int, limit: int = 1000) -> int:
    """Purge up to `limit` jobs finished more than `retention_days` ago; returns how many.

    One chunk per call, so that a caller committing after each chunk never holds many row
    locks or builds a huge transaction on the first run over months of jobs.
    """
    cutoff = func.now() - dt.timedelta(days=retention_days)
    chunk = (
        select(Job.id)
        .where(
            Job.purged_at.is_(None),
            Job.status.in_(PURGEABLE),
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
