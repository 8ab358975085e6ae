"""Engine and session factories. Nothing connects until a factory is called."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    Row,
    Select,
    Update,
    create_engine,
    event,
    func,
)
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from shared.settings import Settings


def _json_serializer(value: Any) -> str:
    return orjson.dumps(value).decode()


def speak_utc(dbapi_connection: Any, _record: Any = None) -> None:
    """Every session in UTC, whatever the server's default: timestamps then come back in
    Python's fixed UTC zone, which psycopg makes and converts fastest (a tenth of reading
    10,000 entries went to the IANA zone a server names UTC `Etc/UTC`). A SET, not a startup
    option: poolers such as PgBouncer refuse `options` but keep the time zone per client."""
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    dbapi_connection.execute("SET TIME ZONE 'UTC'")
    dbapi_connection.autocommit = autocommit


# A connection back in the pool for longer than this is tried before it is handed out again.
PING_AFTER_IDLE = 1.0


class PingAfterIdle:
    """pool_pre_ping for the connections that sat in the pool: one that went back to it
    less than `seconds` ago is handed out as it is. pool_pre_ping tries every checkout, and
    a job's path checks out three times: three round trips, some 0.5 ms of a one-entry job.

    A database restarted within that second shows itself to the first statement instead,
    as a disconnect: SQLAlchemy then refreshes the whole pool, and the statement's error is a
    transient one to the caller (a job retries, a request answers 503 with Retry-After).
    """

    def __init__(self, engine: Engine, seconds: float = PING_AFTER_IDLE) -> None:
        self.dialect = engine.dialect
        self.seconds = seconds
        event.listen(engine, "checkin", self.checkin)
        event.listen(engine, "checkout", self.checkout)

    def checkin(self, _dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    def checkout(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
    ) -> None:
        since = record.info.pop("idle_since", None)
        # None: a connection just made, which pool_pre_ping does not try either.
        if since is None or time.monotonic() - since < self.seconds:
            return
        try:
            self.dialect.do_ping(dbapi_connection)
        except self.dialect.loaded_dbapi.Error as exc:
            if self.dialect.is_disconnect(exc, dbapi_connection, None):
                # As pool_pre_ping: the pool drops every connection it had made before this
                # one, and hands out a new one.
                raise InvalidatePoolError() from exc
            raise


def make_engine(settings: Settings, **kwargs: Any) -> Engine:
    options: dict[str, Any] = {
        "json_serializer": _json_serializer,
        "json_deserializer": orjson.loads,
    }
    options.update(kwargs)
    engine = create_engine(settings.sqlalchemy_url, **options)
    event.listen(engine, "connect", speak_utc)
    PingAfterIdle(engine)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def autocommit(session: Session) -> Iterator[Session]:
    """The session, each of its statements in the block a transaction of its own: no BEGIN
    or COMMIT round trip. Ends the session's transaction first, if any; afterwards its
    connection goes back to the pool, and the session's next statement begins anew.

    A session bound to a connection rather than an engine runs them as it would otherwise:
    the connection's transaction is its owner's.
    """
    if isinstance(session.get_bind(), Connection):
        yield session
        return
    session.commit()
    session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    session.commit()


def run_alone(connection: Connection, statement: Executable, **params: Any) -> Row[Any] | None:
    """Run one statement on the connection as a transaction of its own (autocommit: no BEGIN
    or COMMIT round trip) and return its first row, if any. The connection must be between
    transactions; it is left as it was found."""
    connection.execution_options(isolation_level="AUTOCOMMIT")
    try:
        return connection.execute(statement, params).first()
    finally:
        # Ends SQLAlchemy's autobegun transaction; there is none on the server to end.
        connection.commit()
        connection.execution_options(isolation_level=connection.default_isolation_level)


class UnflushedWrite:
    """One statement run as a transaction of its own, whose commit returns before its WAL
    reaches the disk.

    Only for what a crash of the database may lose harmlessly (a job's running mark, its
    progress, its heartbeat): the job's own end commits durably, and that flush carries these
    along. One round trip on every job's path: the statement carries its own setting, local
    to its transaction, and autocommit sends no BEGIN or COMMIT. Build each once, at import:
    building a statement like these costs more than running it.
    """

    def __init__(self, statement: Select[Any] | Update) -> None:
        unflushed = func.set_config("synchronous_commit", "off", True)
        if isinstance(statement, Select):
            self.statement: Select[Any] | Update = statement.add_columns(unflushed)
        else:
            self.statement = statement.returning(unflushed)

    def __call__(self, bind: Engine | Connection, **params: Any) -> Row[Any] | None:
        """Run it, on a connection of its own or on the one given (see run_alone); returns
        its first row, if any."""
        if isinstance(bind, Connection):
            return run_alone(bind, self.statement, **params)
        with bind.connect() as connection:
            return run_alone(connection, self.statement, **params)
