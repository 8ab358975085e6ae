"""GET /jobs: the organization's jobs, newest first, filtered and a page at a time."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Connection, event
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from shared.store.models import Job
from tests.conftest import BULK
from tests.factories import create_resource

BASE = dt.datetime(2026, 1, 5, 9, tzinfo=dt.UTC)


def make_job(
    session: Session,
    minutes: int,
    *,
    status: str = "queued",
    operation: str = "create",
    person_id: int = 7781,
    organization_id: int = 2110,
) -> Job:
    total = 3
    job = Job(
        organization_id=organization_id,
        person_id=person_id,
        operation=operation,
        status=status,
        total=total,
        processed=total if status == "succeeded" else 0,
        batch=b"x" * 100 * total,
        created_at=BASE + dt.timedelta(minutes=minutes),
    )
    session.add(job)
    session.flush()
    return job


@pytest.fixture
def made(session: Session) -> dict[str, Job]:
    """Five Demo Agency jobs a minute apart, and one of Workflow Studio's."""
    jobs = {
        "created": make_job(session, 0, status="succeeded"),
        "updated": make_job(session, 1, status="failed", operation="update"),
        "deleting": make_job(session, 2, status="running", operation="delete"),
        "approve": make_job(session, 3, operation="approve", person_id=7783),
        "canceled": make_job(session, 4, status="canceled", operation="create"),
        "elsewhere": make_job(session, 5, person_id=7791, organization_id=2111),
    }
    return jobs


def listed(
    client: FlaskClient, headers: dict[str, str], params: dict[str, str] | None = None
) -> TestResponse:
    return client.get("/api/v2/jobs", query_string=params or {}, headers=headers)


def names(made: dict[str, Job], response: TestResponse) -> list[str]:
    assert response.status_code == 200, response.json
    by_id = {str(job.id): name for name, job in made.items()}
    return [by_id[resource["id"]] for resource in response.json["data"]]


def test_newest_first_with_the_job_resource(
    client: FlaskClient, auth: Any, made: dict[str, Job]
) -> None:
    response = listed(client, auth())
    assert names(made, response) == ["canceled", "approve", "deleting", "updated", "created"]
    assert response.json["meta"]["total_count"] == 5
    created = response.json["data"][-1]
    job = made["created"]
    assert created == {
        "id": str(job.id),
        "type": "jobs",
        "attributes": {
            "status": "succeeded",
            "operation": "create",
            "total": 3,
            "processed": 3,
            "errors": 0,
            "created_at": "2026-01-05T09:00:00.000+00:00",
            "started_at": None,
            "finished_at": None,
            "attempts": 0,
        },
        "links": {"self": f"/api/v2/jobs/{job.id}"},
        "meta": {"result": f"/api/v2/jobs/{job.id}/result"},
    }
    running = response.json["data"][2]
    assert running["links"] == {"self": f"/api/v2/jobs/{made['deleting'].id}"}
    assert "meta" not in running


def test_everyone_sees_the_organization_s_jobs_only(
    client: FlaskClient, auth: Any, made: dict[str, Job]
) -> None:
    # Jobs belong to the organization, not to whoever submitted them.
    assert len(names(made, listed(client, auth(7782)))) == 5
    assert names(made, listed(client, auth(7793))) == ["elsewhere"]
    assert names(made, listed(client, auth(8881))) == []
    assert names(made, listed(client, auth(7781, read_only=True)))[0] == "canceled"
    assert listed(client, {}).status_code == 401


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"filter[status]": "queued"}, ["approve"]),
        ({"filter[status]": "succeeded,failed"}, ["updated", "created"]),
        ({"filter[status]": "running"}, ["deleting"]),
        ({"filter[status]": "canceled"}, ["canceled"]),
        ({"filter[operation]": "create"}, ["canceled", "created"]),
        ({"filter[operation]": "unapprove"}, []),
        ({"filter[operation]": "update,delete"}, ["deleting", "updated"]),
        ({"filter[status]": "succeeded", "filter[operation]": "create"}, ["created"]),
        ({"filter[status]": "succeeded", "filter[operation]": "update"}, []),
        ({"sort": "created_at"}, ["created", "updated", "deleting", "approve", "canceled"]),
        ({"sort": "-created_at"}, ["canceled", "approve", "deleting", "updated", "created"]),
    ],
)
def test_filters_and_sort(
    client: FlaskClient,
    auth: Any,
    made: dict[str, Job],
    params: dict[str, str],
    expected: list[str],
) -> None:
    response = listed(client, auth(), params)
    assert names(made, response) == expected
    assert response.json["meta"]["total_count"] == len(expected)


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"filter[status]": "done"}, "filter[status]"),
        ({"filter[status]": ""}, "filter[status]"),
        ({"filter[operation]": "merge"}, "filter[operation]"),
        ({"filter[person_id]": "7781"}, "filter[person_id]"),
        ({"sort": "status"}, "sort"),
        ({"include": "person"}, "include"),
        ({"page[size]": "201"}, "page[size]"),
        ({"page[number]": "0"}, "page[number]"),
    ],
)
def test_bad_parameters(
    client: FlaskClient, auth: Any, made: dict[str, Job], params: dict[str, str], parameter: str
) -> None:
    response = listed(client, auth(), params)
    assert response.status_code == 400
    assert response.json["errors"][0]["source"] == {"parameter": parameter}


def test_pages(client: FlaskClient, auth: Any, made: dict[str, Job]) -> None:
    first = listed(client, auth(), {"page[size]": "2"})
    assert names(made, first) == ["canceled", "approve"]
    assert first.json["meta"] == {
        "current_page": 1,
        "total_pages": 3,
        "total_count": 5,
        "page_size": 2,
        "max_page_size": 200,
    }
    second = client.get(first.json["links"]["next"], headers=auth())
    assert names(made, second) == ["deleting", "updated"]
    last = client.get(first.json["links"]["last"], headers=auth())
    assert names(made, last) == ["created"]
    assert last.json["links"]["next"] is None
    beyond = listed(client, auth(), {"page[size]": "2", "page[number]": "4"})
    assert names(made, beyond) == []
    assert beyond.json["meta"]["total_count"] == 5


def test_a_submitted_then_canceled_job_is_listed(client: FlaskClient, auth: Any) -> None:
    body = {"data": [create_resource()]}
    headers = auth()
    accepted = client.post(
        "/api/v2/time_entries", json=body, headers=headers | {"Content-Type": BULK}
    )
    assert accepted.status_code == 202
    job_id = accepted.json["data"]["id"]
    queued = listed(client, headers, {"filter[status]": "queued"})
    assert [r["id"] for r in queued.json["data"]] == [job_id]
    assert client.delete(f"/api/v2/jobs/{job_id}", headers=headers).status_code == 200
    assert listed(client, headers, {"filter[status]": "queued"}).json["data"] == []
    canceled = listed(client, headers, {"filter[status]": "canceled"}).json["data"]
    assert [(r["id"], r["attributes"]["status"]) for r in canceled] == [(job_id, "canceled")]


def test_the_list_never_reads_batches_or_results(
    client: FlaskClient, auth: Any, made: dict[str, Job], connection: Connection, session: Session
) -> None:
    session.expunge_all()
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(connection, "before_cursor_execute", record)
    try:
        response = listed(client, auth())
    finally:
        event.remove(connection, "before_cursor_execute", record)
    assert len(response.json["data"]) == 5
    reads = [s for s in seen if "FROM jobs" in s]
    assert len(reads) == 2  # the COUNT and the page
    assert not [s for s in reads if "jobs.batch" in s or "jobs.result_body" in s]
