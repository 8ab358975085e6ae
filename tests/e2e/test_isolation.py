"""Every endpoint, walked with another organization's token and this organization's ids."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from shared.store.models import Webhook
from tests.e2e.test_pipeline import create_doc, entry_count
from tests.jobclient import JobClient

pytestmark = pytest.mark.e2e

# What must never reach Elsewhere Ltd (2112) from Demo Agency (2110). Names as JSON strings:
# the OpenAPI document says "exclusiveMaximum".
SECRETS = ("Demo Agency", '"2110"', '"Max"', '"Member"', "first note", "max.member@example.com")
# A Demo Agency id for each kind of resource a route can name.
FOREIGN_IDS = {
    "time_entries": "223",
    "people": "7781",
    "services": "1213",
    "tasks": "302",
}


def assert_no_leak(response: Any) -> None:
    body = response.data.decode()
    for secret in SECRETS:
        assert secret not in body, (response.request.path, secret)


def get_routes(app: Flask) -> list[str]:
    return sorted(
        rule.rule
        for rule in app.url_map.iter_rules()
        if "GET" in (rule.methods or ()) and rule.rule.startswith("/api/v2/")
    )


def test_every_get_route_hides_another_organizations_data(
    e2e_app: Flask, e2e_client: FlaskClient, jobs: JobClient, e2e_auth: Any, e2e_db: Engine
) -> None:
    theirs = jobs.run("POST", "/api/v2/time_entries", create_doc(1, note="first note"), e2e_auth())
    job_id = theirs.job_url.rsplit("/", 1)[1]
    with Session(e2e_db) as session:
        hook = Webhook(
            organization_id=2110, url="https://demo-agency.example/first note", secret="whsec_x"
        )
        hook.events = ["job.succeeded"]
        session.add(hook)
        session.commit()
        ids = FOREIGN_IDS | {"jobs": job_id, "webhooks": str(hook.id)}
    mine = e2e_auth(8881)
    # Webhooks are for managers: Workflow Studio's (2111), asking for Demo Agency's.
    manager = e2e_auth(7792)
    walked = 0
    for rule in get_routes(e2e_app):
        kind = rule.split("/")[3]
        path = re.sub(r"<(?:\w+:)?\w+>", ids.get(kind, "1"), rule)
        response = e2e_client.get(path, headers=manager if kind == "webhooks" else mine)
        walked += 1
        if "<" in rule:
            assert response.status_code == 404, (path, response.status_code)
        else:
            assert response.status_code == 200, (path, response.status_code)
        assert_no_leak(response)
    assert walked >= 3
    # cancel: indistinguishable from a missing job
    response = e2e_client.delete(f"/api/v2/jobs/{job_id}", headers=mine)
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "ids"),
    [
        ("PATCH", "/api/v2/time_entries", [223, 224]),
        ("DELETE", "/api/v2/time_entries", [231]),
        ("PATCH", "/api/v2/time_entries/approve", [237]),
        ("PATCH", "/api/v2/time_entries/unapprove", [249]),
    ],
)
def test_bulk_operations_on_another_organizations_entries_are_404(
    jobs: JobClient, e2e_auth: Any, e2e_db: Engine, method: str, path: str, ids: list[int]
) -> None:
    body: dict[str, Any] = {"data": [{"type": "time_entries", "id": i} for i in ids]}
    if method == "PATCH" and path == "/api/v2/time_entries":
        for resource in body["data"]:
            resource["attributes"] = {"note": "taken over"}
    with Session(e2e_db) as session:
        # An approver of their own organization, so approval reaches the lookup of the ids.
        session.execute(text("UPDATE people SET can_approve = true WHERE id = 8881"))
        session.commit()
    before = entry_count(e2e_db)
    outcome = jobs.run(method, path, body, e2e_auth(8881))
    assert outcome.status == 404
    assert [e["source"]["pointer"] for e in outcome.document["errors"]] == [
        f"/data/{n}/id" for n in range(len(ids))
    ]
    assert_no_leak(outcome.result)
    assert entry_count(e2e_db) == before


def test_create_with_another_organizations_person_service_and_task_is_404(
    jobs: JobClient, e2e_auth: Any, e2e_db: Engine
) -> None:
    document = create_doc(1)
    document["data"][0]["relationships"]["task"] = {"data": {"type": "tasks", "id": "302"}}
    before = entry_count(e2e_db)
    outcome = jobs.run("POST", "/api/v2/time_entries", document, e2e_auth(8881))
    assert outcome.status == 404
    assert sorted(e["source"]["pointer"] for e in outcome.document["errors"]) == [
        "/data/0/relationships/person",
        "/data/0/relationships/service",
        "/data/0/relationships/task",
    ]
    assert_no_leak(outcome.result)
    assert entry_count(e2e_db) == before
