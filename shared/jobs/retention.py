"""Retention: a finished job keeps its row and summary, but not its batch and result forever.

After the retention period the stored batch and the stored result body are dropped and
`purged_at` is set; `GET /jobs/{id}/result` then answers 410 Gone. The job's status, counts
and timestamps stay, and so do its idempotency key and request hash. Webhook deliveries that
ended (delivered or failed) that long ago are deleted.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session

from shared.ops import metrics
from shared.settings import Settings
from shared.store.models import ENDED_STATUSES, DeliveryStatus, Job, WebhookDelivery

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


def purge_ended_deliveries(
    session: Session, *, retention_days: int, limit: int = PURGE_CHUNK
) -> int:
    """Delete up to `limit` webhook deliveries that ended more than `retention_days` ago."""
    cutoff = func.now() - dt.timedelta(days=retention_days)
    chunk = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status != DeliveryStatus.PENDING,
            WebhookDelivery.created_at < cutoff,
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    deleted = session.execute(
        delete(WebhookDelivery).where(WebhookDelivery.id.in_(chunk)).returning(WebhookDelivery.id)
    )
    return len(deleted.all())


def _in_chunks(engine: Engine, purge: Callable[..., int], retention_days: int) -> int:
    """Run `purge` one transaction per chunk until a chunk comes back short."""
    total = 0
    while True:
        with Session(engine) as session, session.begin():
            purged = purge(session, retention_days=retention_days, limit=PURGE_CHUNK)
        total += purged
        if purged < PURGE_CHUNK:
            return total


def purge_expired(engine: Engine, settings: Settings) -> int:
    """Apply retention; returns how many jobs were purged."""
    total = _in_chunks(engine, purge_expired_jobs, settings.retention_days)
    _in_chunks(engine, purge_ended_deliveries, settings.retention_days)
    if total:
        metrics.metrics().jobs_purged.inc(total)
        logger.info("retention purged the batches and results of %d jobs", total)
    return total
