from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, inspect, make_url, text

from shared.settings import Settings
from shared.store import migrate
from shared.store.models import Base
from tests.conftest import _recreate_database


@pytest.fixture
def scratch(settings: Settings, run_id: str) -> Iterator[Engine]:
    url = _recreate_database(settings.sqlalchemy_url, f"timebatch_scratch_{run_id}")
    engine = create_engine(url)
    yield engine
    engine.dispose()
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "timebatch_scratch_{run_id}"'))
    admin.dispose()


def test_upgrade_makes_every_table_and_downgrade_removes_them(scratch: Engine) -> None:
    migrate.upgrade(scratch)
    tables = set(inspect(scratch).get_table_names())
    assert set(Base.metadata.tables) <= tables
    migrate.downgrade(scratch, "base")
    assert set(inspect(scratch).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(scratch)
    assert set(Base.metadata.tables) <= set(inspect(scratch).get_table_names())


def test_models_and_migrations_agree(scratch: Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    migrate.upgrade(scratch)
    with scratch.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
