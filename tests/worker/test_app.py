"""The Celery task adapter: faults of ours retry until the job completes; an internal error
fails the job once it has come back on every run up to the attempts limit.

The task runs in this process on a real worker app (no eager mode configured) through
Celery's own tracer, `Task.apply`: the task's signals, retry and failure handling as a
worker runs them, except that a retry runs again at once instead of through the broker.
It works on the committed database, and the faults are real: a job row held by another
connection meets the worker's lock timeout, a stored batch that cannot be decoded, an
organization whose time zone does not exist. One test runs a real worker process to see a
retry go through the broker and wait out its countdown.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

import orjson
import psycopg
import pytest
from celery import Task, signals
from celery.exceptions import Retry
from sqlalchemy import Connection, Engine, func, make_url, select, text, update
from sqlalchemy.exc import (
    OperationalError,
)
from sqlalchemy.orm import Session, undefer

import worker.app
from shared.domain.documents import NotWellFormed
from shared.domain.tokens import Principal
from shared.jobs.queue import PROCESS_JOB, create_celery
from shared.settings import Settings
from shared.store.engine import make_engine
from shared.store.models import Job, TimeEntry
from shared.store.pgcopy import PROGRESS_EVERY
from tests.conftest import disguised_shutdown, purge, system_exit_in
from tests.e2e.conftest import WorkerProcess
from tests.factories import Factories, create_resource, queue_job
from tests.jobclient import eventually
from worker.app import create_worker_app

MEMBER = Principal(person_id=7781, organization_id=2110, read_only=False)
MAX_ATTEMPTS = 2
INTERNAL_ERROR = {
    "errors": [
        {
            "status": "500",
            "title": "Internal error",
            "detail": "the job could not be processed because of an internal error",
        }
    ],
    "jsonapi": {"version": "1.0"},
}


@pytest.fixture(scope="module")
def worker_settings(e2e_settings: Settings) -> Settings:
    """The committed database with a short lock timeout on the worker's connections, so that
    a job row held by another connection fails the task's update with a real
    LockNotAvailable at once; a queue of its own, and few attempts."""
    url = make_url(e2e_settings.sqlalchemy_url).update_query_dict(
        {"options": "-c lock_timeout=200"}
    )
    return dataclasses.replace(
        e2e_settings,
        database_url=url.render_as_string(hide_password=False),
        queue=f"{e2e_settings.queue}-worker-app",
        job_max_attempts=MAX_ATTEMPTS,
    )


# The functions worker/app.py makes its tasks of, one set per create_worker_app call.


@pytest.fixture(scope="module")
def worker_engines() -> Iterator[list[Engine]]:
    """The engines the worker apps of this module make, disposed at its end as a worker
    process's exit would close them: a pool left to the garbage collector warns, and under
    filterwarnings=error fails whichever test it happens in. The apps make them as ever;
    this only keeps hold of them."""
    made: list[Engine] = []

    def kept(settings: Settings, **options: Any) -> Engine:
        engine = make_engine(settings, **options)
        made.append(engine)
        return engine

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(worker.app, "make_engine", kept)
        yield made
    for engine in made:
        engine.dispose()


@pytest.fixture(scope="module")
def process_job(worker_settings: Settings, worker_engines: list[Engine]) -> Task[[str], str]:
    app = create_worker_app(worker_settings)
    app.finalize()
    assert not app.conf.task_always_eager
    return app.tasks[PROCESS_JOB]


def test_each_worker_app_runs_its_own_task(
    worker_settings: Settings, worker_engines: list[Engine], e2e_db: Engine
) -> None:
    nowhere = "postgresql+psycopg://postgres@127.0.0.1:9/nowhere"
    create_worker_app(dataclasses.replace(worker_settings, database_url=nowhere))
    app = create_worker_app(worker_settings)
    job_id = queued(e2e_db, [create_resource()])
    result = app.tasks[PROCESS_JOB].apply(args=[job_id])
    assert (result.state, result.result) == ("SUCCESS", "succeeded")


@contextmanager
def on_retry(task: Task[[str], str], handler: Callable[..., None]) -> Iterator[None]:
    """Call the handler each time the task asks Celery for a retry, while in the block."""
    signals.task_retry.connect(handler, sender=task, weak=False)
    try:
        yield
    finally:
        signals.task_retry.disconnect(handler, sender=task)


@pytest.fixture
def retries(process_job: Task[[str], str]) -> Iterator[list[Retry]]:
    """The retries the task asked Celery for, as Celery's task_retry signal reports them."""
    seen: list[Retry] = []

    def record(reason: Retry, **_: Any) -> None:
        seen.append(reason)

    with on_retry(process_job, record):
        yield seen


def queued(engine: Engine, data: list[dict[str, Any]], principal: Principal = MEMBER) -> str:
    with Session(engine) as session:
        job = queue_job(session, principal, "create", data)
        session.commit()
        return str(job.id)


def job_row(engine: Engine, job_id: str) -> Job:
    """The whole row, its batch and result too, readable after the session closes."""
    with Session(engine) as session:
        return session.get_one(Job, uuid.UUID(job_id), options=[undefer("*")])


def entry_count(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(TimeEntry)) or 0


def stored_document(job: Job) -> Any:
    assert job.result_body is not None
    return orjson.loads(gzip.decompress(job.result_body))


def hold_row(connection: Connection, job_id: str) -> None:
    """Lock the job row as another transaction would; the worker's updates of it must wait."""
    connection.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})


def test_the_task_run_twice_applies_the_job_once(
    process_job: Task[[str], str], e2e_db: Engine, retries: list[Retry]
) -> None:
    before = entry_count(e2e_db)
    job_id = queued(e2e_db, [create_resource(note=f"n{n}") for n in range(3)])
    first = process_job.apply(args=[job_id])
    second = process_job.apply(args=[job_id])
    assert (first.state, first.result) == ("SUCCESS", "succeeded")
    assert (second.state, second.result) == ("SUCCESS", "skipped")
    assert entry_count(e2e_db) == before + 3
    job = job_row(e2e_db, job_id)
    assert (job.status, job.attempts, job.result_status) == ("succeeded", 1, 201)
    assert retries == []


def test_a_transient_error_retries_with_a_countdown_and_then_succeeds(
    process_job: Task[[str], str], e2e_db: Engine, retries: list[Retry]
) -> None:
    before = entry_count(e2e_db)
    job_id = queued(e2e_db, [create_resource(), create_resource()])
    with e2e_db.connect() as holder:
        hold_row(holder, job_id)

        def release(**_: Any) -> None:
            holder.rollback()  # the other transaction ends once the task has asked to retry

        with on_retry(process_job, release):
            result = process_job.apply(args=[job_id])

    assert (result.state, result.result) == ("SUCCESS", "succeeded")
    (retry,) = retries
    assert retry.when == 1  # 2 ** retries so far, in seconds
    assert retry.sig is not None and retry.sig.options["countdown"] == 1
    assert isinstance(retry.exc, OperationalError)
    assert getattr(retry.exc.orig, "sqlstate", None) == "55P03"  # lock_not_available
    job = job_row(e2e_db, job_id)
    # The attempt that met the lock rolled back with it, its count included.
    assert (job.status, job.attempts, job.result_status) == ("succeeded", 1, 201)
    assert entry_count(e2e_db) == before + 2


def test_a_transient_error_is_retried_past_the_attempts_limit_until_the_job_completes(
    process_job: Task[[str], str], e2e_db: Engine, retries: list[Retry]
) -> None:
    before = entry_count(e2e_db)
    job_id = queued(e2e_db, [create_resource()])
    with e2e_db.connect() as holder:
        hold_row(holder, job_id)

        def release_late(**_: Any) -> None:
            # A fault of ours outlasting the attempts limit still does not fail the job.
            if len(retries) == MAX_ATTEMPTS + 2:
                holder.rollback()

        with on_retry(process_job, release_late):
            result = process_job.apply(args=[job_id])

    assert (result.state, result.result) == ("SUCCESS", "succeeded")
    assert [retry.when for retry in retries] == [1, 2, 4, 8]
    assert all(isinstance(retry.exc, OperationalError) for retry in retries)
    job = job_row(e2e_db, job_id)
    assert (job.status, job.result_status, job.error_streak) == ("succeeded", 201, 0)
    assert entry_count(e2e_db) == before + 1


def cut_short(engine: Engine, job_id: str) -> None:
    """Cut the stored body short, as if it had been damaged: it no longer decodes."""
    with engine.begin() as connection:
        connection.execute(
            update(Job).where(Job.id == uuid.UUID(job_id)).values(batch=b'{"data": [{"type"')
        )


def test_an_internal_error_on_every_run_fails_the_job_at_the_attempts_limit(
    process_job: Task[[str], str], e2e_db: Engine, retries: list[Retry]
) -> None:
    before = entry_count(e2e_db)
    job_id = queued(e2e_db, [create_resource()])
    cut_short(e2e_db, job_id)

    result = process_job.apply(args=[job_id])

    assert result.state == "FAILURE"
    assert isinstance(result.result, NotWellFormed)
    # Every run but the last asked for a retry; the last met the same error and ended it.
    assert len(retries) == MAX_ATTEMPTS - 1
    assert all(isinstance(retry.exc, NotWellFormed) for retry in retries)
    job = job_row(e2e_db, job_id)
    assert (job.status, job.result_status, job.error_count) == ("failed", 500, 1)
    assert (job.attempts, job.error_streak) == (MAX_ATTEMPTS, MAX_ATTEMPTS)
    assert job.last_error is not None
    assert job.last_error.startswith("shared.domain.documents.NotWellFormed: ")
    assert job.finished_at is not None and job.heartbeat_at is None
    assert stored_document(job) == INTERNAL_ERROR
    assert entry_count(e2e_db) == before


def test_an_internal_error_that_does_not_come_back_does_not_fail_the_job(
    process_job: Task[[str], str], e2e_db: Engine, retries: list[Retry]
) -> None:
    before = entry_count(e2e_db)
    job_id = queued(e2e_db, [create_resource()])
    with Session(e2e_db) as session:
        intact = session.get_one(Job, uuid.UUID(job_id)).batch
    cut_short(e2e_db, job_id)

    def repair(**_: Any) -> None:
        with e2e_db.begin() as connection:
            connection.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(batch=intact))

    with on_retry(process_job, repair):
        result = process_job.apply(args=[job_id])

    assert (result.state, result.result) == ("SUCCESS", "succeeded")
    (retry,) = retries
    assert isinstance(retry.exc, NotWellFormed)
    job = job_row(e2e_db, job_id)
    assert (job.status, job.result_status, job.attempts, job.error_streak) == (
        "succeeded", 201, 2, 1,
    )  # fmt: skip
    assert entry_count(e2e_db) == before + 1


def test_an_internal_error_after_the_entries_are_written_rolls_them_back(
    process_job: Task[[str], str], e2e_db: Engine, retries: list[Retry]
) -> None:
    with Session(e2e_db, expire_on_commit=False) as session:
        factories = Factories(session)
        # The time zone is only needed to render the result, after the batch is written.
        org = factories.organization(
            time_zone="Atlantis/Lost", default_currency="EUR", reporting_currency="EUR"
        )
        person = factories.person(org.id)
        service = factories.service(org.id)
        session.commit()
    principal = Principal(person_id=person.id, organization_id=org.id, read_only=False)
    resource = create_resource()
    resource["relationships"]["person"]["data"]["id"] = str(person.id)
    resource["relationships"]["service"]["data"]["id"] = str(service.id)
    before = entry_count(e2e_db)
    # Two rounds of progress: the first is reported, the last is left to the job's end.
    job_id = queued(e2e_db, [resource] * (2 * PROGRESS_EVERY), principal)

    result = process_job.apply(args=[job_id])

    assert result.state == "FAILURE"
    assert isinstance(result.result, ZoneInfoNotFoundError)
    assert len(retries) == MAX_ATTEMPTS - 1
    job = job_row(e2e_db, job_id)
    assert (job.status, job.result_status, job.attempts) == ("failed", 500, MAX_ATTEMPTS)
    assert stored_document(job) == INTERNAL_ERROR
    # Progress, committed on its own connection, shows the entries had been written ...
    assert job.processed == PROGRESS_EVERY
    # ... and the job's transaction took them back with it.
    assert entry_count(e2e_db) == before


def logged(process: WorkerProcess, job_id: str) -> list[dict[str, Any]]:
    return [event for event in process.events() if event.get("job_id") == job_id]


@pytest.fixture
def worker_process(worker_settings: Settings, run_id: str) -> Iterator[WorkerProcess]:
    process = WorkerProcess(
        worker_settings, worker_settings.data_dir / "worker-app.log", f"worker-app-{run_id}"
    )
    process.start()
    yield process
    process.stop()
    purge(worker_settings, worker_settings.queue)


@pytest.mark.e2e
def test_a_worker_retries_through_the_broker_after_the_countdown(
    worker_process: WorkerProcess, worker_settings: Settings, e2e_db: Engine
) -> None:
    before = entry_count(e2e_db)
    job_id = queued(e2e_db, [create_resource(), create_resource(), create_resource()])
    with e2e_db.connect() as holder:
        hold_row(holder, job_id)
        create_celery(worker_settings).send_task(PROCESS_JOB, args=[job_id])

        def retried() -> bool:
            return any(
                " retry: Retry in 1s" in e["message"] for e in logged(worker_process, job_id)
            )

        eventually(retried, timeout=60, what="the task's retry")
        holder.rollback()
    eventually(lambda: worker_process.outcomes(job_id) == ["succeeded"], timeout=60, what="success")

    events = logged(worker_process, job_id)
    warned = next(e for e in events if e["message"].endswith("transient database error; retrying"))
    retry = next(e for e in events if " retry: Retry in 1s" in e["message"])
    assert "OperationalError" in retry["message"] and "lock timeout" in retry["message"]
    done = next(e for e in events if e["message"] == f"job {job_id} succeeded")
    # The task warned just before asking for the retry, whose countdown starts after it: the
    # second delivery cannot have finished sooner than the countdown later.
    waited = dt.datetime.fromisoformat(done["time"]) - dt.datetime.fromisoformat(warned["time"])
    assert waited >= dt.timedelta(seconds=1)
    job = job_row(e2e_db, job_id)
    assert (job.status, job.attempts, job.result_status) == ("succeeded", 1, 201)
    assert entry_count(e2e_db) == before + 3


def test_a_shutdown_cutting_the_run_leaves_the_job_to_run_again_and_the_process_leaving(
    process_job: Task[[str], str], e2e_db: Engine, retries: list[Retry]
) -> None:
    """What billiard does to a task cancelled on a broker connection loss: SystemExit,
    raised by its signal handler wherever the run is (here: waiting on a row lock)."""

    job_id = queued(e2e_db, [create_resource()])
    with e2e_db.connect() as holder:
        hold_row(holder, job_id)
        # The process must go, as the signal meant, whatever the cleanup raised.
        with pytest.raises(SystemExit), system_exit_in(0.05):
            process_job.apply(args=[job_id])
        holder.rollback()
    assert retries == []
    job = job_row(e2e_db, job_id)
    assert job.status in ("queued", "running")
    assert (job.result_status, job.error_streak, job.last_error) == (None, 0, None)


def test_a_shutdown_that_a_cleanup_turned_into_another_error_still_ends_the_process(
    process_job: Task[[str], str],
    e2e_db: Engine,
    retries: list[Retry],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the signal lands mid-query, rolling back on the cut connection raises an error
    of its own with the SystemExit only as its context (seen under a broker restart). Were
    the process to live on, billiard's flag would make it take every later error for a
    shutdown."""

    job_id = queued(e2e_db, [create_resource()])
    monkeypatch.setattr(worker.app, "run_job", disguised_shutdown)
    with pytest.raises(SystemExit) as left:
        process_job.apply(args=[job_id])
    assert isinstance(left.value.__cause__, psycopg.ProgrammingError)
    assert retries == []
    job = job_row(e2e_db, job_id)
    assert (job.status, job.result_status, job.error_streak) == ("queued", None, 0)
