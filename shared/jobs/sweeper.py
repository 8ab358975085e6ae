"""Re-publish jobs that were accepted but are not moving: the job row is the source of truth.

A job stays `queued` when its message never reached the broker (it was down) or was lost
with it; it stays `running` with a stale heartbeat when its worker died. Publishing such a
job again is always safe: the job lock makes a second delivery of a job that is in fact
still running a no-op, so every rule here errs on the side of a duplicate.

Three rules, from the quickest to the slowest:
- after a broker outage, the worker that reconnects re-publishes what was waiting or
  running when it lost the broker (`recover_after_outage`);
- where the broker can list the job ids it holds (Redis), a queued job it does not hold is
  re-published within seconds; so is every queued job when the queue is empty (RabbitMQ);
- otherwise a queued job is re-published after a grace period, backing off.

Webhook deliveries follow the same idea: a pending one past due has lost its message.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Collection

from celery import Celery
from sqlalchemy import ColumnElement, Engine, false, func, or_, select, text, update
from sqlalchemy.orm import Session

from shared.jobs.queue import job_ids_in_broker, publish_deliveries, publish_job, queue_depth
from shared.ops import metrics
from shared.settings import Settings
from shared.store.models import UNFINISHED_STATUSES, Job, JobStatus
from shared.webhooks.outbox import claim_overdue

logger = logging.getLogger(__name__)

# A job's message is sent right after its row commits: a queued job the broker has not
# heard of this long after its last publish has lost its message.
MESSAGE_GRACE = dt.timedelta(seconds=5)
CLAIM_LIMIT = 500


def _claim(session: Session, stuck: ColumnElement[bool], now: dt.datetime) -> list[tuple[str, int]]:
    """Claim up to CLAIM_LIMIT unfinished jobs matching `stuck`, with their ranks, stamping
    them published; the caller publishes after commit."""
    claimed = list(
        session.execute(
            select(Job.id, Job.rank)
            .where(Job.status.in_(UNFINISHED_STATUSES), stuck)
            .order_by(Job.created_at)
            .limit(CLAIM_LIMIT)
            # Several sweepers may run at once: each job is claimed by one of them.
            .with_for_update(skip_locked=True)
        )
    )
    if claimed:
        ids = [job_id for job_id, _ in claimed]
        session.execute(update(Job).where(Job.id.in_(ids)).values(published_at=now))
    return [(str(job_id), rank) for job_id, rank in claimed]


def _missing_from_broker(session: Session, present: Collection[str], now: dt.datetime) -> list[str]:
    last_sent = func.coalesce(Job.published_at, Job.created_at)
    waiting = session.scalars(
        select(Job.id).where(Job.status == JobStatus.QUEUED, last_sent < now - MESSAGE_GRACE)
    )
    return [str(job_id) for job_id in waiting if str(job_id) not in present]


def stuck_jobs(
    session: Session,
    *,
    queued_grace: int,
    lease: int,
    present: Collection[str] | None = None,
) -> list[tuple[str, int]]:
    """Claim stuck jobs for re-publishing. `present`: the job ids the broker holds, where it
    can tell; then a queued job is stuck exactly when its message is missing."""
    now = dt.datetime.now(dt.UTC)
    heartbeat_before = now - dt.timedelta(seconds=lease)
    dead_worker = (
        (Job.status == JobStatus.RUNNING)
        & (Job.heartbeat_at < heartbeat_before)
        & (Job.published_at.is_(None) | (Job.published_at < heartbeat_before))
    )
    if present is not None:
        lost = _missing_from_broker(session, present, now)
        waiting_too_long: ColumnElement[bool] = Job.id.in_(lost) if lost else false()
    else:
        queued_before = now - dt.timedelta(seconds=queued_grace)
        waiting_too_long = (
            (Job.status == JobStatus.QUEUED)
            & (Job.created_at < queued_before)
            & (
                Job.published_at.is_(None)
                # Back off as the job ages: a long backlog is not flooded with copies, a
                # lost message is still sent again soon enough.
                | (Job.published_at < queued_before)
                & text(
                    "jobs.published_at < jobs.created_at"
                    " + (CAST(:now AS timestamptz) - jobs.created_at) / 2"
                ).bindparams(now=now)
            )
        )
    return _claim(session, or_(waiting_too_long, dead_worker), now)


def cut_by_outage(session: Session, lost_at: dt.datetime) -> list[tuple[str, int]]:
    """Claim the jobs a broker outage that began at `lost_at` may have lost: those queued or
    running whose last message went to the broker before then, and those whose submission
    found the broker down. Duplicates of runs still alive end as no-ops."""
    now = dt.datetime.now(dt.UTC)
    return _claim(session, Job.published_at.is_(None) | (Job.published_at < lost_at), now)


def _republish(
    engine: Engine,
    settings: Settings,
    app: Celery,
    claim: Callable[[Session], list[tuple[str, int]]],
    why: str,
) -> int:
    """Claim and publish, a batch at a time, until nothing is left; returns how many.
    Each batch is published after its claim commits; claimed jobs are stamped, so the next
    claim passes them by."""
    republished = 0
    while True:
        with Session(engine) as session, session.begin():
            claimed = claim(session)
        for job_id, rank in claimed:
            publish_job(app, job_id, rank)
        republished += len(claimed)
        if len(claimed) < CLAIM_LIMIT:
            break
    if republished:
        metrics.metrics().sweeper_republished.labels(settings.queue).inc(republished)
        logger.warning("re-published %d %s jobs", republished, why)
    return republished


def recover_jobs(engine: Engine, settings: Settings, app: Celery) -> int:
    """Re-publish stuck jobs; returns how many."""
    # Read before the jobs: a job published in between looks lost, and is sent twice.
    present: Collection[str] | None = job_ids_in_broker(app, settings.queue)
    if present is None and queue_depth(app, settings.queue) == 0:
        # RabbitMQ holds nothing for the queue, so no waiting job has a message there (a
        # worker that has just taken one marks its job running at once).
        present = frozenset()
    return _republish(
        engine,
        settings,
        app,
        lambda session: stuck_jobs(
            session, queued_grace=settings.queued_grace, lease=settings.job_lease, present=present
        ),
        "stuck",
    )


def recover_deliveries(engine: Engine, app: Celery) -> int:
    """Re-publish webhook deliveries whose message was lost; returns how many."""
    republished = 0
    while True:
        with Session(engine) as session, session.begin():
            # A delivery's message goes out after its commit or with its retry's countdown.
            claimed = claim_overdue(session, grace=MESSAGE_GRACE, limit=CLAIM_LIMIT)
        publish_deliveries(app, claimed)
        republished += len(claimed)
        if len(claimed) < CLAIM_LIMIT:
            break
    if republished:
        logger.warning("re-published %d overdue webhook deliveries", republished)
    return republished


def recover_after_outage(
    engine: Engine, settings: Settings, app: Celery, lost_at: dt.datetime
) -> int:
    """Re-publish what a broker outage that began at `lost_at` may have lost."""
    return _republish(
        engine, settings, app, lambda session: cut_by_outage(session, lost_at), "outage"
    )
