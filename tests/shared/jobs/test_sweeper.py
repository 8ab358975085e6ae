from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from shared.jobs.sweeper import stuck_jobs
from shared.store.models import Job


def job(session: Session, status: str, **ages: float | None) -> str:
    """A job whose timestamps lie the given numbers of minutes in the past."""
    now = dt.datetime.now(dt.UTC)
    values: dict[str, Any] = {
        name: None if minutes is None else now - dt.timedelta(minutes=minutes)
        for name, minutes in ages.items()
    }
    row = Job(
        organization_id=2110,
        person_id=7781,
        operation="create",
        status=status,
        total=1,
        batch=b"{}",
        **values,
    )
    session.add(row)
    session.flush()
    return str(row.id)


def test_stuck_jobs_are_claimed_with_backoff(session: Session) -> None:
    never_published = job(session, "queued", created_at=10, published_at=None)
    republished_early = job(session, "queued", created_at=10, published_at=8)
    republished_late = job(session, "queued", created_at=10, published_at=1)
    young = job(session, "queued", created_at=0.1, published_at=None)
    dead_worker = job(session, "running", created_at=10, heartbeat_at=5, published_at=None)
    alive_worker = job(session, "running", created_at=10, heartbeat_at=0.1, published_at=None)
    finished = job(session, "succeeded", created_at=10, published_at=None)

    claimed = {job_id for job_id, _ in stuck_jobs(session, queued_grace=60, lease=120)}

    mine = {never_published, republished_early, republished_late, young, dead_worker}
    mine |= {alive_worker, finished}
    assert claimed & mine == {never_published, republished_early, dead_worker}
    # Claimed jobs are stamped, so the next sweep leaves them alone for a while.
    assert {job_id for job_id, _ in stuck_jobs(session, queued_grace=60, lease=120)} & mine == set()
