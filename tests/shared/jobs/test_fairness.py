"""Ranks, broker priorities, the per-organization limits and the Retry-After estimate."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading

import pytest
from sqlalchemy import Engine, text, update
from sqlalchemy.orm import Session

from shared.domain.tokens import Principal
from shared.jobs.fairness import (
    MAX_RANK,
    Load,
    admit,
    lock_and_load,
    message_priority,
    retry_after,
)
from shared.jsonapi.errors import ApiError
from shared.settings import Settings
from shared.store.models import Job
from tests.factories import create_resource, queue_job
from tests.jobclient import eventually

MEMBER = Principal(person_id=7781, organization_id=2110, read_only=False)
ELSEWHERE = Principal(person_id=8881, organization_id=2112, read_only=False)


def test_an_organization_with_nothing_in_flight_goes_first() -> None:
    assert Load(jobs=0, entries=0, rank=0).next_rank() == 0
    assert Load(jobs=3, entries=30, rank=2).next_rank() == 3


def test_a_rank_never_goes_below_a_waiting_job_and_stops_at_the_last_level() -> None:
    # One of five finished: four unfinished, but a job of rank 5 still waits.
    assert Load(jobs=4, entries=40, rank=5).next_rank() == 5
    assert Load(jobs=250, entries=2500, rank=MAX_RANK).next_rank() == MAX_RANK


def test_priorities_follow_each_broker_s_order() -> None:
    assert [message_priority(r, "redis://h:6379/0") for r in (0, 9)] == [0, 9]
    assert [message_priority(r, "redis+socket:///tmp/r.sock") for r in (0, 9)] == [0, 9]
    assert [message_priority(r, "amqp://guest@h//") for r in (0, 9)] == [9, 0]


def test_submissions_get_increasing_ranks_per_organization(session: Session) -> None:
    ranks = [queue_job(session, MEMBER, "create", [create_resource()]).rank for _ in range(3)]
    other = queue_job(session, ELSEWHERE, "delete", [{"type": "time_entries", "id": "1"}])
    assert ranks == [0, 1, 2]
    assert other.rank == 0
    assert lock_and_load(session, 2110) == Load(jobs=3, entries=3, rank=2)


def test_limits_refuse_with_429_naming_the_limit(session: Session, settings: Settings) -> None:
    tight = dataclasses.replace(settings, org_max_unfinished=2, org_max_unfinished_entries=5)
    admit(session, 2110, Load(jobs=1, entries=4, rank=1), 1, tight)  # room for one more
    with pytest.raises(ApiError) as jobs:
        admit(session, 2110, Load(jobs=2, entries=2, rank=1), 1, tight)
    with pytest.raises(ApiError) as entries:
        admit(session, 2110, Load(jobs=1, entries=4, rank=1), 2, tight)
    assert [(e.value.status, e.value.problems[0].code) for e in (jobs, entries)] == [
        (429, "org_max_unfinished"),
        (429, "org_max_unfinished_entries"),
    ]
    assert jobs.value.headers["Retry-After"].isdigit()


def test_retry_after_follows_the_pace_of_recent_jobs(session: Session) -> None:
    assert retry_after(session, 2112, 1000, fallback=7) == 7  # no history: the fallback
    job = queue_job(session, ELSEWHERE, "create", [create_resource()] * 4)
    now = dt.datetime.now(dt.UTC)
    session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(
            status="succeeded",
            total=400,
            started_at=now - dt.timedelta(seconds=3),
            finished_at=now - dt.timedelta(seconds=1),
        )
    )
    # 400 entries in 2 seconds: 1,000 entries drain in 5.
    assert retry_after(session, 2112, 1000, fallback=7) == 5
    assert retry_after(session, 2112, 1, fallback=7) == 1


def test_a_submission_waits_for_the_one_before_it_and_counts_its_job(e2e_db: Engine) -> None:
    # The lock and the count go to the server together: the count must still come after
    # the lock is granted, or it would miss the job the submission it waited for stored.
    loads: list[Load] = []
    with Session(e2e_db) as first:
        queue_job(first, MEMBER, "create", [create_resource(), create_resource()])

        def second() -> None:
            with Session(e2e_db) as session:
                loads.append(lock_and_load(session, 2110))
                session.rollback()

        waiting = threading.Thread(target=second)
        waiting.start()
        eventually(lambda: waits_for_a_lock(e2e_db), what="the second submission waiting")
        assert not loads
        first.commit()
    waiting.join(timeout=10)
    assert loads == [Load(jobs=1, entries=2, rank=0)]


def waits_for_a_lock(engine: Engine) -> bool:
    with engine.connect() as connection:
        return bool(
            connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            )
        )
