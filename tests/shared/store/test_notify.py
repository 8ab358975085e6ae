"""Job-finished notifications: delivered when the finishing transaction commits, never before,
to the one listener of the process, which wakes the waiters of that job only and lets no
more than its capacity wait.

PostgreSQL delivers a NOTIFY only at commit, so these tests commit their own short
transactions on the test database; they carry no data, only the notification.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from shared.settings import Settings
from shared.store.notify import FinishListener, notify_finished

# Waiting for a notification that must not come can only end at a deadline; one that is
# sent arrives within milliseconds of the commit, so this one is generous all the same.
ABSENT = 0.3
PRESENT = 10.0


def committed_notification(engine: Engine, job_id: str) -> None:
    with Session(engine) as session, session.begin():
        notify_finished(session, job_id)


def listener(settings: Settings, capacity: int = 4) -> FinishListener:
    return FinishListener(settings.sqlalchemy_url, capacity)


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
