"""A database of its own for each command test: the commands commit, once each."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from shared.settings import Settings
from shared.store.engine import make_engine
from tests.conftest import _drop, _recreate_database, _settings


@pytest.fixture
def cli_settings(servers: tuple[str, str], run_id: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings of an empty database (no schema) and a queue no worker listens to."""
    suffix = f"{run_id}_{uuid.uuid4().hex[:6]}"
    url = _recreate_database(servers[0], f"timebatch_cli_{suffix}")
    settings = _settings(url, servers[1], tmp_path / "data", f"timebatch-cli-{suffix}")
    yield settings
    _drop(settings)


@pytest.fixture
def cli_engine(cli_settings: Settings) -> Iterator[Engine]:
    """An engine on that database, to look at what the commands committed."""
    engine = make_engine(cli_settings)
    yield engine
    engine.dispose()
