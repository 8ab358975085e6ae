"""Job notifications: delivered when the transaction that sends them commits, never before,
to the one listener of the process, which wakes the waiters and streams of that job only,
hands each stream the job's latest progress, and lets no more than its capacities wait.

PostgreSQL delivers a NOTIFY only at commit, so these tests commit their own short
transactions on the test database; they carry no data, only the notification.
"""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import Engine, text, update
from sqlalchemy.orm import Session

from shared.domain.tokens import Principal
from shared.settings import Settings
from shared.store.models import Job
from shared.store.notify import (
    CARRIED_RESULT,
    PROGRESS_CHANNEL,
    Ended,
    JobListener,
    JobProgress,
    Notice,
    notify_finished,
    notify_progress,
    parse_finished,
    result_notice,
)
from tests.factories import create_resource, queue_job

# Waiting for a notification that must not come can only end at a deadline; one that is
# sent arrives within milliseconds of the commit, so this one is generous all the same.
ABSENT = 0.3
PRESENT = 10.0
MEMBER = Principal(person_id=7781, organization_id=2110, read_only=False)


def committed_notification(engine: Engine, job_id: str) -> None:
    with Session(engine) as session, session.begin():
        notify_finished(session, job_id)


def listener(settings: Settings, capacity: int = 4, streams: int = 4) -> JobListener:
    return JobListener(settings.sqlalchemy_url, capacity, streams)


def committed_progress(engine: Engine, job_id: str, processed: int, total: int = 100) -> None:
    with engine.begin() as connection:
        notify_progress(connection, job_id, "running", processed, total)


def test_a_committed_notification_wakes_the_waiter_of_that_job(
    engine: Engine, settings: Settings
) -> None:
    job_id = str(uuid.uuid4())
    with listener(settings).waiting(job_id) as finished:
        assert finished is not None
        committed_notification(engine, job_id)
        assert finished.wait(PRESENT)


def test_another_job_s_notification_does_not_wake_the_waiter(
    engine: Engine, settings: Settings
) -> None:
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    shared = listener(settings)
    with shared.waiting(mine) as me, shared.waiting(theirs) as them:
        assert me is not None and them is not None
        committed_notification(engine, theirs)
        assert them.wait(PRESENT)
        assert not me.wait(ABSENT)
        committed_notification(engine, mine)
        assert me.wait(PRESENT)


def test_a_rolled_back_notification_is_never_delivered(engine: Engine, settings: Settings) -> None:
    job_id = str(uuid.uuid4())
    with listener(settings).waiting(job_id) as finished:
        assert finished is not None
        with Session(engine) as session:
            session.begin()
            notify_finished(session, job_id)
            session.rollback()
        assert not finished.wait(ABSENT)
        # The listener itself works: the same job's committed notification wakes it.
        committed_notification(engine, job_id)
        assert finished.wait(PRESENT)


def test_the_notification_waits_for_the_commit(engine: Engine, settings: Settings) -> None:
    job_id = str(uuid.uuid4())
    with listener(settings).waiting(job_id) as finished, Session(engine) as session:
        assert finished is not None
        session.begin()
        notify_finished(session, job_id)
        assert not finished.wait(ABSENT)  # sent inside a transaction still open
        session.commit()
        assert finished.wait(PRESENT)


def test_past_its_capacity_the_process_lets_nobody_else_wait(settings: Settings) -> None:
    shared = listener(settings, capacity=1)
    with shared.waiting("job-a") as first:
        assert first is not None
        with shared.waiting("job-b") as second:
            assert second is None
    # The slot is free again once the first waiter is done.
    with shared.waiting("job-b") as again:
        assert again is not None


def test_a_capacity_of_zero_turns_waiting_off(settings: Settings) -> None:
    with listener(settings, capacity=0).waiting("job-a") as finished:
        assert finished is None


# ------------------------------------------------------------------------------ streams


def test_a_job_s_progress_reaches_its_streams_and_no_other(
    engine: Engine, settings: Settings
) -> None:
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    shared = listener(settings)
    first, second, other = shared.watch(mine), shared.watch(mine), shared.watch(theirs)
    assert first is not None and second is not None and other is not None
    committed_progress(engine, mine, 1000, 10_000)
    expected = Notice(JobProgress("running", 1000, 10_000), finished=False, stale=False)
    assert first.take(PRESENT) == expected
    assert second.take(PRESENT) == expected
    assert other.take(ABSENT) is None
    for watch in (first, second, other):
        watch.close()


def test_a_stream_gets_the_latest_progress_not_every_step(
    engine: Engine, settings: Settings
) -> None:
    """A slow stream is never behind by more than one event: what it missed is replaced."""
    job_id = str(uuid.uuid4())
    shared = listener(settings)
    with shared.watch(job_id) as watch, shared.waiting(job_id) as waiter:  # type: ignore[union-attr]
        assert waiter is not None
        for processed in (1000, 2000, 3000):
            committed_progress(engine, job_id, processed)
        # The last notification sent is in once this one, sent after it, is.
        committed_progress(engine, str(uuid.uuid4()), 1)
        notice = watch.take(PRESENT)
        while notice is not None and notice.progress != JobProgress("running", 3000, 100):
            notice = watch.take(PRESENT)
        assert notice is not None
        assert watch.take(ABSENT) is None
        # Progress is for streams: a request waiting for the job's end sleeps on.
        assert not waiter.wait(ABSENT)


def test_the_end_of_a_job_reaches_its_streams_and_its_waiters(
    engine: Engine, settings: Settings
) -> None:
    job_id = str(uuid.uuid4())
    shared = listener(settings)
    with shared.watch(job_id) as watch, shared.waiting(job_id) as waiter:  # type: ignore[union-attr]
        assert waiter is not None
        committed_progress(engine, job_id, 50)
        committed_notification(engine, job_id)
        assert waiter.wait(PRESENT)
        notice = watch.take(PRESENT)
        assert notice is not None
        if not notice.finished:  # the progress came on its own, the end after it
            assert notice.progress == JobProgress("running", 50, 100)
            notice = watch.take(PRESENT)
            assert notice is not None
        assert notice.finished and not notice.stale


def test_rolled_back_progress_is_never_delivered(engine: Engine, settings: Settings) -> None:
    job_id = str(uuid.uuid4())
    with listener(settings).watch(job_id) as watch:  # type: ignore[union-attr]
        with engine.connect() as connection:
            transaction = connection.begin()
            notify_progress(connection, job_id, "running", 10, 100)
            transaction.rollback()
        committed_progress(engine, job_id, 20)
        assert watch.take(PRESENT) == Notice(JobProgress("running", 20, 100), False, False)
        assert watch.take(ABSENT) is None


def test_a_payload_this_version_does_not_know_is_ignored(
    engine: Engine, settings: Settings
) -> None:
    job_id = str(uuid.uuid4())
    with listener(settings).watch(job_id) as watch:  # type: ignore[union-attr]
        with engine.begin() as connection:
            connection.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": PROGRESS_CHANNEL, "payload": f"{job_id} running many"},
            )
        committed_progress(engine, job_id, 7)
        # The listener went on: the next notification, after the bad one, arrives.
        assert watch.take(PRESENT) == Notice(JobProgress("running", 7, 100), False, False)


def test_a_lost_connection_tells_every_stream_to_read_its_job_again(
    engine: Engine, settings: Settings
) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    shared = listener(settings)
    with shared.watch(a) as first, shared.watch(b) as second:  # type: ignore[union-attr]
        # The listener is up: a notification comes through.
        committed_progress(engine, a, 1)
        assert first.take(PRESENT) is not None
        with engine.begin() as connection:
            ended = connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
                    " AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        assert ended >= 1  # this listener's, and those of the tests before (threads live on)
        for watch in (first, second):
            notice = watch.take(PRESENT)
            assert notice is not None and notice.stale
        # It listens again: what is sent now arrives (the read again after the reconnection
        # may come first).
        deadline = PRESENT
        committed_progress(engine, b, 2)
        notice = second.take(deadline)
        while notice is not None and notice.progress is None:
            committed_progress(engine, b, 2)
            notice = second.take(deadline)
        assert notice is not None and notice.progress == JobProgress("running", 2, 100)


def test_past_its_stream_capacity_the_process_opens_no_other_stream(settings: Settings) -> None:
    shared = listener(settings, streams=2)
    first, second = shared.watch("job-a"), shared.watch("job-a")
    assert first is not None and second is not None
    assert shared.watch("job-b") is None
    # Waiting for a job's end has capacity of its own.
    with shared.waiting("job-b") as waiter:
        assert waiter is not None
    first.close()
    first.close()  # a second close gives back nothing more
    third = shared.watch("job-b")
    assert third is not None
    assert shared.watch("job-c") is None
    second.close()
    third.close()


def test_a_stream_capacity_of_zero_turns_streams_off(settings: Settings) -> None:
    assert listener(settings, streams=0).watch("job-a") is None


def end_job(engine: Engine, job_id: uuid.UUID, body: bytes | None) -> None:
    """End the job with this stored result and notify it, as the worker's end statement does."""
    with Session(engine) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status="succeeded", result_status=204 if body is None else 201, result_body=body
            )
            .returning(result_notice(Job.id, Job.status, Job.result_status, Job.result_body))
        ).one()
        session.commit()


@pytest.mark.parametrize(
    ("size", "carried"), [(CARRIED_RESULT, True), (CARRIED_RESULT + 1, False), (None, True)]
)
def test_an_end_carries_its_result_to_the_waiter_when_it_is_small_enough(
    e2e_db: Engine, e2e_settings: Settings, size: int | None, carried: bool
) -> None:
    # Random bytes do not compress: the longest payload a result of this size can make.
    body = None if size is None else os.urandom(size)
    with Session(e2e_db) as session:
        job_id = queue_job(session, MEMBER, "create", [create_resource()]).id
        session.commit()
    with listener(e2e_settings).waiting(str(job_id)) as waiter:
        assert waiter is not None
        end_job(e2e_db, job_id, body)
        assert waiter.wait(PRESENT)
        if carried:
            assert waiter.ended == Ended("succeeded", 204 if body is None else 201, body)
        else:
            # Woken all the same, to read the job back.
            assert waiter.ended is None


def test_an_end_notification_is_read_whatever_it_carries() -> None:
    job_id = str(uuid.uuid4())
    assert parse_finished(job_id) == (job_id, None)
    assert parse_finished(f"{job_id} succeeded 201 eyJkYXRhIjpbXX0=") == (
        job_id,
        Ended("succeeded", 201, b'{"data":[]}'),
    )
    assert parse_finished(f"{job_id} succeeded 204 ") == (job_id, Ended("succeeded", 204, None))
    # Not what this version sends: the waiter reads the job instead.
    assert parse_finished(f"{job_id} succeeded 201 not*base64") == (job_id, None)
    assert parse_finished(f"{job_id} succeeded soon x") == (job_id, None)
