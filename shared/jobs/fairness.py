"""Fair dispatch across organizations, and the per-organization limits that admit a job.

Every job gets a rank when it is submitted: how many unfinished jobs its organization has
ahead of it. The rank becomes the message's broker priority, so a worker that is free takes
the job of lowest rank first: an organization's first unfinished job goes before another
organization's tenth, as in a round-robin over organizations, while one organization alone
still has every worker (priorities never hold a worker idle). Jobs of equal rank keep their
submission order; an organization's ranks never decrease while it has unfinished jobs, so
its own jobs start in the order they were submitted. The state is the jobs table and the
broker's queue, so it holds for any number of web and worker processes.

Submissions of one organization serialize on its row, so the count that admits a job and
the job's insert are one step: concurrent submitters cannot push it past its limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from shared.jsonapi.errors import ApiError, Problem
from shared.ops import metrics
from shared.settings import Settings, is_amqp
from shared.store.models import UNFINISHED_STATUSES, Job, JobStatus

# Brokers offer ten priority levels (Redis: 0 first; RabbitMQ: 9 first); beyond the ninth
# unfinished job an organization's jobs share the last rank, in submission order.
MAX_RANK = 9
# How far back finished jobs tell how fast an organization's work drains.
RATE_WINDOW_MINUTES = 10
MAX_RETRY_AFTER = 3600


def message_priority(rank: int, broker_url: str) -> int:
    """The broker priority of a job of this rank: its transport's order, first is best."""
    if is_amqp(broker_url):
        return MAX_RANK - rank
    return rank


@dataclass(frozen=True)
class Load:
    """An organization's unfinished work: jobs, entries in them, and the highest rank."""

    jobs: int
    entries: int
    rank: int

    def next_rank(self) -> int:
        # Never below the rank of a job still waiting: within the organization, order holds.
        return min(max(self.jobs, self.rank), MAX_RANK)


# psycopg's SQL, sent together (lock_and_load). FOR NO KEY UPDATE does not conflict with the
# key-share locks foreign keys take, so only other submissions of the same organization wait,
# and only for one insert.
_LOCK = "SELECT id FROM organizations WHERE id = %(organization_id)s FOR NO KEY UPDATE"
_LOAD = (
    "SELECT count(*), coalesce(sum(total), 0), coalesce(max(rank), 0) FROM jobs"
    " WHERE organization_id = %(organization_id)s AND status = ANY(%(unfinished)s)"
)
_UNFINISHED = [str(status) for status in UNFINISHED_STATUSES]

# The statements a refusal runs (admit), built once like those above.
_ORGANIZATION = Job.organization_id == bindparam("organization_id")
_OLDEST_LEFT = (
    select(Job.total - Job.processed)
    .where(_ORGANIZATION, Job.status.in_(UNFINISHED_STATUSES))
    .order_by(Job.created_at)
    .limit(1)
)
_RECENT_PACE = select(
    func.coalesce(func.sum(Job.total), 0),
    func.coalesce(func.sum(func.extract("epoch", Job.finished_at - Job.started_at)), 0),
).where(
    _ORGANIZATION,
    Job.status == JobStatus.SUCCEEDED,
    Job.finished_at > func.now() - func.make_interval(0, 0, 0, 0, 0, RATE_WINDOW_MINUTES),
)


def lock_and_load(session: Session, organization_id: int) -> Load:
    """Serialize this organization's submissions until the transaction ends, and read its
    unfinished work once they are: in one round trip, the transaction's start, the lock and
    the count sent in a pipeline. The server runs them in turn, and the count, a statement
    of its own, sees every job committed before the lock was granted."""
    driver = session.connection().connection.driver_connection
    assert driver is not None
    params = {"organization_id": organization_id, "unfinished": _UNFINISHED}
    with driver.pipeline():
        driver.execute(_LOCK, params)
        load = driver.execute(_LOAD, params)
    counted = load.fetchone()
    assert counted is not None  # an aggregate without GROUP BY: always one row
    jobs, entries, rank = counted
    return Load(jobs=int(jobs), entries=int(entries), rank=int(rank))


def admit(
    session: Session, organization_id: int, load: Load, total: int, settings: Settings
) -> None:
    """Refuse a job that would take the organization past one of its limits (429)."""
    if load.jobs >= settings.org_max_unfinished:
        problem = Problem(
            429,
            "Too many unfinished jobs",
            f"your organization has {load.jobs} unfinished jobs, as many as"
            f" TIMEBATCH_ORG_MAX_UNFINISHED ({settings.org_max_unfinished}) allows;"
            " submit again once some have finished",
            code="org_max_unfinished",
        )
        drain = _oldest_unfinished_entries(session, organization_id)
    elif load.entries + total > settings.org_max_unfinished_entries:
        problem = Problem(
            429,
            "Too many unfinished entries",
            f"your organization's unfinished jobs hold {load.entries} entries; with these"
            f" {total} that is more than TIMEBATCH_ORG_MAX_UNFINISHED_ENTRIES"
            f" ({settings.org_max_unfinished_entries}) allows",
            code="org_max_unfinished_entries",
        )
        drain = load.entries + total - settings.org_max_unfinished_entries
    else:
        return
    seconds = retry_after(session, organization_id, drain, settings.retry_after)
    metrics.metrics().submissions_refused.labels(problem.code).inc()
    raise ApiError([problem], headers={"Retry-After": str(seconds)})


def _oldest_unfinished_entries(session: Session, organization_id: int) -> int:
    """Entries left in the organization's oldest unfinished job: what must drain first."""
    left = session.scalar(_OLDEST_LEFT, {"organization_id": organization_id})
    return int(left or 0)


def retry_after(session: Session, organization_id: int, entries: int, fallback: int) -> int:
    """Whole seconds until about `entries` of the organization's work have drained, from the
    pace of its jobs that finished lately; `fallback` when none did."""
    done, seconds = session.execute(_RECENT_PACE, {"organization_id": organization_id}).one()
    if not done or not seconds:
        return max(fallback, 1)
    rate = float(done) / float(seconds)
    return min(max(math.ceil(entries / rate), 1), MAX_RETRY_AFTER)
