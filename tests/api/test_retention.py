"""A purged job still answers with its summary; its result is 410 Gone."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import orjson
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.jobs.retention import purge_expired_jobs
from shared.store.models import Job
from tests.conftest import BULK

RESULT = orjson.dumps({"data": [], "meta": {}})


def finished_job(client: FlaskClient, headers: dict[str, str], session: Session) -> str:
    body = {"data": [{"type": "time_entries", "id": "223", "attributes": {"note": "x"}}]}
    response = client.patch(
        "/api/v2/time_entries", data=orjson.dumps(body), headers=headers | {"Content-Type": BULK}
    )
    assert response.status_code == 202
    job_id: str = response.json["data"]["id"]  # type: ignore[index]
    ten_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    session.execute(
        update(Job)
        .where(Job.id == uuid.UUID(job_id))
        .values(
            status="succeeded",
            result_status=200,
            result_body=RESULT,
            processed=1,
            started_at=ten_days_ago,
            finished_at=ten_days_ago,
        )
    )
    return job_id


def test_a_purged_result_is_gone_and_the_job_keeps_its_summary(
    client: FlaskClient, auth: Any, session: Session
) -> None:
    headers = auth()
    job_id = finished_job(client, headers, session)
    before = client.get(f"/api/v2/jobs/{job_id}/result", headers=headers)
    assert (before.status_code, before.data) == (200, RESULT)

    assert purge_expired_jobs(session, retention_days=7) >= 1
    poll = client.get(f"/api/v2/jobs/{job_id}", headers=headers)
    assert poll.status_code == 303
    gone = client.get(poll.headers["Location"], headers=headers)
    assert gone.status_code == 410
    (error,) = gone.json["errors"]  # type: ignore[index]
    assert error["title"] == "Result expired"
    assert "kept 7 days" in error["detail"]

    listed = client.get("/api/v2/jobs", headers=headers).json["data"]  # type: ignore[index]
    (summary,) = [job for job in listed if job["id"] == job_id]
    assert summary["attributes"]["status"] == "succeeded"
    assert summary["attributes"]["processed"] == summary["attributes"]["total"] == 1


def test_a_recent_result_is_kept(client: FlaskClient, auth: Any, session: Session) -> None:
    headers = auth()
    job_id = finished_job(client, headers, session)
    assert purge_expired_jobs(session, retention_days=30) == 0
    assert client.get(f"/api/v2/jobs/{job_id}/result", headers=headers).status_code == 200
