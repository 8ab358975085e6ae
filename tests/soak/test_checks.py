"""The soak can fail: its end checks and its clients catch each kind of wrong outcome.

No servers: the checks get made-up database contents, and a client gets made-up answers.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from requests.structures import CaseInsensitiveDict

from tests.soak.clients import Client, Counters, Deadline, JobRecord
from tests.soak.model import PERSONAS, Entry, Owned, tag_of, update_of
from tests.soak.report import Checks, JobRow, Report, end_checks

JOB = "0b5c9b1e-7d0e-4a4e-9a8e-3f5d2c1b0a99"
OTHER_JOB = "6f1d2e3c-4b5a-4968-8776-554433221100"


def entry(entry_id: int, note: str, **changes: Any) -> Entry:
    values: dict[str, Any] = {
        "id": entry_id,
        "organization_id": 2110,
        "person_id": 7782,
        "service_id": 1213,
        "task_id": 302,
        "date": "2025-03-01",
        "time": 60,
        "note": note,
        "approved": False,
    }
    return Entry(**(values | changes))


def record(serial: int = 1, **changes: Any) -> JobRecord:
    values: dict[str, Any] = {
        "client": "c1",
        "serial": serial,
        "operation": "create",
        "key": f"soak-1-c1-{serial}",
        "valid": True,
        "size": 2,
        "why_invalid": "",
        "job_id": JOB,
        "result_status": 201,
    }
    return JobRecord(**(values | changes))


def job(**changes: Any) -> JobRow:
    values: dict[str, Any] = {
        "id": JOB,
        "organization_id": 2110,
        "operation": "create",
        "status": "succeeded",
        "key": "soak-1-c1-1",
        "result_status": 201,
        "attempts": 1,
    }
    return JobRow(**(values | changes))


MODEL = {1001: entry(1001, "soak:c1:j1:e0"), 1002: entry(1002, "soak:c1:j1:e1")}


def report(checks: Checks, **changes: Any) -> Report:
    values: dict[str, Any] = {
        "seed": 1,
        "broker": "redis",
        "seconds": 60,
        "records": [record()],
        "violations": [],
        "counters": Counters(),
        "health": Counters(),
        "faults": [],
        "exits": [],
        "checks": checks,
        "crashes": [],
        "entries_at_end": 2,
        "logs": Path("logs"),
        "started": 0.0,
    }
    return Report(**(values | changes))


def test_the_model_itself_passes() -> None:
    found = {i: e.copy() for i, e in MODEL.items()}
    checks = end_checks(MODEL, found, [record()], [job()])
    assert checks.failures() == []
    assert report(checks).ok


def test_a_lost_entry_fails_the_run() -> None:
    found = {1001: MODEL[1001].copy()}
    failures = end_checks(MODEL, found, [record()], [job()]).failures()
    assert any(f.startswith("lost: 1 entries of succeeded jobs") for f in failures)
    assert any(f.startswith("lost: 1 entries missing with tag soak:c1:j1") for f in failures)


def test_a_create_applied_twice_fails_the_run() -> None:
    found = {i: e.copy() for i, e in MODEL.items()}
    found[1003] = entry(1003, "soak:c1:j1:e0")
    found[1004] = entry(1004, "soak:c1:j1:e1")
    failures = end_checks(MODEL, found, [record()], [job()]).failures()
    assert failures == ["doubled: 2 entries too many with tag soak:c1:j1"]


def test_what_a_failed_job_left_fails_the_run() -> None:
    failed = record(2, operation="update", result_status=404, job_id=OTHER_JOB)
    found = {i: e.copy() for i, e in MODEL.items()}
    found[1001].note = "soak:c1:j1:e0:u2"
    jobs = [job(), job(id=OTHER_JOB, key=failed.key, status="failed", result_status=404)]
    failures = end_checks(MODEL, found, [record(), failed], jobs).failures()
    assert any("diverged: entry 1001: note" in f for f in failures)
    assert any("trace: entry 1001 carries soak:c1:j2 of failed update" in f for f in failures)


def test_entries_of_a_create_that_failed_are_traces_not_doubles() -> None:
    failed = record(2, result_status=422, job_id=OTHER_JOB)
    found = {i: e.copy() for i, e in MODEL.items()}
    found[1003] = entry(1003, "soak:c1:j2:e0")
    jobs = [job(), job(id=OTHER_JOB, key=failed.key, status="failed", result_status=422)]
    failures = end_checks(MODEL, found, [record(), failed], jobs).failures()
    assert failures == [
        "stray: 1 entries no succeeded job made: 1003",
        f"trace: entry 1003 carries soak:c1:j2 of failed create job {OTHER_JOB} (422)",
    ]


def test_a_changed_approval_status_fails_the_run() -> None:
    model = {1001: entry(1001, "soak:c1:j1:e0", statuses={9902: "pending", 9901: "pending"})}
    found = {1001: model[1001].copy()}
    found[1001].statuses[9901] = "approved"
    failures = end_checks(model, found, [record(size=1)], [job()]).failures()
    assert len(failures) == 1 and "statuses" in failures[0]


def test_an_unfinished_job_fails_the_run() -> None:
    found = {i: e.copy() for i, e in MODEL.items()}
    checks = end_checks(MODEL, found, [record()], [job(status="running", result_status=None)])
    assert f"unfinished: job {JOB} (create) is still running" in checks.failures()


def test_a_second_job_for_a_key_fails_the_run() -> None:
    found = {i: e.copy() for i, e in MODEL.items()}
    failures = end_checks(MODEL, found, [record()], [job(id=OTHER_JOB)]).failures()
    assert failures == [
        f"second job: the client was told of job {JOB} for key soak-1-c1-1, which holds {OTHER_JOB}"
    ]


def test_two_jobs_for_one_key_fail_the_run() -> None:
    found = {i: e.copy() for i, e in MODEL.items()}
    jobs = [job(), job(id=OTHER_JOB)]
    assert end_checks(MODEL, found, [record()], jobs).failures() == [
        f"second job: Idempotency-Key soak-1-c1-1 has 2 jobs: {JOB}, {OTHER_JOB}"
    ]


def test_a_job_nobody_asked_for_fails_the_run() -> None:
    found = {i: e.copy() for i, e in MODEL.items()}
    jobs = [job(), job(id=OTHER_JOB, key=None)]
    assert end_checks(MODEL, found, [record()], jobs).failures() == [
        f"orphan: job {OTHER_JOB} has a key no client sent (None)"
    ]


def test_a_job_stored_otherwise_than_answered_fails_the_run() -> None:
    found = {i: e.copy() for i, e in MODEL.items()}
    jobs = [job(status="failed", result_status=500)]
    failures = end_checks(MODEL, found, [record()], jobs).failures()
    assert failures == [f"state: job {JOB} is failed (500) but its client was answered 201"]


def test_notes_carry_the_creating_and_updating_jobs() -> None:
    assert tag_of("soak:c4:j17:e3") == "soak:c4:j17"
    assert tag_of("soak:c4:j17:e3:u20") == "soak:c4:j17"
    assert update_of("soak:c4:j17:e3:u20") == "soak:c4:j20"
    assert tag_of("one") is None and update_of("soak:c4:j17:e3") is None


# --------------------------------------------------------------------- the clients


def answer(status: int, body: Any = None, **headers: str) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = b"" if body is None else orjson.dumps(body)
    response.headers = CaseInsensitiveDict(headers)
    return response


ACCEPTED = {"data": {"id": JOB, "type": "jobs", "attributes": {"status": "queued"}}}
RESULT = f"/api/v2/jobs/{JOB}/result"


def quiet_client() -> Client:
    made = Client(
        1, PERSONAS[0], "tb_x", "http://soak.invalid", 1, threading.Event(), Deadline(), print
    )
    made.say = lambda _: None
    made.sleep = lambda _: None  # Retry-After and backoff: no time passes in these tests
    return made


@pytest.fixture
def client() -> Iterator[Client]:
    made = quiet_client()
    yield made
    made.http.close()


def answering(client: Client, answers: list[requests.Response | None]) -> list[dict[str, Any]]:
    """Make the client's requests get these answers, in order; returns what it sent."""
    sent: list[dict[str, Any]] = []

    def send(method: str, path: str, request_id: str, headers: dict[str, str], **kw: Any) -> Any:
        sent.append({"method": method, "path": path, "headers": headers} | kw)
        response = answers.pop(0)
        if response is not None:
            client.note(response, method, path, request_id, kw.get("stored_result", False))
        return response

    client.send = send  # type: ignore[method-assign]
    return sent


def create_result(plan_body: bytes, first_id: int) -> dict[str, Any]:
    resources = orjson.loads(plan_body)["data"]
    return {
        "data": [
            {"id": str(first_id + n), "type": "time_entries", "attributes": r["attributes"]}
            for n, r in enumerate(resources)
        ]
    }


def test_a_retried_submission_keeps_its_key_and_its_job(client: Client) -> None:
    plan = client.owned.next_plan(1)
    assert plan.operation == "create"
    sent = answering(
        client,
        [
            None,  # the connection broke: the server may or may not have stored the job
            answer(503, {"errors": []}, **{"Retry-After": "5"}),
            answer(202, ACCEPTED),
            answer(303, Location=RESULT),
            answer(201, create_result(plan.body, 5000)),
        ],
    )
    client.execute(plan)
    keys = {s["headers"]["Idempotency-Key"] for s in sent[:3]}
    assert keys == {"soak-1-c1-1"} and [s["data"] for s in sent[:3]] == [plan.body] * 3
    assert client.violations == []
    assert client.counters.retries == 2 and client.records[0].succeeded
    assert sorted(client.owned.entries) == list(range(5000, 5000 + plan.size))


def test_a_500_and_a_503_without_retry_after_are_violations(client: Client) -> None:
    plan = client.owned.next_plan(1)
    answering(
        client,
        [
            answer(500, {"errors": [{"status": "500", "title": "Internal server error"}]}),
            answer(503, {"errors": []}),
            answer(202, ACCEPTED),
            answer(303, Location=RESULT),
            answer(201, create_result(plan.body, 5000)),
        ],
    )
    client.execute(plan)
    assert [v.kind for v in client.violations] == ["5xx", "5xx"]


def test_a_job_that_ends_in_a_500_is_a_violation_and_changes_nothing(client: Client) -> None:
    plan = client.owned.next_plan(1)
    stored = {"errors": [{"status": "500", "title": "Job abandoned", "detail": "given up"}]}
    answering(client, [answer(202, ACCEPTED), answer(303, Location=RESULT), answer(500, stored)])
    client.execute(plan)
    assert [v.kind for v in client.violations] == ["job failed"]
    assert client.owned.entries == {} and client.records[0].failed


def test_a_failed_request_for_the_result_is_retried_not_taken_for_it(client: Client) -> None:
    plan = client.owned.next_plan(1)
    html = answer(500)
    html._content = b"<html><title>Internal Server Error</title></html>"
    answering(
        client,
        [
            answer(202, ACCEPTED),
            answer(303, Location=RESULT),
            html,  # gunicorn's page: the request failed, the job's result is still there
            answer(201, create_result(plan.body, 5000)),
        ],
    )
    client.execute(plan)
    assert [v.kind for v in client.violations] == ["5xx"]
    assert client.records[0].succeeded and len(client.owned.entries) == plan.size


def test_a_result_given_at_once_within_the_wait_is_the_final_answer(client: Client) -> None:
    plan = client.owned.next_plan(1)
    record = JobRecord("c1", 1, "create", "soak-1-c1-1", True, plan.size, "")
    waited = {"Preference-Applied": "wait=5", "Content-Location": RESULT}
    abandoned = {"errors": [{"status": "500", "title": "Job abandoned", "detail": "given up"}]}
    answering(client, [answer(500, abandoned, **waited)])
    final = client.submit(plan, record, wait=True)
    assert final is not None and record.job_id == JOB
    client.conclude(plan, record, final)
    assert [v.kind for v in client.violations] == ["job failed"]
    answering(client, [answer(201, create_result(plan.body, 7000), **waited)])
    record = JobRecord("c1", 1, "create", "soak-1-c1-1", True, plan.size, "")
    final = client.submit(plan, record, wait=True)
    assert final is not None
    client.conclude(plan, record, final)
    assert record.succeeded and len(client.owned.entries) == plan.size


def test_a_valid_batch_that_fails_is_a_violation(client: Client) -> None:
    plan = client.owned.next_plan(1)
    refused = {"errors": [{"status": "404", "title": "Not found", "detail": "no such service"}]}
    answering(client, [answer(202, ACCEPTED), answer(303, Location=RESULT), answer(404, refused)])
    client.execute(plan)
    assert [v.kind for v in client.violations] == ["valid job failed"]


def test_an_invalid_batch_that_succeeds_is_a_violation() -> None:
    owned = Owned(PERSONAS[0], "c1", random.Random(3))
    owned.entries = {1001: MODEL[1001].copy()}
    plan = owned._update(2, True)
    assert not plan.valid and "another organization" in plan.why_invalid
    made = quiet_client()
    record = JobRecord("c1", 2, "update", "k", False, 1, plan.why_invalid, job_id=JOB)
    made.conclude(plan, record, answer(200, {"data": [{"id": "1001"}, {"id": "235"}]}))
    made.http.close()
    assert [v.kind for v in made.violations] == ["invalid job succeeded"]
    assert made.owned.entries == {}


# ----------------------------------------------------------------------- the model


def sol_owning(*ids: int) -> Owned:
    owned = Owned(PERSONAS[4], "c5", random.Random(5))
    for entry_id in ids:
        owned.entries[entry_id] = entry(
            entry_id,
            f"soak:c5:j1:e{entry_id}",
            organization_id=2120,
            statuses={9902: "pending", 9901: "pending"},
        )
    return owned


def approve_result(ids: list[int]) -> dict[str, Any]:
    return {"data": [{"id": str(i), "type": "time_entries"} for i in ids]}


def test_under_the_workflow_one_approver_of_two_leaves_the_entry_unapproved() -> None:
    owned = sol_owning(1)
    while True:
        plan = owned._approve(1, False)
        if b"for_all_approvers" not in plan.body:
            break
    plan.apply(approve_result([1]))
    assert owned.entries[1].statuses == {9902: "pending", 9901: "approved"}
    assert not owned.entries[1].approved
    while b"for_all_approvers" not in (plan := owned._approve(2, False)).body:
        pass
    plan.apply(approve_result([1]))
    assert owned.entries[1].approved and set(owned.entries[1].statuses.values()) == {"approved"}
    plan = owned._unapprove(3, False)
    plan.apply(approve_result([1]))
    assert owned.entries[1].statuses == {9902: "pending", 9901: "pending"}
    assert not owned.entries[1].approved


def test_approved_entries_are_neither_updated_nor_deleted() -> None:
    owned = sol_owning(1, 2)
    owned.entries[1].approved = True
    for serial in range(30):
        plan = owned._update(serial, False)
        assert b'"id":"1"' not in plan.body
        plan = owned._delete(serial, False)
        assert b'"id":"1"' not in plan.body
