"""Faults injected into real processes: a job that got a 202 ends, and its effect happens once."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import pytest
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.orm import Session, undefer

from api import create_app
from shared.jobs.queue import PROCESS_JOB
from shared.jobs.sweeper import recover_jobs
from shared.settings import Settings
from shared.store.engine import make_session_factory
from shared.store.models import Job, TimeEntry
from tests.checked_client import CheckedClient
from tests.conftest import purge, queued
from tests.e2e.test_pipeline import create_doc, entry_count
from tests.jobclient import JobClient, eventually
from worker.app import create_worker_app

pytestmark = pytest.mark.e2e


@pytest.fixture
def fault_settings(e2e_settings: Settings) -> Settings:
    """Its own queue, and a short lease and grace so the sweeper acts within the test."""
    return dataclasses.replace(
        e2e_settings, queue=f"{e2e_settings.queue}-faults", job_lease=2, queued_grace=1
    )


@pytest.fixture
def fault_client(fault_settings: Settings, e2e_db: Engine) -> JobClient:
    app = create_app(fault_settings, sessions=make_session_factory(e2e_db))
    app.test_client_class = CheckedClient
    return JobClient(app.test_client())


@pytest.fixture
def start_worker(worker_factory: Any, fault_settings: Settings) -> Any:
    return lambda: worker_factory(fault_settings)


def job_row(engine: Engine, job_id: str) -> Job:
    """The whole row, its batch and result too, readable after the session closes."""
    with Session(engine) as session:
        return session.get_one(Job, uuid.UUID(job_id), options=[undefer("*")])


def wait_for_status(engine: Engine, job_id: str, status: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job_row(engine, job_id).status == status:
            return
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never became {status}")


def wait_for_blocked_worker(engine: Engine, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            waiting = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = 'timebatch-worker' AND wait_event_type = 'Lock'"
                )
            )
        if waiting:
            return
        time.sleep(0.05)
    raise AssertionError("the worker never blocked on the held job row")


@contextmanager
def stalled_mid_job(engine: Engine, job_id: str) -> Iterator[None]:
    """Hold the job row once the job runs: the worker's progress and final update wait, so
    the job stays mid-flight (entries inserted, not committed) for as long as the test needs."""
    wait_for_status(engine, job_id, "running")
    with engine.connect() as connection:
        transaction = connection.begin()
        connection.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
        wait_for_blocked_worker(engine)
        yield
        transaction.rollback()


def as_if_time_passed(engine: Engine, job_ids: list[str], seconds: float) -> None:
    """Move the jobs' stored timestamps `seconds` into the past: the sweeper then sees the
    stale heartbeat or the old queued job it would see after that long, with no waiting."""
    ago = dt.timedelta(seconds=seconds)
    with engine.begin() as connection:
        connection.execute(
            update(Job)
            .where(Job.id.in_([uuid.UUID(i) for i in job_ids]))
            .values(
                created_at=Job.created_at - ago,
                started_at=Job.started_at - ago,
                heartbeat_at=Job.heartbeat_at - ago,
                published_at=Job.published_at - ago,
            )
        )


def submit_create(client: JobClient, headers: dict[str, str], n: int) -> tuple[Any, str]:
    accepted = client.submit("POST", "/api/v2/time_entries", create_doc(n), headers)
    return accepted, accepted.json["data"]["id"]  # type: ignore[index]


def sweep_until_finished(
    engine: Engine, settings: Settings, job_ids: list[str], timeout: float = 120
) -> int:
    """Run the sweeper (as beat would) until every job is finished; returns re-publishes."""
    app = create_worker_app(settings)
    republished = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Session(engine) as session:
            statuses = session.scalars(
                select(Job.status).where(Job.id.in_([uuid.UUID(i) for i in job_ids]))
            ).all()
        if all(s in ("succeeded", "failed") for s in statuses):
            return republished
        republished += recover_jobs(engine, settings, app)
        time.sleep(0.5)
    raise AssertionError("jobs did not finish")


def test_sigkill_of_the_worker_mid_job(
    fault_client: JobClient,
    e2e_auth: Any,
    e2e_db: Engine,
    fault_settings: Settings,
    start_worker: Any,
    broker_kind: str,
) -> None:
    headers = e2e_auth(7781)
    before = entry_count(e2e_db)
    first = start_worker()
    accepted, job_id = submit_create(fault_client, headers, 5000)
    with stalled_mid_job(e2e_db, job_id):
        first.kill(signal.SIGKILL)
    assert job_row(e2e_db, job_id).status == "running"
    assert entry_count(e2e_db) == before  # the killed transaction left nothing
    start_worker()
    as_if_time_passed(e2e_db, [job_id], fault_settings.job_lease + 1)
    republished = sweep_until_finished(e2e_db, fault_settings, [job_id])
    # Redis keeps the killed worker's message unacknowledged until the visibility timeout:
    # the sweeper sends it again. RabbitMQ gives it back as soon as the connection drops.
    assert republished >= (1 if broker_kind == "redis" else 0)
    outcome = fault_client.follow(accepted, headers)
    assert outcome.status == 201
    assert entry_count(e2e_db) == before + 5000
    job = job_row(e2e_db, job_id)
    assert (job.status, job.attempts) == ("succeeded", 2)


def test_a_task_cancelled_mid_query_runs_again_instead_of_failing(
    fault_client: JobClient, e2e_auth: Any, e2e_db: Engine, start_worker: Any
) -> None:
    """What Celery does to running tasks when the broker connection drops: SIGTERM to the
    pool process, whose handler raises SystemExit mid-query. The job is ours to finish."""
    headers = e2e_auth(7781)
    before = entry_count(e2e_db)
    worker = start_worker()
    assert worker.process is not None
    accepted, job_id = submit_create(fault_client, headers, 5000)
    with stalled_mid_job(e2e_db, job_id):
        pool = psutil.Process(worker.process.pid).children()
        assert pool
        for child in pool:
            child.send_signal(signal.SIGTERM)
        psutil.wait_procs(pool, timeout=30)
    outcome = fault_client.follow(accepted, headers)
    assert outcome.status == 201
    assert entry_count(e2e_db) == before + 5000
    job = job_row(e2e_db, job_id)
    assert (job.status, job.attempts, job.error_streak) == ("succeeded", 2, 0)
    assert "failed" not in worker.outcomes(job_id)


def test_queued_messages_lost_with_the_broker(
    fault_client: JobClient,
    e2e_auth: Any,
    e2e_db: Engine,
    fault_settings: Settings,
    start_worker: Any,
) -> None:
    headers = e2e_auth(7781)
    before = entry_count(e2e_db)
    accepted = [
        fault_client.submit("POST", "/api/v2/time_entries", create_doc(10), headers)
        for _ in range(20)
    ]
    assert queued(fault_settings, fault_settings.queue) == 20
    purge(fault_settings, fault_settings.queue)  # the broker lost every queued message
    start_worker()
    job_ids = [a.json["data"]["id"] for a in accepted]  # type: ignore[index]
    as_if_time_passed(e2e_db, job_ids, fault_settings.queued_grace + 1)
    # Under load a slow job may be re-published by a later sweep too: harmless, never fewer.
    assert sweep_until_finished(e2e_db, fault_settings, job_ids) >= 20
    assert [fault_client.follow(a, headers).status for a in accepted] == [201] * 20
    assert entry_count(e2e_db) == before + 200


def test_database_connection_terminated_mid_job(
    fault_client: JobClient,
    e2e_auth: Any,
    e2e_db: Engine,
    start_worker: Any,
) -> None:
    headers = e2e_auth(7781)
    before = entry_count(e2e_db)
    start_worker()
    accepted, job_id = submit_create(fault_client, headers, 3000)
    with stalled_mid_job(e2e_db, job_id):
        with e2e_db.connect() as connection:
            killed = connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database()"
                    " AND application_name = 'timebatch-worker'"
                )
            )
        assert killed and killed >= 1
    outcome = fault_client.follow(accepted, headers)
    assert outcome.status == 201
    assert entry_count(e2e_db) == before + 3000
    job = job_row(e2e_db, job_id)
    assert (job.status, job.attempts) == ("succeeded", 2)


def test_same_message_delivered_three_times_concurrently(
    fault_client: JobClient,
    e2e_auth: Any,
    e2e_db: Engine,
    fault_settings: Settings,
    start_worker: Any,
) -> None:
    headers = e2e_auth(7781)
    before = entry_count(e2e_db)
    accepted, job_id = submit_create(fault_client, headers, 2000)
    celery = create_worker_app(fault_settings)
    for _ in range(2):
        celery.send_task(PROCESS_JOB, args=[job_id])
    worker = start_worker()
    assert fault_client.follow(accepted, headers).status == 201
    # The submit's own message and the two copies: each delivery logs what it did.
    eventually(lambda: len(worker.outcomes(job_id)) >= 3, what="three deliveries of the job")
    ran = worker.outcomes(job_id)
    assert ran.count("succeeded") == 1, ran
    assert len(ran) == 3 and set(ran) - {"succeeded"} <= {"skipped", "busy"}, ran
    assert entry_count(e2e_db) == before + 2000
    job = job_row(e2e_db, job_id)
    assert (job.status, job.attempts) == ("succeeded", 1)


def test_eight_concurrent_clients_with_overlapping_batches(
    fault_client: JobClient,
    e2e_auth: Any,
    e2e_db: Engine,
    fault_settings: Settings,
    start_worker: Any,
) -> None:
    start_worker()
    member, admin = e2e_auth(7781), e2e_auth(7783)
    created = fault_client.run("POST", "/api/v2/time_entries", create_doc(100), member)
    ids = [int(e["id"]) for e in created.document["data"]]
    app = create_app(fault_settings, sessions=make_session_factory(e2e_db))
    app.test_client_class = CheckedClient
    results: list[tuple[str, list[int], str, int, Any]] = []
    lock = threading.Lock()

    def client_run(n: int) -> None:
        rng = random.Random(n)
        client = JobClient(app.test_client())
        for round_ in range(3):
            if (n + round_) % 3 == 0:
                chosen = rng.sample(ids[:30], 15)
                path, body, who, tag = "/api/v2/time_entries/approve", {"data": [{"type": "time_entries", "id": i} for i in chosen]}, admin, "approve"  # fmt: skip
            else:
                chosen = rng.sample(ids[20:], 40)
                tag = f"c{n}r{round_}"
                path, body, who = "/api/v2/time_entries", {"data": [{"type": "time_entries", "id": i, "attributes": {"note": tag}} for i in chosen]}, member  # fmt: skip
            outcome = client.run("PATCH", path, body, who)
            with lock:
                results.append((tag, chosen, path, outcome.status, outcome.document))

    threads = [threading.Thread(target=client_run, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(results) == 24
    for tag, _, _, status, document in results:
        assert status in (200, 409), (tag, status, document)
        if status == 409:
            assert {e["status"] for e in document["errors"]} == {"409"}
    with Session(e2e_db) as session:
        rows = {
            row.id: row
            for row in session.execute(
                select(
                    TimeEntry.id, TimeEntry.note, TimeEntry.approved, TimeEntry.approved_at
                ).where(TimeEntry.id.in_(ids))
            )
        }
    succeeded_updates = {
        tag: set(chosen)
        for tag, chosen, path, status, _ in results
        if status == 200 and tag != "approve"
    }
    approved_by_jobs = {
        i
        for tag, chosen, _, status, _ in results
        if tag == "approve" and status == 200
        for i in chosen
    }
    assert len(rows) == 100
    for entry_id, row in rows.items():
        if row.note and row.note.startswith("c"):
            assert entry_id in succeeded_updates[row.note]
        assert row.approved == (row.approved_at is not None)
        if entry_id in approved_by_jobs:
            assert row.approved
    with Session(e2e_db) as session:
        unfinished = session.scalar(
            select(func.count()).select_from(Job).where(Job.status.in_(["queued", "running"]))
        )
    assert unfinished == 0


def test_job_that_keeps_failing_is_given_up_with_a_clear_error(
    fault_client: JobClient, e2e_auth: Any, e2e_db: Engine, fault_settings: Settings
) -> None:
    from shared.jobs.runner import run_job

    headers = e2e_auth(7781)
    before = entry_count(e2e_db)
    accepted, job_id = submit_create(fault_client, headers, 5)
    with Session(e2e_db) as session:
        # As if every earlier attempt had died mid-job.
        session.execute(
            text("UPDATE jobs SET status = 'running', attempts = :n WHERE id = :id"),
            {"n": fault_settings.job_max_runs, "id": job_id},
        )
        session.commit()
    outcome = run_job(e2e_db, uuid.UUID(job_id), max_runs=fault_settings.job_max_runs).outcome
    assert outcome == "failed"
    result = fault_client.follow(accepted, headers)
    assert result.status == 500
    assert result.document["errors"][0]["title"] == "Job abandoned"
    assert entry_count(e2e_db) == before
