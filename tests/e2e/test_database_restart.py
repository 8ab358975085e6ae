"""PostgreSQL restarted mid-job: the job completes exactly once, the web answers 503 with
Retry-After while the database is down, and the worker reconnects without a restart."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from flask import Flask
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from api import create_app
from shared.settings import Settings
from shared.store.engine import make_session_factory
from shared.store.models import Job
from shared.store.notify import PROGRESS_CHANNEL
from tests.checked_client import JSONAPI, CheckedClient
from tests.conftest import _settings, demo_engine, token_for
from tests.e2e.conftest import WorkerProcess
from tests.e2e.test_faults import job_row, submit_create, wait_for_blocked_worker
from tests.e2e.test_pipeline import create_doc, entry_count
from tests.jobclient import BULK, JobClient, eventually
from tests.servers import PrivatePostgres

pytestmark = pytest.mark.e2e

ENTRIES = 10_000
# How long the database stays away once stopped: the fault itself, not a wait for anything.
DOWN_FOR = 3.0


@pytest.fixture
def private_db(tmp_path: Path) -> Iterator[PrivatePostgres]:
    with PrivatePostgres(tmp_path / "postgres") as server:
        yield server


@pytest.fixture
def restart_settings(
    private_db: PrivatePostgres, servers: tuple[str, str], run_id: str, tmp_path: Path
) -> Settings:
    return _settings(private_db.url, servers[1], tmp_path, f"timebatch-pgrestart-{run_id}")


@pytest.fixture
def restart_engine(restart_settings: Settings) -> Iterator[Engine]:
    engine = demo_engine(restart_settings)
    yield engine
    engine.dispose()


@pytest.fixture
def restart_app(restart_settings: Settings, restart_engine: Engine) -> Flask:
    app = create_app(restart_settings, sessions=make_session_factory(restart_engine))
    app.test_client_class = CheckedClient
    return app


def listening(engine: Engine) -> bool:
    """Whether the web's connection for jobs' ends is up."""
    with engine.connect() as connection:
        found = connection.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE query = :query"),
            # The connection's last statement: it listens on the progress channel last.
            {"query": f"LISTEN {PROGRESS_CHANNEL}"},
        )
    return bool(found)


def pool_pids(worker: WorkerProcess) -> set[int]:
    assert worker.process is not None
    return {child.pid for child in psutil.Process(worker.process.pid).children()}


def assert_unavailable(response: TestResponse) -> None:
    """A 503 telling the client when to come back, in the route's own media type."""
    assert response.status_code == 503, (response.status_code, response.data[:300])
    assert int(response.headers["Retry-After"]) >= 1
    if response.request.path == "/healthz":
        assert response.json == {"database": "down", "broker": "ok"}
    else:
        assert response.content_type == JSONAPI
        assert [e["status"] for e in response.json["errors"]] == ["503"]  # type: ignore[index]


def test_postgres_restart_mid_job(
    restart_app: Flask,
    restart_settings: Settings,
    restart_engine: Engine,
    private_db: PrivatePostgres,
    worker_factory: Any,
) -> None:
    engine = restart_engine
    with Session(engine) as session:
        headers = token_for(session, 7781)
        session.commit()
    before = entry_count(engine)
    worker: WorkerProcess = worker_factory(restart_settings)
    assert worker.process is not None
    worker_pid, pool = worker.process.pid, pool_pids(worker)
    jobs = JobClient(restart_app.test_client())

    accepted, job_id = submit_create(jobs, headers, ENTRIES)
    eventually(lambda: job_row(engine, job_id).processed > 0, what="the job's first progress")
    waited: list[TestResponse] = []

    def wait_on_job() -> None:
        polling = {"Accept": BULK, "Prefer": "wait=60"}
        waited.append(restart_app.test_client().get(accepted.location, headers=headers | polling))

    with engine.connect() as held:
        # Holding the job row blocks the worker with its entries written and not committed:
        # the database goes down mid-job however fast the job would otherwise have run.
        status = held.scalar(
            select(Job.status).where(Job.id == uuid.UUID(job_id)).with_for_update()
        )
        assert status == "running", "the job ended before the database could be stopped"
        wait_for_blocked_worker(engine)
        waiter = threading.Thread(target=wait_on_job)
        waiter.start()
        eventually(lambda: listening(engine), what="the web listening for jobs' ends")
        private_db.stop()
        held.invalidate()  # its server is gone, and its transaction with it

    # The client that was waiting on the job hears of the outage at once.
    waiter.join(timeout=10)
    assert waited, "the waiting request was not answered during the outage"
    assert_unavailable(waited[0])
    down_since = time.monotonic()
    while time.monotonic() - down_since < DOWN_FOR:
        assert_unavailable(jobs.submit("POST", "/api/v2/time_entries", create_doc(1), headers))
        assert_unavailable(jobs.client.get(accepted.location, headers=headers))
        assert_unavailable(jobs.client.get("/healthz"))
        time.sleep(0.2)
    private_db.start()

    outcome = jobs.follow(accepted, headers, timeout=60)
    assert outcome.status == 201, outcome.document
    assert len(outcome.document["data"]) == ENTRIES
    assert entry_count(engine) == before + ENTRIES
    with Session(engine) as session:
        # Nothing submitted during the outage was stored.
        assert session.scalars(select(Job.id)).all() == [uuid.UUID(job_id)]
    job = job_row(engine, job_id)
    # The run the stop cut short rolled back; the retry that found the database back committed.
    assert (job.status, job.attempts, job.processed) == ("succeeded", 2, ENTRIES)
    eventually(lambda: bool(worker.outcomes(job_id)), what="the worker logging the job's end")
    assert worker.outcomes(job_id) == ["succeeded"]
    events = [e for e in worker.events() if e.get("job_id") == job_id]
    retries = [e for e in events if " retry: " in e.get("message", "")]
    # The cut-short run, and at least one try while the database was still down.
    assert len(retries) >= 2, [e["message"] for e in events]
    assert not [e for e in events if e["level"] in ("ERROR", "CRITICAL")]

    # The same processes, reconnected, take a new job; its end wakes the waiting submission.
    eventually(lambda: listening(engine), what="the web listening again")
    small = jobs.submit(
        "POST", "/api/v2/time_entries", create_doc(3), headers, {"Prefer": "wait=30"}
    )
    assert small.status_code == 201, small.data
    assert worker.process is not None and worker.process.poll() is None
    assert worker.process.pid == worker_pid and pool_pids(worker) == pool
    with Session(engine) as session:
        succeeded = session.scalar(
            select(func.count()).select_from(Job).where(Job.status == "succeeded")
        )
    assert succeeded == 2
    assert entry_count(engine) == before + ENTRIES + 3
