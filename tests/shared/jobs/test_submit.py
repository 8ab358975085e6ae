"""Storing and finding jobs as the web does."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.domain.tokens import Principal
from shared.jobs.submit import find_job
from shared.store.models import Job
from tests.factories import create_resource, queue_job

MEMBER = Principal(person_id=7781, organization_id=2110, read_only=False)


def test_a_job_found_or_refreshed_loads_neither_its_batch_nor_its_result(
    session: Session,
) -> None:
    job = queue_job(session, MEMBER, "create", [create_resource()] * 3)
    session.execute(update(Job).where(Job.id == job.id).values(result_body=b"result"))
    session.expire_all()

    found = find_job(session, 2110, str(job.id))
    assert found is not None
    # A poll of a 100,000-entry job must not read its megabytes, once or every second.
    assert {"batch", "result_body"}.isdisjoint(found.__dict__)
    session.refresh(found)
    assert {"batch", "result_body"}.isdisjoint(found.__dict__)
    assert found.result_body == b"result"
    assert found.batch is not None and found.batch.startswith(b'{"data":')
