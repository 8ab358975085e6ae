"""What both schemathesis runs aim at: the demo organization's resources, and jobs in every
state the API distinguishes, so that real resources and stored results are checked too."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from shared.domain.tokens import Principal
from shared.jobs.retention import purge_expired_jobs
from shared.jobs.runner import run_job
from shared.jobs.submit import cancel_job
from shared.store.models import Job
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
