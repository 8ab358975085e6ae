from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from shared.jobs.sweeper import cut_by_outage, stuck_jobs
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


def test_where_the_broker_lists_its_jobs_a_queued_job_is_stuck_when_its_message_is_missing(
    session: Session,
) -> None:
    lost = job(session, "queued", created_at=10, published_at=1)
    never_sent = job(session, "queued", created_at=1, published_at=None)
    held = job(session, "queued", created_at=10, published_at=None)
    just_sent = job(session, "queued", created_at=10, published_at=0.01)
    mine = {lost, never_sent, held, just_sent}

    claimed = {i for i, _ in stuck_jobs(session, queued_grace=60, lease=120, present={held})}

    # No grace period but the moment between commit and publish: found in seconds.
    assert claimed & mine == {lost, never_sent}
    again = stuck_jobs(session, queued_grace=60, lease=120, present={held})
    assert {i for i, _ in again} & mine == set()


def test_an_outage_claims_what_was_sent_before_it_began_and_what_was_never_sent(
    session: Session,
) -> None:
    lost_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)
    queued_before = job(session, "queued", created_at=10, published_at=5)
    running_before = job(session, "running", created_at=10, heartbeat_at=0.1, published_at=5)
    refused_at_submit = job(session, "queued", created_at=1, published_at=None)
    sent_since = job(session, "queued", created_at=10, published_at=1)
    finished = job(session, "succeeded", created_at=10, published_at=5)
    mine = {queued_before, running_before, refused_at_submit, sent_since, finished}

    claimed = {job_id for job_id, _ in cut_by_outage(session, lost_at)}

    assert claimed & mine == {queued_before, running_before, refused_at_submit}
    # Stamped as sent now: a second worker back from the same outage claims none of them.
    assert {job_id for job_id, _ in cut_by_outage(session, lost_at)} & mine == set()
