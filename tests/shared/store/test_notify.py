"""Job-finished notifications: delivered when the finishing transaction commits, never before.

PostgreSQL delivers a NOTIFY only at commit, so these tests commit their own short
transactions on the test database; they carry no data, only the notification.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from shared.store.notify import finish_listener, notify_finished

# Waiting for a notification that must not come can only end at a deadline; one that is
# sent arrives within milliseconds of the commit, so this one is generous all the same.
ABSENT = 0.3
PRESENT = 10.0


def committed_notification(engine: Engine, job_id: str) -> None:
    with Session(engine) as session, session.begin():
        notify_finished(session, job_id)


def test_a_committed_notification_wakes_the_wait_for_that_job(engine: Engine) -> None:
    job_id = str(uuid.uuid4())
    with finish_listener(engine) as wait:
        committed_notification(engine, job_id)
        assert wait(job_id, PRESENT) is True


def test_another_job_s_notification_does_not_wake_the_wait(engine: Engine) -> None:
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    with finish_listener(engine) as wait:
        committed_notification(engine, theirs)
        assert wait(mine, ABSENT) is False
        committed_notification(engine, mine)
        assert wait(mine, PRESENT) is True


def test_a_rolled_back_notification_is_never_delivered(engine: Engine) -> None:
    job_id = str(uuid.uuid4())
    with finish_listener(engine) as wait:
        with Session(engine) as session:
            session.begin()
            notify_finished(session, job_id)
            session.rollback()
        assert wait(job_id, ABSENT) is False
        # The listener itself works: the same job's committed notification wakes it.
        committed_notification(engine, job_id)
        assert wait(job_id, PRESENT) is True


def test_the_notification_waits_for_the_commit(engine: Engine) -> None:
    job_id = str(uuid.uuid4())
    with finish_listener(engine) as wait, Session(engine) as session:
        session.begin()
        notify_finished(session, job_id)
        assert wait(job_id, ABSENT) is False  # sent inside a transaction still open
        session.commit()
        assert wait(job_id, PRESENT) is True


def test_a_notification_before_listening_is_not_seen(engine: Engine) -> None:
    job_id = str(uuid.uuid4())
    committed_notification(engine, job_id)
    with finish_listener(engine) as wait:
        assert wait(job_id, ABSENT) is False


def test_a_wait_of_no_time_does_not_wait(engine: Engine) -> None:
    job_id = str(uuid.uuid4())
    with finish_listener(engine) as wait:
        committed_notification(engine, job_id)
        assert wait(job_id, 0) is False
        assert wait(job_id, -1) is False
        assert wait(job_id, PRESENT) is True  # still queued for a wait that does wait
