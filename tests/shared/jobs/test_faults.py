"""How a run's error is judged, on errors the real database, driver and signals raise.

A fault of ours (a lost connection, a deadlock, a shutdown that cut a query) must never fail
a client's job; anything else is a bug only once it repeats, which the worker counts.
"""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.orm import Session

from shared.domain.documents import NotWellFormed
from shared.jobs.faults import Fault, classify, fingerprint
from tests.conftest import disguised_shutdown, system_exit_in


def database_error(engine: Engine, sql: str) -> DBAPIError:
    """The error PostgreSQL really sends for this statement, as SQLAlchemy raises it."""
    with engine.connect() as connection, pytest.raises(DBAPIError) as info:
        connection.execute(text(sql))
    return info.value


def raised(sqlstate: str) -> str:
    """A statement the server fails with this SQLSTATE, as it would for the real condition."""
    return f"DO $$ BEGIN RAISE EXCEPTION 'provoked' USING ERRCODE = '{sqlstate}'; END $$"


def test_a_serialization_failure_is_transient(e2e_db: Engine) -> None:
    row = "SELECT name FROM organizations WHERE id = 2110"
    touch = text("UPDATE organizations SET name = name WHERE id = 2110")
    with e2e_db.connect() as reader, e2e_db.connect() as writer:
        reader = reader.execution_options(isolation_level="REPEATABLE READ")
        reader.execute(text(row))  # the snapshot is taken here
        writer.execute(touch)
        writer.commit()
        with pytest.raises(DBAPIError) as info:
            reader.execute(touch)
    assert getattr(info.value.orig, "sqlstate", None) == "40001"
    assert classify(info.value) is Fault.TRANSIENT


@pytest.mark.parametrize("sqlstate", ["40P01", "55P03", "57P01", "53300", "08006"])
def test_deadlocks_lock_timeouts_and_server_troubles_are_transient(
    e2e_db: Engine, sqlstate: str
) -> None:
    error = database_error(e2e_db, raised(sqlstate))
    assert classify(error) is Fault.TRANSIENT, sqlstate


def test_a_terminated_connection_is_transient(e2e_db: Engine) -> None:
    with e2e_db.connect() as victim:
        pid = victim.scalar(text("SELECT pg_backend_pid()"))
        with e2e_db.connect() as killer:
            # The timeout makes the call return only once the backend is gone.
            assert killer.scalar(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid})
        with pytest.raises(OperationalError) as info:
            victim.execute(text("SELECT 1"))
    assert info.value.connection_invalidated
    assert classify(info.value) is Fault.TRANSIENT


def test_a_refused_connection_is_transient(e2e_db: Engine) -> None:
    nowhere = create_engine(make_url(e2e_db.url).set(host="127.0.0.1", port=9))
    try:
        with pytest.raises(OperationalError) as info:
            nowhere.connect()
    finally:
        nowhere.dispose()
    assert classify(info.value) is Fault.TRANSIENT


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("INSERT INTO organizations (id, name, default_currency, reporting_currency)"
         " VALUES (2110, 'again', 'USD', 'EUR')", IntegrityError),
        ("SELECT 'x'::integer", DataError),
        ("SELEC 1", ProgrammingError),
        ("SELECT * FROM no_such_table", ProgrammingError),
        # A statement cancelled (by a timeout, say) would be cancelled again.
        ("SET LOCAL statement_timeout = 1; SELECT pg_sleep(1)", OperationalError),
    ],
)  # fmt: skip
def test_errors_no_retry_can_fix_are_unexpected(
    e2e_db: Engine, sql: str, kind: type[DBAPIError]
) -> None:
    error = database_error(e2e_db, sql)
    assert isinstance(error, kind)
    assert classify(error) is Fault.UNEXPECTED


def test_errors_outside_the_database_are_unexpected() -> None:
    for error in (NotWellFormed("duplicate ids"), ValueError("x"), KeyError("Atlantis/Lost")):
        assert classify(error) is Fault.UNEXPECTED


@pytest.mark.parametrize(
    ("sqlstate", "fault"),
    [("40001", Fault.TRANSIENT), ("40P01", Fault.TRANSIENT), ("23505", Fault.UNEXPECTED),
     ("XX000", Fault.UNEXPECTED)],
)  # fmt: skip
def test_other_dbapi_errors_are_judged_by_their_sqlstate(
    e2e_db: Engine, sqlstate: str, fault: Fault
) -> None:
    # psycopg raises 40001 and 40P01 as OperationalError subclasses already; a DBAPIError of
    # another class (another driver's mapping) carrying them is recognised by its SQLSTATE.
    # Wrapping the server's real error is the one way to get such an error from psycopg.
    orig = database_error(e2e_db, raised(sqlstate)).orig
    assert isinstance(orig, psycopg.Error) and orig.sqlstate == sqlstate
    wrapped = DBAPIError("UPDATE jobs SET status = 'running'", None, orig)
    assert type(wrapped) is DBAPIError
    assert classify(wrapped) is fault


def test_a_shutdown_mid_query_is_a_shutdown_whatever_the_cleanup_raises(e2e_db: Engine) -> None:
    # Whichever the cleanup raises: SystemExit itself, or an error with it as context.
    with (
        pytest.raises(BaseException) as info,
        system_exit_in(0.3),
        Session(e2e_db) as session,
        session.begin(),
    ):
        session.execute(text("SELECT pg_sleep(5)"))
    assert classify(info.value) is Fault.SHUTDOWN


def test_an_error_raised_while_a_shutdown_unwinds_is_a_shutdown() -> None:
    with pytest.raises(psycopg.ProgrammingError) as info:
        disguised_shutdown()
    error = info.value
    assert isinstance(error.__context__, SystemExit)
    assert classify(error) is Fault.SHUTDOWN
    assert classify(psycopg.ProgrammingError(str(error))) is Fault.UNEXPECTED


def test_the_same_error_has_the_same_fingerprint_and_others_do_not() -> None:
    assert fingerprint(ValueError("bad\nline two")) == fingerprint(ValueError("bad\nother"))
    assert fingerprint(ValueError("bad")) != fingerprint(ValueError("worse"))
    assert fingerprint(ValueError("bad")) != fingerprint(TypeError("bad"))
    assert fingerprint(ValueError("bad")) == "builtins.ValueError: bad"
