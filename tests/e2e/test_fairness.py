"""A shared service: fair dispatch across organizations, per-organization limits, waiting
clients that cannot starve the web tier, and housekeeping that never waits behind work.

Each test has a queue of its own and starts the real worker processes it needs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
import requests
from flask import Flask
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from api import create_app
from bench.stack import free_port
from shared.jobs.queue import SWEEP_JOBS, create_celery
from shared.settings import Settings
from shared.store.engine import make_session_factory
from shared.store.models import Job, TimeEntry
from tests.checked_client import CheckedClient
from tests.conftest import BULK, PublishLog
from tests.e2e.conftest import web_tier
from tests.jobclient import JobClient

# A member with a cost rate and a service of each demo organization.
MEMBERS = {2110: (7781, 1213), 2111: (7791, 1223), 2112: (8881, 2213)}


def document(organization: int, n: int) -> bytes:
    person, service = MEMBERS[organization]
    resource = {
        "type": "time_entries",
        "attributes": {"date": "2026-02-03", "time": 45},
        "relationships": {
            "person": {"data": {"type": "people", "id": str(person)}},
            "service": {"data": {"type": "services", "id": str(service)}},
        },
    }
    return orjson.dumps({"data": [resource] * n})


@pytest.fixture
def own_settings(e2e_settings: Settings, request: pytest.FixtureRequest) -> Settings:
    return dataclasses.replace(
        e2e_settings, queue=f"{e2e_settings.queue}-{request.node.originalname}"
    )


def client_for(settings: Settings, engine: Engine, **kwargs: Any) -> JobClient:
    app: Flask = create_app(settings, sessions=make_session_factory(engine), **kwargs)
    app.test_client_class = CheckedClient
    return JobClient(app.test_client())


def jobs_of(engine: Engine, ids: list[str]) -> list[Job]:
    with Session(engine) as session:
        found = {str(job.id): job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
    return [found[job_id] for job_id in ids]


def wait_until(condition: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def finished(engine: Engine, ids: list[str]) -> bool:
    return all(job.finished_at is not None for job in jobs_of(engine, ids))


def started_at(job: Job) -> dt.datetime:
    assert job.started_at is not None
    return job.started_at


def job_id(response: Any) -> str:
    assert response.status_code == 202, response.data
    return str(response.json["data"]["id"])


# ------------------------------------------------------------------------ fair dispatch


def test_a_trickling_organization_passes_two_floods_and_each_keeps_its_order(
    own_settings: Settings, e2e_db: Engine, e2e_auth: Any, worker_factory: Any
) -> None:
    worker_factory(own_settings)  # two processes
    client = client_for(own_settings, e2e_db)
    headers = {org: e2e_auth(person) for org, (person, _) in MEMBERS.items()}
    floods: dict[int, list[str]] = {2110: [], 2111: []}
    for _ in range(8):
        for org in floods:
            accepted = client.submit(
                "POST", "/api/v2/time_entries", document(org, 3000), headers[org]
            )
            floods[org].append(job_id(accepted))
    trickle = [
        job_id(client.submit("POST", "/api/v2/time_entries", document(2112, 1), headers[2112]))
        for _ in range(3)
    ]
    everything = [*floods[2110], *floods[2111], *trickle]
    wait_until(lambda: finished(e2e_db, everything))

    jobs = {str(job.id): job for job in jobs_of(e2e_db, everything)}
    assert {job.status for job in jobs.values()} == {"succeeded"}
    # Ranks start at 0 and never go down while the organization has jobs waiting (a job
    # that finished meanwhile lets the count drop, not the rank).
    for ids in (*floods.values(), trickle):
        ranks = [jobs[i].rank for i in ids]
        assert ranks[0] == 0 and ranks == sorted(ranks) and ranks[-1] > 0, ranks
    # A flood job that started more than this after a small job was stored was still queued
    # when the small job's message arrived (a worker takes a message and stamps it at once).
    in_flight = dt.timedelta(milliseconds=100)
    for small in trickle:
        mine = jobs[small]
        rank = mine.rank
        # Behind it in the queue: the floods' jobs of higher ranks. None of them started first.
        behind = [
            started_at(jobs[i])
            for ids in floods.values()
            for i in ids
            if jobs[i].rank > rank and started_at(jobs[i]) > mine.created_at + in_flight
        ]
        assert behind or rank > 0, "the floods had drained before the trickle came"
        assert all(started > started_at(mine) for started in behind)
    # Within each organization, jobs left the queue in submission order. Two worker
    # processes stamp started_at in transactions of their own, a few milliseconds apart.
    slack = dt.timedelta(milliseconds=100)
    for ids in (*floods.values(), trickle):
        starts = [started_at(jobs[i]) for i in ids]
        assert all(b > a - slack for a, b in itertools.pairwise(starts))


# ------------------------------------------------------------------------------- limits


def test_past_the_limit_a_submission_is_refused_with_retry_after_and_nothing_is_lost(
    own_settings: Settings, e2e_db: Engine, e2e_auth: Any, worker_factory: Any
) -> None:
    settings = dataclasses.replace(own_settings, org_max_unfinished=3)
    client = client_for(settings, e2e_db)
    headers = e2e_auth(7781)
    with Session(e2e_db) as session:
        before = session.scalar(select(func.count()).select_from(TimeEntry)) or 0
    # No worker yet: the jobs stay queued, so the fourth finds three unfinished.
    accepted = [
        client.submit(
            "POST",
            "/api/v2/time_entries",
            document(2110, 50),
            headers,
            {"Idempotency-Key": f"k{n}"},
        )
        for n in range(3)
    ]
    ids = [job_id(a) for a in accepted]
    refused = client.submit("POST", "/api/v2/time_entries", document(2110, 50), headers)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"].isdigit() and int(refused.headers["Retry-After"]) >= 1
    (error,) = orjson.loads(refused.data)["errors"]
    assert error["code"] == "org_max_unfinished"
    assert "TIMEBATCH_ORG_MAX_UNFINISHED (3)" in error["detail"]
    # A replay of an existing job is never refused, at the limit or not.
    replay = client.submit(
        "POST", "/api/v2/time_entries", document(2110, 50), headers, {"Idempotency-Key": "k0"}
    )
    assert job_id(replay) == ids[0]
    # Another organization has limits of its own.
    other = client.submit("POST", "/api/v2/time_entries", document(2112, 1), e2e_auth(8881))
    ids.append(job_id(other))

    worker_factory(settings)
    # The refused client does as told: waits Retry-After, then sends again.
    deadline = time.monotonic() + 60
    while refused.status_code == 429:
        assert time.monotonic() < deadline
        time.sleep(int(refused.headers["Retry-After"]))
        refused = client.submit("POST", "/api/v2/time_entries", document(2110, 50), headers)
    ids.append(job_id(refused))
    wait_until(lambda: finished(e2e_db, ids))
    jobs = jobs_of(e2e_db, ids)
    assert [(job.status, job.attempts) for job in jobs] == [("succeeded", 1)] * 5
    with Session(e2e_db) as session:
        after = session.scalar(select(func.count()).select_from(TimeEntry))
    assert after == before + 4 * 50 + 1


def test_fifty_concurrent_submitters_never_pass_the_limit(
    own_settings: Settings, e2e_db: Engine, e2e_auth: Any
) -> None:
    settings = dataclasses.replace(own_settings, org_max_unfinished=10)
    unpublished = PublishLog()
    app = create_app(settings, sessions=make_session_factory(e2e_db), publish=unpublished)
    headers = {"Content-Type": BULK, "Accept": BULK, **e2e_auth(7781)}
    body = document(2110, 5)
    start = threading.Barrier(50)

    def submit(_: int) -> int:
        with app.test_client() as client:
            start.wait()
            return client.post("/api/v2/time_entries", data=body, headers=headers).status_code

    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(submit, range(50)))
    assert sorted(statuses) == [202] * 10 + [429] * 40
    with Session(e2e_db) as session:
        unfinished = session.scalar(
            select(func.count()).select_from(Job).where(Job.status == "queued")
        )
    assert unfinished == 10 == len(unpublished)


def test_the_entries_limit_counts_entries_in_unfinished_jobs(
    own_settings: Settings, e2e_db: Engine, e2e_auth: Any
) -> None:
    settings = dataclasses.replace(own_settings, org_max_unfinished_entries=120)
    client = client_for(settings, e2e_db, publish=PublishLog())
    headers = e2e_auth(7781)
    job_id(client.submit("POST", "/api/v2/time_entries", document(2110, 100), headers))
    refused = client.submit("POST", "/api/v2/time_entries", document(2110, 21), headers)
    assert refused.status_code == 429
    assert orjson.loads(refused.data)["errors"][0]["code"] == "org_max_unfinished_entries"
    job_id(client.submit("POST", "/api/v2/time_entries", document(2110, 20), headers))


# ------------------------------------------------------------------------- housekeeping


def test_the_sweeper_republishes_a_lost_job_during_a_flood(
    own_settings: Settings, e2e_db: Engine, e2e_auth: Any, worker_factory: Any
) -> None:
    settings = dataclasses.replace(own_settings, queued_grace=1)
    worker_factory(settings)
    client = client_for(settings, e2e_db)
    flood = [
        job_id(client.submit("POST", "/api/v2/time_entries", document(2110, 3000), e2e_auth(7781)))
        for _ in range(20)
    ]
    # The lost one: stored, but its message never reached the broker.
    lost_client = client_for(settings, e2e_db, publish=PublishLog())
    lost = job_id(
        lost_client.submit("POST", "/api/v2/time_entries", document(2112, 1), e2e_auth(8881))
    )
    with Session(e2e_db) as session:
        session.execute(
            update(Job)
            .where(Job.id == lost)
            .values(created_at=func.now() - dt.timedelta(seconds=5))
        )
        session.commit()
    # What beat sends every TIMEBATCH_SWEEP_INTERVAL: it goes to the housekeeping queue.
    sent = time.monotonic()
    create_celery(settings).send_task(SWEEP_JOBS)
    wait_until(lambda: finished(e2e_db, [lost]), timeout=60)
    took = time.monotonic() - sent
    (job,) = jobs_of(e2e_db, [lost])
    assert job.status == "succeeded"
    # It ran while the flood was still queued: neither the sweep nor the job waited behind it.
    assert not finished(e2e_db, flood), f"the flood drained first ({took:.1f} s)"
    wait_until(lambda: finished(e2e_db, flood))


# ---------------------------------------------------------------------- waiting clients


@pytest.fixture
def web(own_settings: Settings, e2e_db: Engine) -> Iterator[str]:
    """The real web tier: gunicorn with the command of `timebatch run`."""
    with web_tier(dataclasses.replace(own_settings, port=free_port())) as url:
        yield url


def test_sixty_four_waiting_clients_get_correct_answers_and_health_stays_fast(
    own_settings: Settings, e2e_db: Engine, e2e_auth: Any, worker_factory: Any, web: str
) -> None:
    headers = {"Content-Type": BULK, "Accept": BULK, **e2e_auth(7781)}
    # A backlog, so that the waited-for jobs are still queued when the waiters arrive.
    for _ in range(6):
        requests.post(
            f"{web}/api/v2/time_entries", data=document(2110, 3000), headers=headers, timeout=30
        ).raise_for_status()
    worker_factory(own_settings)
    go = threading.Barrier(64)

    def wait(n: int) -> tuple[int, int, str | None]:
        go.wait()
        response = requests.post(
            f"{web}/api/v2/time_entries",
            data=document(2110, 1 + n % 3),
            headers=headers | {"Prefer": "wait=30"},
            timeout=60,
        )
        if response.status_code == 201:
            # The final result, exactly as the synchronous API answers: the entries created.
            assert len(response.json()["data"]) == 1 + n % 3
        return response.status_code, 1 + n % 3, response.headers.get("Retry-After")

    def stored() -> int:
        with Session(e2e_db) as session:
            return (
                session.scalar(
                    select(func.count()).select_from(Job).where(Job.organization_id == 2110)
                )
                or 0
            )

    with ThreadPoolExecutor(64) as pool:
        answers = [pool.submit(wait, n) for n in range(64)]
        # Every waiter's job is stored: they are all waiting or answered. Now the health checks.
        wait_until(lambda: stored() == 6 + 64, timeout=30)
        timings = []
        for _ in range(10):
            started = time.perf_counter()
            assert requests.get(f"{web}/healthz", timeout=30).status_code == 200
            timings.append(time.perf_counter() - started)
        results = [answer.result() for answer in answers]

    assert max(timings) < 0.25, timings
    statuses = {status for status, _, _ in results}
    assert statuses <= {201, 202}
    # Past the web processes' wait capacity, the answer came at once: 202 and Retry-After.
    assert 202 in statuses
    assert all(
        retry is not None and retry.isdigit() for status, _, retry in results if status == 202
    )
    # The waiters within the capacity got the final result.
    assert 201 in statuses


def test_the_web_tier_answers_over_long_requests_itself(web: str, e2e_auth: Any) -> None:
    """gunicorn's limits are lifted: the app refuses with JSON:API, never an HTML page."""
    headers = e2e_auth(7781)
    long_line = requests.get(
        f"{web}/api/v2/time_entries?sort={'x' * 9000}", headers=headers, timeout=30
    )
    assert long_line.status_code == 414
    assert long_line.headers["Content-Type"].startswith("application/vnd.api+json")
    assert long_line.json()["errors"][0]["title"] == "URI too long"
    long_header = requests.get(
        f"{web}/api/v2/time_entries", headers=headers | {"X-Padding": "x" * 9000}, timeout=30
    )
    assert long_header.status_code == 431
    assert long_header.headers["Content-Type"].startswith("application/vnd.api+json")
