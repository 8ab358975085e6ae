"""The web side of a job's life: store an accepted batch, find a job, cancel a queued one.

The job row is committed before its id is published (the caller publishes after commit),
so a worker always finds what a message names.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import orjson
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session, undefer

from shared.domain.tokens import Principal
from shared.jobs.fairness import admit, lock_and_load
from shared.jsonapi.errors import ApiError
from shared.settings import Settings
from shared.store.engine import autocommit
from shared.store.models import Job, JobStatus, Operation
from shared.store.notify import notify_finished
from shared.webhooks.outbox import job_event, record_job_event


def fingerprint(operation: Operation, body: bytes, options: dict[str, Any]) -> str:
    """What makes two submissions the same request: operation, options and the body's bytes."""
    digest = hashlib.sha256(body)
    digest.update(orjson.dumps([operation, options], option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


# Built once: on every submission, building it would cost about as much as running it. The
# job comes back from the insert, server defaults and all, but for the batch it was given:
# a plain insert read back as a Job, which costs two thirds of the ORM's bulk insert.
_INSERT = select(Job).from_statement(
    insert(Job).returning(*(column for column in Job.__table__.c if column.key != "batch"))
)


def submit_job(
    session: Session,
    principal: Principal,
    operation: Operation,
    body: bytes,
    options: dict[str, Any],
    *,
    total: int,
    settings: Settings,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Store a queued job; returns it and whether it is new (False: an idempotent replay).

    `body` is the bulk document as received and checked, `total` its number of resources;
    it is stored as it is, and the worker decodes it. A new job past the organization's
    limits is refused with a 429; a replay of an existing one never is.
    """
    digest = fingerprint(operation, body, options)
    organization_id = principal.organization_id
    load = lock_and_load(session, organization_id)
    if idempotency_key is not None:
        # Under the organization's lock: a racing request with the same key is seen here.
        existing = session.scalars(
            select(Job).where(
                Job.organization_id == organization_id, Job.idempotency_key == idempotency_key
            )
        ).one_or_none()
        if existing is not None:
            if existing.request_hash != digest or existing.operation != operation:
                raise ApiError.one(
                    422,
                    "Idempotency key reused",
                    "this Idempotency-Key was already used with a different request",
                )
            return existing, False
    admit(session, organization_id, load, total, settings)
    job = session.scalars(
        _INSERT,
        {
            "organization_id": organization_id,
            "person_id": principal.person_id,
            "operation": operation,
            "batch": body,
            "options": options,
            "idempotency_key": idempotency_key,
            "request_hash": digest,
            "total": total,
            "rank": load.next_rank(),
        },
    ).one()
    return job, True


_FIND = select(Job).where(
    Job.id == bindparam("job_id"), Job.organization_id == bindparam("organization_id")
)
_REREAD = (
    select(Job)
    .where(Job.id == bindparam("job_id"))
    .options(undefer(Job.result_body))
    .execution_options(populate_existing=True)
)


def find_job(session: Session, organization_id: int, job_id: str) -> Job | None:
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        return None
    return session.scalars(_FIND, {"job_id": key, "organization_id": organization_id}).one_or_none()


def reread_job(session: Session, job: Job) -> Job:
    """The job as it is now, with its stored result: what a request waiting for its end
    sends once it has ended, read in the same round trip. A statement of its own, between the
    session's transactions, so a waiting request holds no connection."""
    with autocommit(session):
        return session.scalars(_REREAD, {"job_id": job.id}).one()


def cancel_job(session: Session, job: Job) -> bool:
    """Cancel a job that has not started; False when it is already running or finished."""
    canceled = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELED, finished_at=func.now())
        .returning(Job.id)
    ).scalar_one_or_none()
    if canceled is None:
        return False
    # Waiters and event streams of the job learn of its end as they would of a worker's.
    notify_finished(session, str(job.id))
    event = job_event(
        job.id,
        job.organization_id,
        operation=job.operation,
        status=JobStatus.CANCELED,
        result_status=None,
        total=job.total,
        errors=0,
    )
    record_job_event(session, event)
    return True


def unknown_job(job_id: str) -> ApiError:
    return ApiError.one(404, "Not found", f"job {job_id} does not exist")
