"""Fixtures: servers -> databases -> app -> client -> session -> factories.

PostgreSQL and Redis come from TEST_DATABASE_URL / TEST_BROKER_URL when set, otherwise from
embedded servers started for this test session. Two databases are made fresh by migrations:
one where every test runs in a transaction rolled back at its end, and one, committed, that
a real Celery worker process reads for the end-to-end tests. Code that opens its own
sessions on an engine (run_job, the worker's task) is tested on the committed one too:
`e2e_db` gives each test fresh demo data there.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Connection, Engine, create_engine, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from shared.cli.demo import load_demo
from shared.devstack.embedded import start_embedded
from shared.domain.tokens import create_token
from shared.jobs.queue import create_celery, queue_depth
from shared.settings import Settings
from shared.store import migrate
from shared.store.engine import make_engine
from shared.store.models import Person
from tests.checked_client import CheckedClient
from tests.factories import Factories
from tests.servers import PrivateVhost, amqp_reachable, amqp_url, rabbitmqctl

BULK = "application/vnd.api+json; ext=bulk"


def _recreate_database(admin_url: str, name: str) -> str:
    url = make_url(admin_url)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    database_url = os.environ.get("TEST_DATABASE_URL")
    broker_url = os.environ.get("TEST_BROKER_URL")
    if database_url and broker_url:
        yield database_url, broker_url
        return
    embedded = start_embedded(tmp_path_factory.mktemp("embedded"))
    try:
        yield embedded.database_url, embedded.broker_url
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def run_id() -> str:
    return f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


def _settings(database_url: str, broker_url: str, data_dir: Path, queue: str) -> Settings:
    return Settings.from_env(
        {
            "DATABASE_URL": database_url,
            "BROKER_URL": broker_url,
            "TIMEBATCH_DATA_DIR": str(data_dir),
            "TIMEBATCH_QUEUE": queue,
            "TIMEBATCH_JOB_TIME_LIMIT": "120",
        }
    )


@pytest.fixture(scope="session")
def settings(
    servers: tuple[str, str], run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    # Dropped here, not with the engine: a run whose tests need only the settings made the
    # database too.
    database_url = _recreate_database(servers[0], f"timebatch_test_{run_id}")
    settings = _settings(
        database_url, servers[1], tmp_path_factory.mktemp("data"), f"timebatch-test-{run_id}"
    )
    yield settings
    _drop(settings)


def demo_engine(settings: Settings) -> Engine:
    """An engine on the settings' database, migrated and holding the demo data."""
    engine = make_engine(settings)
    migrate.upgrade(engine)
    with Session(engine) as session:
        load_demo(session)
        session.commit()
    return engine


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    engine = demo_engine(settings)
    yield engine
    engine.dispose()


def _drop(settings: Settings) -> None:
    url = make_url(settings.sqlalchemy_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    connection = engine.connect()
    transaction = connection.begin()
    yield connection
    transaction.rollback()
    connection.close()


@pytest.fixture
def sessions(connection: Connection) -> sessionmaker[Session]:
    # Commits inside the code under test become savepoints of the test's transaction.
    return sessionmaker(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    session = sessions()
    yield session
    session.close()


class PublishLog(list[str]):
    """Job ids the app published; API tests check what would have reached the broker."""

    def __call__(self, job_id: str, rank: int) -> None:
        self.append(job_id)


@pytest.fixture
def published() -> PublishLog:
    return PublishLog()


@pytest.fixture
def app(settings: Settings, sessions: sessionmaker[Session], published: PublishLog) -> Flask:
    return create_app(settings, sessions=sessions, publish=published)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    app.test_client_class = CheckedClient
    return app.test_client()


@pytest.fixture
def factories(session: Session) -> Factories:
    return Factories(session)


def purge(settings: Settings, *queues: str) -> None:
    """Drop every message waiting in these queues, on either broker, at every priority."""
    app = create_celery(settings)
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in queues:
            try:
                channel.queue_purge(queue)
            except connection.channel_errors:
                # A RabbitMQ queue no worker declared yet; Redis keeps no empty queue.
                channel = connection.channel()


def queued(settings: Settings, queue: str) -> int:
    """Messages waiting in a queue, at every priority."""
    return queue_depth(create_celery(settings), queue)


def token_for(session: Session, person_id: int, *, read_only: bool = False) -> dict[str, str]:
    """Headers of a fresh token of a person."""
    person = session.get_one(Person, person_id)
    token = create_token(session, person, read_only=read_only)
    return {"X-Auth-Token": token, "X-Organization-Id": str(person.organization_id)}


@pytest.fixture
def auth(session: Session) -> Any:
    def make(person_id: int = 7781, *, read_only: bool = False) -> dict[str, str]:
        return token_for(session, person_id, read_only=read_only)

    return make


TABLES = "organizations, exchange_rates, people, api_tokens, services, tasks, time_entries, approval_statuses, jobs, webhooks, webhook_deliveries"


BROKERS = ("redis", "amqp")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """End-to-end tests run on each broker: Redis, and RabbitMQ with quorum queues."""
    if "e2e_settings" in metafunc.fixturenames:
        # The others share the Redis half's database and worker.
        e2e = metafunc.definition.get_closest_marker("e2e") is not None
        kinds = BROKERS if e2e else BROKERS[:1]
        metafunc.parametrize("broker_kind", kinds, indirect=True, scope="session")


@pytest.fixture(scope="session")
def broker_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture(scope="session")
def e2e_broker_url(broker_kind: str, servers: tuple[str, str]) -> Iterator[str]:
    """The session's Redis; or, for the RabbitMQ half, a virtual host of the suite's own on
    TEST_AMQP_URL's server (the machine's RabbitMQ by default), removed at the end."""
    if broker_kind == "redis":
        yield servers[1]
        return
    if not amqp_reachable(amqp_url()):
        pytest.skip(f"RabbitMQ at {amqp_url()} is not reachable: the RabbitMQ half is skipped")
    if rabbitmqctl() is None:
        yield amqp_url()
        return
    with PrivateVhost(amqp_url()) as vhost:
        yield vhost.url


@pytest.fixture(scope="session")
def e2e_settings(
    servers: tuple[str, str],
    e2e_broker_url: str,
    broker_kind: str,
    run_id: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    """Settings of the committed database, migrated once for the session (for each broker)."""
    database_url = _recreate_database(servers[0], f"timebatch_e2e_{broker_kind}_{run_id}")
    settings = _settings(
        database_url,
        e2e_broker_url,
        tmp_path_factory.mktemp(f"e2e-{broker_kind}"),
        f"timebatch-e2e-{run_id}",
    )
    engine = make_engine(settings)
    migrate.upgrade(engine)
    engine.dispose()
    yield settings
    purge(settings, settings.queue, settings.housekeeping_queue, settings.webhooks_queue)
    _drop(settings)


@pytest.fixture(scope="session")
def e2e_engine(e2e_settings: Settings) -> Iterator[Engine]:
    engine = make_engine(e2e_settings)
    yield engine
    engine.dispose()


@pytest.fixture
def e2e_db(e2e_engine: Engine) -> Engine:
    """Fresh demo data, committed, for each test."""
    with Session(e2e_engine) as session:
        session.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        load_demo(session)
        session.commit()
    return e2e_engine


@pytest.fixture
def one_connection(e2e_db: Engine) -> Iterator[Engine]:
    """An engine on the committed database whose pool holds one connection: each checkout
    gets back the connection the one before it returned."""
    engine = create_engine(e2e_db.url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session", autouse=True)
def _empty_queues(settings: Settings) -> Iterator[None]:
    yield
    purge(settings, settings.queue, settings.housekeeping_queue, settings.webhooks_queue)


@contextmanager
def system_exit_in(seconds: float) -> Iterator[None]:
    """SystemExit raised by a signal handler `seconds` from now, wherever the code then is:
    what billiard's terminate handler does to a task when Celery cancels it."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(1)

    previous = signal.signal(signal.SIGALRM, leave)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def disguised_shutdown(*args: object, **kwargs: object) -> NoReturn:
    """Raise what a cleanup leaves of a shutdown that cut a query: psycopg's error from the
    rollback on the cut connection, with the SystemExit only as its context."""
    try:
        raise SystemExit(1)
    except SystemExit:
        raise psycopg.ProgrammingError(
            "can't change 'autocommit' now: connection in transaction status ACTIVE"
        ) from None
