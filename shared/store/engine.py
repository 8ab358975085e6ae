"""Engine and session factories. Nothing connects until a factory is called."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import Settings


def _json_serializer(value: Any) -> str:
    return orjson.dumps(value).decode()


def make_engine(settings: Settings, **kwargs: Any) -> Engine:
    options: dict[str, Any] = {
        "pool_pre_ping": True,
        "json_serializer": _json_serializer,
        "json_deserializer": orjson.loads,
    }
    options.update(kwargs)
    return create_engine(settings.sqlalchemy_url, **options)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def commit_without_flush(connection: Connection) -> None:
    """Let this transaction's commit return before its WAL reaches the disk.

    Only for what a crash of the database may lose harmlessly (a job's running mark, its
    progress, its heartbeat): the job's own end commits durably, and that flush carries these
    along. Saves a disk flush on every small job's path.
    """
    connection.execute(text("SET LOCAL synchronous_commit TO off"))
