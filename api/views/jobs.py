"""Jobs: the list, GET /jobs/{id} while it runs, then its result; DELETE cancels a queued one."""

from __future__ import annotations

import datetime as dt
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, request, url_for

from api.auth import principal
from api.context import db, services
from api.listing import list_query, no_query, one_of, page_response
from api.negotiation import preferred_wait, require_acceptable
from api.views.events import require_event_stream, stream_response
from shared.jobs.submit import cancel_job, find_job, reread_job, unknown_job
from shared.jsonapi.errors import CONTENT_TYPE, ApiError, encode
from shared.store.models import (
    ENDED_STATUSES,
    FINISHED_STATUSES,
    UNFINISHED_STATUSES,
    Job,
    JobStatus,
    Operation,
)
from shared.store.notify import Ended
from shared.store.queries import JOB_SORTS, jobs_page
from shared.webhooks.outbox import claim_unpublished

blueprint = Blueprint("jobs", __name__)

GZIP_MAGIC = b"\x1f\x8b"
GUNZIP_PIECE = 256 * 1024

# Endpoint names as registered under the api_v2 blueprint.
SHOW = "api_v2.jobs.show"
RESULT = "api_v2.jobs.result"


def _timestamp(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds")


def job_resource(job: Job) -> dict[str, Any]:
    resource: dict[str, Any] = {
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
        "links": {"self": url_for(SHOW, job_id=str(job.id))},
    }
    if job.status in FINISHED_STATUSES:
        # JSON:API 1.0 allows no resource link but `self`: the result's goes in meta.
        resource["meta"] = {"result": url_for(RESULT, job_id=str(job.id))}
    return resource


def job_response(job: Job, status: int = 200) -> Response:
    response = Response(
        encode({"data": job_resource(job), "meta": {}}), status=status, content_type=CONTENT_TYPE
    )
    location = url_for(SHOW, job_id=str(job.id))
    if status == 202:
        response.headers["Location"] = location
    response.headers["Content-Location"] = location
    if job.status in UNFINISHED_STATUSES:
        response.headers["Retry-After"] = str(services().settings.retry_after)
    return response


def result_response(job: Job) -> Response:
    """The stored answer. Bodies are stored gzip-compressed: sent as they are to clients that
    accept gzip, decompressed for the others. Every way to a result comes through here, so a
    purged one is a 410 whether asked for directly or through `Prefer: wait`."""
    if job.purged_at is not None:
        days = services().settings.retention_days
        raise ApiError.one(
            410,
            "Result expired",
            f"results are kept {days} days after their job finished; this one was deleted"
            f" on {job.purged_at.date().isoformat()}",
        )
    assert job.result_status is not None
    body: bytes | Iterator[bytes] | None = job.result_body if job.result_status != 204 else None
    compressed = isinstance(body, bytes) and body[:2] == GZIP_MAGIC
    if compressed and isinstance(body, bytes) and request.accept_encodings["gzip"] <= 0:
        body, compressed = gunzipped(body), False
    response = Response(
        body,
        status=job.result_status,
        content_type=CONTENT_TYPE if job.result_status != 204 else None,
    )
    if job.result_status == 204:
        response.headers.pop("Content-Type", None)
    if compressed:
        response.headers["Content-Encoding"] = "gzip"
    response.headers["Vary"] = "Accept-Encoding"
    response.headers["Content-Location"] = url_for(RESULT, job_id=str(job.id))
    return response


def gunzipped(body: bytes) -> Iterator[bytes]:
    """A stored body decompressed as it is sent: a 100,000-entry result is some 130 MB of
    JSON, which no request should hold at once."""
    decompressor = zlib.decompressobj(31)
    while body:
        yield decompressor.decompress(body, GUNZIP_PIECE)
        body = decompressor.unconsumed_tail
    yield decompressor.flush()


def wait_for(job: Job, seconds: int, *, publish: Callable[[], None] | None = None) -> Job:
    """Wait until the job finishes or `seconds` pass; returns the freshest row.

    Wakes on the worker's notification; re-reads at least every second in case one is missed.
    When this process already has as many waiters as it allows, answers at once: RFC 7240
    lets a server ignore a preference. `publish`, for a job just stored, sends it to the
    workers once this request listens: the job as read then cannot end unseen, so the wait
    starts without reading it again.
    """
    if job.status in ENDED_STATUSES or seconds <= 0:
        if publish is not None:
            publish()
        return job
    deadline = time.monotonic() + seconds
    session = db()
    with services().listener.waiting(str(job.id)) as finished:
        if publish is not None:
            publish()
        if finished is None:
            return job
        if publish is None:
            job = reread_job(session, job)
        while True:
            remaining = deadline - time.monotonic()
            if job.status in ENDED_STATUSES or remaining <= 0:
                return job
            finished.wait(min(remaining, 1.0))
            if finished.ended is not None:
                return ended_job(job, finished.ended)
            finished.clear()
            job = reread_job(session, job)


def ended_job(job: Job, ended: Ended) -> Job:
    """The job as its end notification told it, enough to answer with its result; a copy
    apart from the session, which never writes it."""
    return Job(
        id=job.id,
        status=ended.status,
        result_status=ended.result_status,
        result_body=ended.result_body,
    )


def answer_for(job: Job, *, accepted: bool, publish: Callable[[], None] | None = None) -> Response:
    """The job, or its result when the client prefers to wait and it ends in time. `publish`
    sends a new job to the workers (see wait_for)."""
    wait = preferred_wait(request)
    job = wait_for(job, wait, publish=publish)
    if wait and job.status in FINISHED_STATUSES:
        response = result_response(job)
        response.headers["Preference-Applied"] = f"wait={wait}"
        return response
    return job_response(job, 202 if accepted else 200)


def _job_or_404(job_id: str) -> Job:
    job = find_job(db(), principal().organization_id, job_id)
    if job is None:
        raise unknown_job(job_id)
    return job


JOB_FILTERS = {"status": one_of(list(JobStatus)), "operation": one_of(list(Operation))}


@blueprint.get("/jobs")
def index() -> Response:
    """The organization's jobs, newest first unless `sort=created_at`."""
    require_acceptable(request)
    query = list_query(
        request.args, filters=JOB_FILTERS, sorts=tuple(JOB_SORTS), default_sort="-created_at"
    )
    page = jobs_page(
        db(),
        principal().organization_id,
        query.filters.get("status"),
        query.filters.get("operation"),
        query.sorts,
        query.page,
    )
    data = [job_resource(job) for job in page.items]
    return page_response(page, data, path=request.path, args=request.args)


@blueprint.get("/jobs/<job_id>")
def show(job_id: str) -> Response:
    require_acceptable(request)
    no_query(request.args)
    job = _job_or_404(job_id)
    if job.status not in FINISHED_STATUSES:
        job = wait_for(job, preferred_wait(request))
    if job.status in FINISHED_STATUSES:
        response = Response(status=303)
        response.headers.pop("Content-Type", None)  # no body, so no media type
        response.headers["Location"] = url_for(RESULT, job_id=str(job.id))
        return response
    return job_response(job)


@blueprint.get("/jobs/<job_id>/result")
def result(job_id: str) -> Response:
    require_acceptable(request)
    no_query(request.args)
    job = _job_or_404(job_id)
    if job.status not in FINISHED_STATUSES:
        detail = (
            "the job was canceled and has no result"
            if job.status == JobStatus.CANCELED
            else f"the job is {job.status}; poll {url_for(SHOW, job_id=job_id)}"
        )
        raise ApiError.one(409, "Job not finished", detail)
    return result_response(job)


@blueprint.get("/jobs/<job_id>/events")
def events(job_id: str) -> Response:
    """The job's progress and end as Server-Sent Events (api/views/events.py)."""
    require_event_stream(request)
    no_query(request.args)
    job = _job_or_404(job_id)
    return stream_response(
        job,
        # Checked again while the stream is open: a revoked token stops seeing the job.
        token=request.headers.get("X-Auth-Token", "").strip(),
        organization_id=principal().organization_id,
        result_link=url_for(RESULT, job_id=str(job.id)),
    )


@blueprint.delete("/jobs/<job_id>")
def cancel(job_id: str) -> Response:
    require_acceptable(request)
    no_query(request.args)
    session = db()
    job = _job_or_404(job_id)
    if not cancel_job(session, job):
        raise ApiError.one(
            409, "Job already started", f"the job is {job.status} and can no longer be canceled"
        )
    deliveries = claim_unpublished(session, job.id)
    session.commit()
    services().publish_deliveries(deliveries)
    session.refresh(job)
    return job_response(job)
