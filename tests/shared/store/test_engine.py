"""The engine: its sessions, how its pool tries connections, its one-statement writes.

On the committed database (`e2e_db`).
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from shared.domain.tokens import Principal
from shared.settings import Settings
from shared.store.engine import PingAfterIdle, UnflushedWrite, make_engine
from shared.store.models import Job, JobStatus
from tests.factories import create_resource, queue_job

MEMBER = Principal(person_id=7781, organization_id=2110, read_only=False)


def test_an_unflushed_write_commits_at_once_without_flushing_and_leaves_its_connection_as_it_was(
    e2e_db: Engine, one_connection: Engine
) -> None:
    # One connection in the pool: the write's is the one the checks below get back.
    with Session(one_connection) as session:
        job_id = queue_job(session, MEMBER, "create", [create_resource()]).id
        session.commit()
    mark = UnflushedWrite(
        update(Job)
        .where(Job.id == job_id)
        .values(status=JobStatus.RUNNING)
        .returning(func.current_setting("synchronous_commit"))
    )
    row = mark(one_connection)
    assert row is not None
    # The setting as the statement ran, and as it set it for its own commit.
    assert tuple(row) == ("on", "off")
    with e2e_db.connect() as other:
        assert other.scalar(select(Job.status).where(Job.id == job_id)) == "running"
    with one_connection.connect() as same:
        assert same.scalar(text("SHOW synchronous_commit")) == "on"
        assert same.connection.driver_connection.autocommit is False


def test_every_session_speaks_utc_whatever_the_server_would_have_it_speak(
    settings: Settings,
) -> None:
    # A server whose default is another zone, as a connection option would set it.
    engine = make_engine(settings, connect_args={"options": "-c TimeZone=Asia/Tokyo"})
    try:
        with engine.connect() as connection:
            assert connection.scalar(text("SHOW TimeZone")) == "UTC"
            stamp = connection.scalar(text("SELECT TIMESTAMPTZ '2026-02-03 04:05:06+09'"))
            # Python's fixed UTC zone, not an IANA one of the same name.
            assert stamp.tzinfo is dt.UTC
            assert stamp == dt.datetime(2026, 2, 2, 19, 5, 6, tzinfo=dt.UTC)
            # Reset by the pool on return, a transaction ends; the session's zone stays.
            connection.rollback()
            assert connection.scalar(text("SHOW TimeZone")) == "UTC"
            assert connection.connection.driver_connection.autocommit is False
    finally:
        engine.dispose()


def backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        pid: int = connection.scalar(text("SELECT pg_backend_pid()"))
        connection.commit()
    return pid


def terminate(e2e_db: Engine, pid: int) -> None:
    with e2e_db.connect() as other:
        assert other.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        other.commit()


@pytest.mark.parametrize("idle_after", [0.0, 3600.0])
def test_a_connection_idle_long_enough_is_tried_before_it_is_handed_out(
    e2e_db: Engine, one_connection: Engine, idle_after: float
) -> None:
    # One connection in the pool, whose server side is gone by its next checkout.
    PingAfterIdle(one_connection, idle_after)
    first = backend_pid(one_connection)
    terminate(e2e_db, first)
    if idle_after == 0.0:
        # Idle long enough: tried, found dead, replaced before anyone used it.
        assert backend_pid(one_connection) != first
    else:
        # Back in the pool just now: handed out as it is, and its first statement meets
        # the disconnect; the pool then makes a new one.
        with pytest.raises(OperationalError) as raised:
            backend_pid(one_connection)
        assert raised.value.connection_invalidated
        assert backend_pid(one_connection) != first
