"""What both schemathesis runs aim at: the demo organization's resources, jobs in every
state the API distinguishes, and webhook endpoints with deliveries, so that real resources
and stored results are checked too."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, NamedTuple

from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from shared.domain.tokens import Principal
from shared.jobs.retention import purge_expired_jobs
from shared.jobs.runner import run_job
from shared.jobs.submit import cancel_job
from shared.store.models import Job, Webhook, WebhookDelivery
from tests.factories import queue_job

ADMIN = Principal(person_id=7783, organization_id=2110, read_only=False)
# Existing resources of organization 2110, by collection.
KNOWN_IDS = {
    "time_entries": ["223", "224", "232", "237", "238", "249", "250"],
    "people": ["7781", "7782", "7783", "7784"],
    "services": ["1213", "1214"],
    "tasks": ["302", "303"],
}
# GET /jobs/{id}/result of each of the jobs seed_jobs makes, in its order.
SEEDED_RESULTS = [201, 204, 404, 410, 409, 409]
# The one seeded job that never ends (no worker runs it): its event stream would stay open
# for its whole lifetime, so no run aims GET /jobs/{id}/events at it.
QUEUED = 4
EVENTS_PATH = "/api/v2/jobs/{job_id}/events"


def ended(job_ids: list[str]) -> list[str]:
    """The seeded jobs whose event stream ends at once, after its `finished` event."""
    return [job_id for index, job_id in enumerate(job_ids) if index != QUEUED]


class SeededWebhooks(NamedTuple):
    kept: list[str]
    # Aimed at by DELETE only, so that deleting leaves the others for the reads.
    doomed: list[str]


def _entry(note: str) -> dict[str, Any]:
    return {
        "type": "time_entries",
        "attributes": {"date": "2026-03-02", "time": 90, "note": note},
        "relationships": {
            "person": {"data": {"type": "people", "id": "7781"}},
            "service": {"data": {"type": "services", "id": "1213"}},
        },
    }


def seed_jobs(engine: Engine) -> list[str]:
    """One job in each state the API distinguishes, in a database holding the demo data;
    returns their ids."""
    with Session(engine, expire_on_commit=False) as session:
        created = queue_job(session, ADMIN, "create", [_entry("seeded"), _entry("seeded too")])
        deleted = queue_job(session, ADMIN, "delete", [{"type": "time_entries", "id": "231"}])
        failed = queue_job(session, ADMIN, "update", [{"type": "time_entries", "id": "999999"}])
        expired = queue_job(session, ADMIN, "create", [_entry("expired")])
        queued = queue_job(session, ADMIN, "approve", [{"type": "time_entries", "id": "237"}])
        canceled = queue_job(session, ADMIN, "unapprove", [{"type": "time_entries", "id": "249"}])
        assert cancel_job(session, canceled)
        session.commit()
    jobs = [created, deleted, failed, expired, queued, canceled]
    for job in (created, deleted, failed, expired):
        run_job(engine, job.id, max_runs=5)
    with Session(engine) as session:
        session.execute(
            update(Job)
            .where(Job.id == expired.id)
            .values(finished_at=Job.finished_at - dt.timedelta(days=30))
        )
        assert purge_expired_jobs(session, retention_days=7) == 1
        session.commit()
    return [str(job.id) for job in jobs]


def seed_webhooks(engine: Engine, job_ids: list[str]) -> SeededWebhooks:
    """Endpoints of the demo organization, each with deliveries in every state."""
    now = dt.datetime.now(dt.UTC)
    made: list[Webhook] = []
    with Session(engine, expire_on_commit=False) as session:
        for index in range(6):
            webhook = Webhook(
                organization_id=ADMIN.organization_id,
                url=f"https://hooks.example.com/{index}",
                events=["job.succeeded", "job.failed", "job.canceled"][: 1 + index % 3],
                enabled=index % 2 == 0,
                secret="whsec_" + "A" * 43 + "=",
            )
            session.add(webhook)
            made.append(webhook)
        session.flush()
        for webhook in made:
            session.add_all(
                [
                    WebhookDelivery(
                        webhook_id=webhook.id,
                        job_id=uuid.UUID(job_ids[0]),
                        event="job.succeeded",
                        message_id=f"msg_{uuid.uuid4().hex}",
                        payload=b"{}",
                        status="delivered",
                        attempts=1,
                        last_response_status=204,
                        delivered_at=now,
                    ),
                    WebhookDelivery(
                        webhook_id=webhook.id,
                        job_id=uuid.UUID(job_ids[2]),
                        event="job.failed",
                        message_id=f"msg_{uuid.uuid4().hex}",
                        payload=b"{}",
                        status="pending",
                        attempts=2,
                        last_error="connection refused",
                        next_attempt_at=now + dt.timedelta(minutes=5),
                    ),
                    WebhookDelivery(
                        webhook_id=webhook.id,
                        job_id=uuid.UUID(job_ids[5]),
                        event="job.canceled",
                        message_id=f"msg_{uuid.uuid4().hex}",
                        payload=b"{}",
                        status="failed",
                        attempts=10,
                        last_response_status=500,
                    ),
                ]
            )
        session.commit()
    ids = [str(webhook.id) for webhook in made]
    return SeededWebhooks(kept=ids[:3], doomed=ids[3:])
