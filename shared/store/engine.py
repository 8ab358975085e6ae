"""Engine and session factories. Nothing connects until a factory is called."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine, create_engine
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
