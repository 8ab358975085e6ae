"""What operators see of a real worker: its metrics merged into the web's /metrics across
processes, its JSON log lines with the job's ids, the sweeper's and retention's counters,
and the retention task purging results (410) when beat sends it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from api import create_app
from shared.cli.commands import main
from shared.devstack import supervisor
from shared.domain.tokens import Principal
from shared.jobs.queue import PROCESS_JOB, PURGE_JOBS, SWEEP_JOBS, create_celery
from shared.jobs.sweeper import recover_jobs
from shared.settings import Settings
from shared.store.engine import make_session_factory
from shared.store.models import Job
from tests.checked_client import CheckedClient
from tests.conftest import purge
from tests.e2e.conftest import WorkerProcess
from tests.factories import queue_job, reference
from tests.jobclient import JobClient, eventually
from tests.scraping import Samples, scrape, value
from worker.app import create_worker_app

pytestmark = pytest.mark.e2e

MEMBER = Principal(person_id=7781, organization_id=2110, read_only=False)


def create_doc(n: int) -> dict[str, Any]:
    return {
        "data": [
            {
                "type": "time_entries",
                "attributes": {"date": "2026-02-03", "time": 30 + i},
                "relationships": {
                    "person": {"data": {"type": "people", "id": "7781"}},
                    "service": {"data": {"type": "services", "id": "1213"}},
                },
            }
            for i in range(n)
        ]
    }


@pytest.fixture(scope="module")
def ops_settings(e2e_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir = tmp_path_factory.mktemp("operations")
    return dataclasses.replace(
        e2e_settings,
        data_dir=data_dir,
        queue=f"{e2e_settings.queue}-operations",
        metrics_dir=data_dir / "metrics",
    )


@pytest.fixture(scope="module")
def ops_worker(ops_settings: Settings, run_id: str) -> Iterator[WorkerProcess]:
    """A worker of its own queue, with PROMETHEUS_MULTIPROC_DIR set as `timebatch run` does."""
    process = WorkerProcess(ops_settings, ops_settings.data_dir / "worker.log", f"ops-{run_id}")
    process.start()
    yield process
    process.stop()
    purge(ops_settings, ops_settings.queue)


@pytest.fixture
def ops_client(ops_settings: Settings, e2e_db: Engine) -> FlaskClient:
    app = create_app(ops_settings, sessions=make_session_factory(e2e_db))
    app.test_client_class = CheckedClient
    return app.test_client()


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_worker_metrics_move_when_jobs_finish(
    ops_worker: WorkerProcess, ops_client: FlaskClient, e2e_auth: Any
) -> None:
    headers = e2e_auth(7781)
    jobs = JobClient(ops_client)
    before = scrape(ops_client)
    created = jobs.run("POST", "/api/v2/time_entries", create_doc(3), headers)
    assert created.status == 201
    failed = jobs.run(
        "PATCH",
        "/api/v2/time_entries",
        {"data": [{"type": "time_entries", "id": "999999", "attributes": {"time": 1}}]},
        headers,
    )
    assert failed.status == 404

    def recorded() -> bool:
        after = scrape(ops_client)
        return moved(before, after, "timebatch_jobs_finished_total", **FAILED_UPDATE) == 1

    # The worker records a job's metrics just after its commit, which the client sees first.
    eventually(recorded)
    after = scrape(ops_client)
    assert moved(before, after, "timebatch_jobs_finished_total", **CREATED) == 1
    assert moved(before, after, "timebatch_job_duration_seconds_count", **CREATED) == 1
    assert moved(before, after, "timebatch_job_duration_seconds_sum", **CREATED) > 0
    assert moved(before, after, "timebatch_job_duration_seconds_count", **FAILED_UPDATE) == 1
    assert moved(before, after, "timebatch_job_queue_wait_seconds_count", operation="create") == 1
    assert moved(before, after, "timebatch_entries_applied_total", operation="create") == 3
    assert moved(before, after, "timebatch_entries_applied_total", operation="update") == 0
    # State read at scrape time: the two jobs are stored, finished.
    assert moved(before, after, "timebatch_jobs", operation="create", status="succeeded") == 1
    assert value(after, "timebatch_queue_depth", queue=ops_worker.settings.queue) == 0
    # The worker's processes wrote files; this test process wrote none of these.
    assert list((ops_worker.settings.metrics_dir or Path()).glob("histogram_*.db"))


CREATED = {"operation": "create", "status": "succeeded"}
FAILED_UPDATE = {"operation": "update", "status": "failed"}


def test_worker_log_lines_are_json_with_the_job_ids(
    ops_worker: WorkerProcess, ops_client: FlaskClient, e2e_auth: Any
) -> None:
    headers = e2e_auth(7781)
    outcome = JobClient(ops_client).run("POST", "/api/v2/time_entries", create_doc(1), headers)
    assert outcome.status == 201
    job_id = outcome.accepted.json["data"]["id"]  # type: ignore[index]

    def finished_line() -> dict[str, Any] | None:
        for line in ops_worker.log.read_text().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("job_id") == job_id and event["message"].endswith("succeeded"):
                    return event  # type: ignore[no-any-return]
        return None

    eventually(lambda: finished_line() is not None)
    event = finished_line()
    assert event is not None
    assert event["organization_id"] == "2110"
    assert uuid.UUID(event["task_id"])
    assert event["level"] == "INFO" and event["time"]
    assert headers["X-Auth-Token"] not in ops_worker.log.read_text()
    logged = [
        json.loads(line) for line in ops_worker.log.read_text().splitlines() if line[:1] == "{"
    ]
    assert any(e["message"].endswith(" ready.") for e in logged)  # Celery's own, as JSON


def test_sweeper_republishes_are_counted(
    ops_settings: Settings, ops_client: FlaskClient, e2e_db: Engine
) -> None:
    settings = dataclasses.replace(ops_settings, queue=f"{ops_settings.queue}-sweep")
    with Session(e2e_db) as session:
        queue_job(session, MEMBER, "delete", [reference(223)], queued_for=dt.timedelta(hours=1))
        session.commit()
    before = scrape(ops_client)
    try:
        assert recover_jobs(e2e_db, settings, create_worker_app(settings)) == 1
        after = scrape(ops_client)
        name = "timebatch_sweeper_republished_jobs_total"
        assert moved(before, after, name, queue=settings.queue) == 1
    finally:
        purge(settings, settings.queue)


def expired_job(engine: Engine) -> str:
    """A job that succeeded 30 days ago, its result still stored."""
    with Session(engine) as session:
        job = queue_job(session, MEMBER, "delete", [reference(224)])
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
        session.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(status="succeeded", result_status=204, finished_at=long_ago)
        )
        session.commit()
        return str(job.id)


def test_beat_sends_the_purge_and_the_worker_applies_retention(
    ops_worker: WorkerProcess, ops_client: FlaskClient, e2e_db: Engine, e2e_auth: Any
) -> None:
    schedule = create_worker_app(ops_worker.settings).conf.beat_schedule
    assert {entry["task"] for entry in schedule.values()} == {SWEEP_JOBS, PURGE_JOBS}
    assert schedule["purge-expired-jobs"]["schedule"] == ops_worker.settings.purge_interval

    job_id = expired_job(e2e_db)
    headers = e2e_auth(7781)
    assert ops_client.get(f"/api/v2/jobs/{job_id}/result", headers=headers).status_code == 204
    before = scrape(ops_client)
    create_celery(ops_worker.settings).send_task(PURGE_JOBS)

    def purged() -> bool:
        with Session(e2e_db) as session:
            return (
                session.scalar(select(Job.purged_at).where(Job.id == uuid.UUID(job_id))) is not None
            )

    eventually(purged)
    assert ops_client.get(f"/api/v2/jobs/{job_id}/result", headers=headers).status_code == 410
    eventually(
        lambda: moved(before, scrape(ops_client), "timebatch_retention_purged_jobs_total") == 1
    )


def test_timebatch_jobs_purge(e2e_settings: Settings, e2e_db: Engine) -> None:
    job_id = expired_job(e2e_db)
    result = CliRunner().invoke(main, ["jobs", "purge"], env=e2e_settings.as_env())
    assert result.exit_code == 0, result.output
    assert "purged 1 job(s) finished more than 7 days ago" in result.output
    with Session(e2e_db) as session:
        job = session.get_one(Job, uuid.UUID(job_id))
        assert job.purged_at is not None and job.batch is None and job.status == "succeeded"


@pytest.fixture
def flower(ops_settings: Settings) -> Iterator[tuple[str, tuple[str, str]]]:
    """Flower as `timebatch run` starts it: basic auth, outside the metrics directory."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    login = ("ops", "flower-" + uuid.uuid4().hex[:8])
    settings = dataclasses.replace(
        ops_settings, flower_port=port, flower_basic_auth=":".join(login)
    )
    argv = supervisor.stack_commands(settings)["flower"]
    env = supervisor.stack_env(settings)
    log = (ops_settings.data_dir / "flower.log").open("wb")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: _answers(f"{url}/healthcheck", login), timeout=30)
        yield url, login
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def _answers(url: str, login: tuple[str, str]) -> bool:
    try:
        return requests.get(url, auth=login, timeout=2).ok
    except requests.ConnectionError:
        return False


def test_flower_shows_jobs_by_name_with_their_id_behind_basic_auth(
    ops_worker: WorkerProcess,
    ops_client: FlaskClient,
    e2e_auth: Any,
    flower: tuple[str, tuple[str, str]],
) -> None:
    url, login = flower
    # Events sent before Flower listens are lost to it: wait until it hears the worker.
    online = f'flower_worker_online{{worker="{ops_worker.name}@'
    eventually(lambda: online in requests.get(f"{url}/metrics", timeout=5).text, timeout=30)
    assert requests.get(f"{url}/api/tasks", timeout=5).status_code == 401
    assert requests.get(f"{url}/tasks", timeout=5).status_code == 401
    outcome = JobClient(ops_client).run(
        "POST", "/api/v2/time_entries", create_doc(1), e2e_auth(7781)
    )
    job_id = outcome.accepted.json["data"]["id"]  # type: ignore[index]

    def seen() -> dict[str, Any] | None:
        tasks = requests.get(
            f"{url}/api/tasks", params={"taskname": PROCESS_JOB}, auth=login, timeout=5
        ).json()
        for task in tasks.values():
            if job_id in (task.get("args") or ""):
                return task  # type: ignore[no-any-return]
        return None

    eventually(lambda: (seen() or {}).get("state") == "SUCCESS", timeout=30)
    task = seen()
    assert task is not None
    assert task["name"] == "timebatch.process_job"
    assert task["args"] == repr([job_id])
    # The task id is the job id: an operator pastes a job id into Flower.
    info = requests.get(f"{url}/api/task/info/{job_id}", auth=login, timeout=5)
    assert info.status_code == 200
    assert (info.json()["uuid"], info.json()["result"]) == (job_id, "'succeeded'")
    assert requests.get(f"{url}/task/{job_id}", auth=login, timeout=5).status_code == 200
    # A job that fails (a member may not approve) says so in the task's result.
    refused = JobClient(ops_client).run(
        "PATCH", "/api/v2/time_entries/approve", {"data": [reference(237)]}, e2e_auth(7781)
    )
    assert refused.status == 403
    failed_id = refused.accepted.json["data"]["id"]  # type: ignore[index]

    def result_of(task_id: str) -> Any:
        found = requests.get(f"{url}/api/task/info/{task_id}", auth=login, timeout=5)
        return found.json().get("result") if found.status_code == 200 else None

    eventually(lambda: result_of(failed_id) == "'failed'", timeout=30)
    # Flower serves /metrics without its login, for Prometheus: keep its port private.
    metrics_text = requests.get(f"{url}/metrics", timeout=5).text
    assert 'flower_events_total{task="timebatch.process_job"' in metrics_text


def test_a_stopped_worker_leaves_no_in_progress_gauge(
    ops_worker: WorkerProcess, ops_client: FlaskClient, e2e_auth: Any
) -> None:
    """Pool processes drop their live gauges when they exit (mark_process_dead)."""
    outcome = JobClient(ops_client).run(
        "POST", "/api/v2/time_entries", create_doc(1), e2e_auth(7781)
    )
    assert outcome.status == 201
    directory = ops_worker.settings.metrics_dir
    assert directory is not None
    eventually(lambda: bool(list(directory.glob("gauge_livesum_*.db"))))
    # The task leaves the gauge just after the commit the client saw.
    eventually(
        lambda: (
            value(scrape(ops_client), "timebatch_jobs_in_progress", queue=ops_worker.settings.queue)
            == 0
        )
    )
    ops_worker.stop()
    assert list(directory.glob("gauge_livesum_*.db")) == []
    assert list(directory.glob("counter_*.db"))  # counts outlive their processes
