"""The outbox: a delivery row per endpoint that wants the event, written in the transaction
that ends the job. A job whose transaction rolls back leaves none; one that commits always
has its rows, and the rows are published only after that commit."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from sqlalchemy import LargeBinary, Text, bindparam, cast, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Session

from shared.store.models import (
    DeliveryStatus,
    JobStatus,
    Operation,
    Webhook,
    WebhookDelivery,
    WebhookEvent,
)

EVENTS = {
    JobStatus.SUCCEEDED: WebhookEvent.SUCCEEDED,
    JobStatus.FAILED: WebhookEvent.FAILED,
    JobStatus.CANCELED: WebhookEvent.CANCELED,
}

# The routes of the job resource and its result, as the web serves them (api/views/jobs.py).
JOB_PATH = "/api/v2/jobs/{id}"
RESULT_PATH = "/api/v2/jobs/{id}/result"


def payload(
    job_id: uuid.UUID,
    *,
    operation: Operation | str,
    status: JobStatus,
    result_status: int | None,
    total: int,
    errors: int,
    at: dt.datetime,
) -> bytes:
    """The thin body every endpoint of the job's organization receives: what ended, and
    where the job and its result are. The same bytes on every attempt."""
    return orjson.dumps(
        {
            "type": EVENTS[status],
            "timestamp": at.isoformat(timespec="milliseconds"),
            "data": {
                "id": str(job_id),
                "type": "jobs",
                "attributes": {
                    "operation": str(operation),
                    "status": str(status),
                    "result_status": result_status,
                    "total": total,
                    "errors": errors,
                },
                "links": {
                    "self": JOB_PATH.format(id=job_id),
                    "result": None
                    if status == JobStatus.CANCELED
                    else RESULT_PATH.format(id=job_id),
                },
            },
        }
    )


# One delivery per enabled endpoint of the organization that wants the event, due at once;
# its parameters are job_event's. Built once: building it costs more than running it, on
# every job's end.
RECORD = (
    insert(WebhookDelivery)
    .from_select(
        ["webhook_id", "job_id", "event", "message_id", "payload", "next_attempt_at"],
        select(
            Webhook.id,
            bindparam("job_id", type_=UUID(as_uuid=True)),
            bindparam("event", type_=Text),
            # webhook-id: unique per delivery, the same on each of its attempts.
            literal("msg_", Text) + func.replace(cast(func.gen_random_uuid(), Text), "-", ""),
            bindparam("payload", type_=LargeBinary),
            func.now(),
        ).where(
            Webhook.organization_id == bindparam("organization"),
            Webhook.enabled,
            Webhook.events.contains(bindparam("events", type_=Webhook.events.type)),
        ),
    )
    .returning(WebhookDelivery.id)
)


def job_event(
    job_id: uuid.UUID,
    organization_id: int,
    *,
    operation: Operation | str,
    status: JobStatus,
    result_status: int | None,
    total: int,
    errors: int,
) -> dict[str, Any]:
    """What the end of this job tells its organization's endpoints: the parameters of
    RECORD."""
    event = EVENTS[status]
    body = payload(
        job_id,
        operation=operation,
        status=status,
        result_status=result_status,
        total=total,
        errors=errors,
        at=dt.datetime.now(dt.UTC),
    )
    return {
        "job_id": job_id,
        "organization": organization_id,
        "event": str(event),
        "events": [str(event)],
        "payload": body,
    }


def record_job_event(session: Session, event: Mapping[str, Any]) -> list[int]:
    """Write the deliveries of a job's end (`event`, from job_event), one per enabled
    endpoint of its organization that wants it, due at once; returns their ids, to publish
    after commit."""
    # Core, not the ORM: given parameters, an ORM insert would take them for rows to insert.
    return list(session.connection().execute(RECORD, event).scalars())


def claim_unpublished(session: Session, job_id: uuid.UUID) -> list[int]:
    """Stamp the job's deliveries that no message was sent for yet; returns their ids, to
    publish after commit. Whoever ends a job (or finds it ended, after a crash between the
    commit and the publish) calls this; the sweeper catches what a crash lost after it."""
    claimed = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.job_id == job_id,
            WebhookDelivery.published_at.is_(None),
            WebhookDelivery.status == DeliveryStatus.PENDING,
        )
        .values(published_at=func.now())
        .returning(WebhookDelivery.id)
    )
    return list(claimed.scalars())


# A message sent again by the sweeper may be lost too: sent once more after this long.
RESEND_AFTER = dt.timedelta(seconds=60)


def claim_overdue(session: Session, *, grace: dt.timedelta, limit: int) -> list[int]:
    """Stamp up to `limit` pending deliveries more than `grace` past due whose message was
    lost (a broker that forgot it, a process that died between a commit and its publish, a
    retry left to the sweeper); returns their ids, to publish after commit. A duplicate is
    harmless: the attempt's claim lets one through."""
    now = func.now()
    delivery = WebhookDelivery
    overdue = (
        select(delivery.id)
        .where(
            delivery.status == DeliveryStatus.PENDING,
            delivery.next_attempt_at <= now - grace,
            delivery.published_at.is_(None)
            | (delivery.published_at < delivery.next_attempt_at)
            | (delivery.published_at < now - RESEND_AFTER),
        )
        .order_by(delivery.next_attempt_at)
        .limit(limit)
        # Several sweepers may run at once: each delivery is claimed by one of them.
        .with_for_update(skip_locked=True)
    )
    ids = list(session.scalars(overdue))
    if ids:
        session.execute(update(delivery).where(delivery.id.in_(ids)).values(published_at=now))
    return ids
