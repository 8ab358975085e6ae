"""Jobs: GET /jobs/{id} while it runs, then its result; DELETE cancels a queued one."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from flask import Blueprint, Response, request, url_for

from api.auth import principal
from api.context import db, services
from api.negotiation import preferred_wait, require_acceptable
from shared.jobs import cancel_job, find_job, unknown_job
from shared.jsonapi import CONTENT_TYPE, ApiError, encode
from shared.models import FINISHED_STATUSES, Job

blueprint = Blueprint("jobs", __name__)

# Endpoint names as registered under the api_v2 blueprint.
SHOW = "api_v2.jobs.show"
RESULT = "api_v2.jobs.result"


def _timestamp(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds")


def job_resource(job: Job) -> dict[str, Any]:
    links = {"self": url_for(SHOW, job_id=str(job.id))}
    if job.status in FINISHED_STATUSES:
        links["result"] = url_for(RESULT, job_id=str(job.id))
    return {
        "id": str(job.id),
        "type": "jobs",
        "attributes": {
            "status": job.status,
            "operation": job.operation,
            "total": job.total,
            "processed": job.processed,
            "errors": job.error_count,
            "created_at": _timestamp(job.created_at),
            "started_at": _timestamp(job.started_at),
            "finished_at": _timestamp(job.finished_at),
            "attempts": job.attempts,
        },
        "links": links,
    }


def job_response(job: Job, status: int = 200) -> Response:
    response = Response(
        encode({"data": job_resource(job), "meta": {}}), status=status, content_type=CONTENT_TYPE
    )
    location = url_for(SHOW, job_id=str(job.id))
    if status == 202:
        response.headers["Location"] = location
    response.headers["Content-Location"] = location
    if job.status in ("queued", "running"):
        response.headers["Retry-After"] = str(services().settings.retry_after)
    return response


def result_response(job: Job) -> Response:
    assert job.result_status is not None
    response = Response(
        job.result_body if job.result_status != 204 else None,
        status=job.result_status,
        content_type=CONTENT_TYPE if job.result_status != 204 else None,
    )
    if job.result_status == 204:
        response.headers.pop("Content-Type", None)
    response.headers["Content-Location"] = url_for(RESULT, job_id=str(job.id))
    return response


def wait_for(job: Job, seconds: int) -> Job:
    """Poll the job row until it finishes or `seconds` pass; returns the freshest row."""
    deadline = time.monotonic() + seconds
    delay = 0.05
    session = db()
    while job.status not in FINISHED_STATUSES and job.status != "canceled":
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # Release the snapshot and any locks while we sleep.
        session.commit()
        time.sleep(min(delay, remaining))
        delay = min(delay * 1.5, 0.5)
        session.refresh(job)
    return job


def answer_for(job: Job, *, accepted: bool) -> Response:
    wait = preferred_wait(request)
    if wait:
        job = wait_for(job, wait)
        if job.status in FINISHED_STATUSES:
            response = result_response(job)
            response.headers["Preference-Applied"] = f"wait={wait}"
            return response
    return job_response(job, 202 if accepted else 200)


def _job_or_404(job_id: str) -> Job:
    job = find_job(db(), principal().organization_id, job_id)
    if job is None:
        raise unknown_job(job_id)
    return job


@blueprint.get("/jobs/<job_id>")
def show(job_id: str) -> Response:
    require_acceptable(request)
    job = _job_or_404(job_id)
    if job.status not in FINISHED_STATUSES:
        job = wait_for(job, preferred_wait(request))
    if job.status in FINISHED_STATUSES:
        response = Response(status=303)
        response.headers["Location"] = url_for(RESULT, job_id=str(job.id))
        return response
    return job_response(job)


@blueprint.get("/jobs/<job_id>/result")
def result(job_id: str) -> Response:
    require_acceptable(request)
    job = _job_or_404(job_id)
    if job.status not in FINISHED_STATUSES:
        detail = (
            "the job was canceled and has no result"
            if job.status == "canceled"
            else f"the job is {job.status}; poll {url_for(SHOW, job_id=job_id)}"
        )
        raise ApiError.one(409, "Job not finished", detail)
    return result_response(job)


@blueprint.delete("/jobs/<job_id>")
def cancel(job_id: str) -> Response:
    require_acceptable(request)
    session = db()
    job = _job_or_404(job_id)
    if not cancel_job(session, job):
        raise ApiError.one(
            409, "Job already started", f"the job is {job.status} and can no longer be canceled"
        )
    session.commit()
    session.refresh(job)
    return job_response(job)
