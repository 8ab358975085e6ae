"""Approve and unapprove through the real pipeline."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from shared.store.models import ApprovalStatus, TimeEntry
from tests.e2e.test_pipeline import create_doc
from tests.jobclient import JobClient

pytestmark = pytest.mark.e2e


def ids_of(outcome: Any) -> list[str]:
    return [entry["id"] for entry in outcome.document["data"]]


def refs(ids: list[str]) -> dict[str, Any]:
    return {"data": [{"type": "time_entries", "id": i} for i in ids]}


def test_concurrent_overlapping_approve_jobs_both_finish(
    jobs: JobClient, e2e_auth: Any, e2e_db: Engine
) -> None:
    created = jobs.run("POST", "/api/v2/time_entries", create_doc(400), e2e_auth(7781))
    ids = ids_of(created)
    manager, admin = e2e_auth(7782), e2e_auth(7783)
    first = jobs.submit("PATCH", "/api/v2/time_entries/approve", refs(ids[:300]), manager)
    # The second names the overlap in the opposite order: locks are taken in id order anyway.
    second = jobs.submit("PATCH", "/api/v2/time_entries/approve", refs(ids[100:][::-1]), admin)
    outcomes = [jobs.follow(first, manager), jobs.follow(second, admin)]
    assert [o.status for o in outcomes] == [200, 200]
    with Session(e2e_db) as session:
        approved = session.scalars(
            select(TimeEntry.approved).where(TimeEntry.id.in_([int(i) for i in ids]))
        ).all()
    assert len(approved) == 400 and all(approved)


def test_approve_update_unapprove_update(jobs: JobClient, e2e_auth: Any) -> None:
    member, manager = e2e_auth(7781), e2e_auth(7782)
    ids = ids_of(jobs.run("POST", "/api/v2/time_entries", create_doc(2), member))
    approved = jobs.run("PATCH", "/api/v2/time_entries/approve", refs(ids), manager)
    assert approved.status == 200
    assert all(e["attributes"]["approved"] for e in approved.document["data"])
    edit = {"data": [{"type": "time_entries", "id": ids[0], "attributes": {"note": "late"}}]}
    refused = jobs.run("PATCH", "/api/v2/time_entries", edit, member)
    assert refused.status == 409
    unapproved = jobs.run("PATCH", "/api/v2/time_entries/unapprove", refs(ids), manager)
    assert [e["attributes"]["approved_at"] for e in unapproved.document["data"]] == [None, None]
    assert jobs.run("PATCH", "/api/v2/time_entries", edit, member).status == 200


def test_approve_without_permission_is_403(jobs: JobClient, e2e_auth: Any) -> None:
    member = e2e_auth(7781)
    ids = ids_of(jobs.run("POST", "/api/v2/time_entries", create_doc(1), member))
    outcome = jobs.run("PATCH", "/api/v2/time_entries/approve", refs(ids), member)
    assert outcome.status == 403
    assert outcome.document["errors"][0]["title"] == "Forbidden"


def test_workflow_create_approve_in_turn_and_for_all(
    jobs: JobClient, e2e_auth: Any, e2e_db: Engine
) -> None:
    will, wes, wanda = e2e_auth(7791), e2e_auth(7792), e2e_auth(7793)
    document = {
        "data": [
            {
                "type": "time_entries",
                "attributes": {"date": "2026-04-01", "time": 60},
                "relationships": {
                    "person": {"data": {"type": "people", "id": "7791"}},
                    "service": {"data": {"type": "services", "id": "1223"}},
                },
            }
        ]
        * 2
    }
    first_id, second_id = ids_of(jobs.run("POST", "/api/v2/time_entries", document, will))
    with Session(e2e_db) as session:
        pending = session.scalars(
            select(ApprovalStatus.approver_id)
            .where(ApprovalStatus.time_entry_id == int(first_id))
            .order_by(ApprovalStatus.approver_id)
        ).all()
    assert pending == [7792, 7793]
    after_wes = jobs.run("PATCH", "/api/v2/time_entries/approve", refs([first_id]), wes)
    assert after_wes.document["data"][0]["attributes"]["approved"] is False
    after_wanda = jobs.run("PATCH", "/api/v2/time_entries/approve", refs([first_id]), wanda)
    assert after_wanda.document["data"][0]["attributes"]["approved"] is True
    refused = jobs.run(
        "PATCH", "/api/v2/time_entries/approve?for_all_approvers=true", refs([second_id]), wes
    )
    assert refused.status == 403
    forced = jobs.run(
        "PATCH", "/api/v2/time_entries/approve?for_all_approvers=true", refs([second_id]), wanda
    )
    assert forced.document["data"][0]["attributes"]["approved"] is True
