"""The bulk pipeline end to end: Flask front -> Redis -> a real Celery worker -> PostgreSQL."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jsonapi_client
import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from api.views import jobs as jobs_view
from api.views.jobs import ended_job
from shared.jobs.queue import PROCESS_JOB, create_celery
from shared.settings import Settings
from shared.store.models import Job, TimeEntry
from tests.e2e.conftest import WorkerProcess
from tests.jobclient import JobClient, eventually
from tests.spec_examples import examples

pytestmark = pytest.mark.e2e

# Who sends each spec example: the approve example with for_all_approvers needs approve-all.
SENDERS = {
    ("POST", "/api/v2/time_entries"): 7781,
    ("PATCH", "/api/v2/time_entries"): 7781,
    ("DELETE", "/api/v2/time_entries"): 7781,
    ("PATCH", "/api/v2/time_entries/approve"): 7793,
    ("PATCH", "/api/v2/time_entries/unapprove"): 7783,
}


def entry_count(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(TimeEntry)) or 0


def create_doc(n: int, **attributes: Any) -> dict[str, Any]:
    return {
        "data": [
            {
                "type": "time_entries",
                "attributes": {"date": "2026-02-03", "time": 30 + i % 90, "note": f"n{i}"}
                | attributes,
                "relationships": {
                    "person": {"data": {"type": "people", "id": "7781"}},
                    "service": {"data": {"type": "services", "id": "1213"}},
                },
            }
            for i in range(n)
        ]
    }


def test_spec_examples_replayed_verbatim(jobs: JobClient, e2e_auth: Any) -> None:
    for example in examples():
        sender = SENDERS[(example.method, example.path)]
        if example.request.get("for_all_approvers"):
            sender = 7783
        elif example.path.endswith("/approve"):
            sender = 7793  # 235 and 236 are in Workflow Studio
        headers = e2e_auth(sender)
        outcome = jobs.run(example.method, example.path, example.request, headers)
        assert outcome.status == example.status, outcome.result.data
        if example.response is None:
            assert outcome.result.data == b""
            continue
        got = outcome.document
        assert got["meta"] == {}
        assert len(got["data"]) == len(example.response["data"])
        for entry, expected in zip(got["data"], example.response["data"], strict=True):
            assert list(entry) == list(expected)
            assert list(entry["attributes"]) == list(expected["attributes"])
            assert list(entry["relationships"]) == list(expected["relationships"])
            assert entry["type"] == "time_entries"
            assert isinstance(entry["id"], str)
            assert entry["relationships"]["organization"]["data"] == {
                "type": "organizations",
                "id": headers["X-Organization-Id"],
            }
            assert entry["relationships"]["person"] == {"meta": {"included": False}}
            attributes, want = entry["attributes"], expected["attributes"]
            for key in ("time", "billable_time", "approved", "currency", "currency_default"):
                assert attributes[key] == want[key], key
            for key in ("cost", "cost_default", "cost_normalized", "work_cost_default"):
                assert attributes[key] == want[key], key
            assert attributes["approved_at"] is None or attributes["approved_at"].endswith(
                ".000+01:00"
            )
            if example.method == "PATCH" and example.path == "/api/v2/time_entries":
                assert attributes["note"] == want["note"]
        if example.method == "POST":
            assert [e["attributes"]["cost"] for e in got["data"]] == [4000, 4000]
            assert [e["attributes"]["cost_default"] for e in got["data"]] == [5000, 5000]


# The discard port: nothing answers there, so what a client library resolves with this base
# URL it found in the document itself.
API = "http://127.0.0.1:9/api/v2"


def test_include_lets_a_json_api_client_library_resolve_the_related_resources(
    jobs: JobClient, e2e_auth: Any
) -> None:
    headers = e2e_auth(7781)
    document = create_doc(2)
    document["data"][0]["relationships"]["task"] = {"data": {"type": "tasks", "id": "302"}}
    asked = jobs.run("POST", "/api/v2/time_entries?include=person,service,task", document, headers)
    plain = jobs.run("POST", "/api/v2/time_entries", document, headers)
    assert asked.status == plain.status == 201, asked.result.data

    first, second = jsonapi_client.Session(API).read(asked.document).resources
    assert [first.note, second.note] == ["n0", "n1"]
    # By key: as an attribute, the library would look for a member named first-name.
    assert (first.person["first_name"], first.person["last_name"]) == ("Max", "Member")
    assert (first.service.name, first.service.billable) == ("Design", True)
    assert first.task.title == "Wireframes"
    assert second.person is first.person and second.task is None

    # The spec's shape: relationships with meta only, which the library cannot resolve.
    unlinked = jsonapi_client.Session(API).read(plain.document).resources[0]
    with pytest.raises(NotImplementedError):
        _ = unlinked.person


def test_create_then_update_then_delete(jobs: JobClient, e2e_auth: Any, e2e_db: Engine) -> None:
    headers = e2e_auth(7781)
    before = entry_count(e2e_db)
    created = jobs.run("POST", "/api/v2/time_entries", create_doc(3), headers)
    assert created.status == 201
    ids = [e["id"] for e in created.document["data"]]
    assert [e["attributes"]["note"] for e in created.document["data"]] == ["n0", "n1", "n2"]
    assert entry_count(e2e_db) == before + 3

    update = {
        "data": [
            {"id": ids[0], "type": "time_entries", "attributes": {"time": 90}},
            {"id": int(ids[1]), "type": "time_entries", "attributes": {"note": "changed"}},
            {
                "id": ids[2],
                "type": "time_entries",
                "relationships": {"service": {"data": {"type": "services", "id": "1214"}}},
            },
        ]
    }
    updated = jobs.run("PATCH", "/api/v2/time_entries", update, headers)
    assert updated.status == 200, updated.result.data
    first, second, third = (e["attributes"] for e in updated.document["data"])
    assert [e["id"] for e in updated.document["data"]] == ids
    assert (first["time"], first["cost"], first["cost_default"]) == (90, 3000, 3750)
    assert second["note"] == "changed"
    assert (third["billable_time"], third["time"]) == (0, 32)

    deleted = jobs.run(
        "DELETE",
        "/api/v2/time_entries",
        {"data": [{"id": i, "type": "time_entries"} for i in ids]},
        headers,
    )
    assert deleted.status == 204
    assert deleted.result.data == b""
    assert entry_count(e2e_db) == before
    with Session(e2e_db) as session:
        for job in session.scalars(select(Job)):
            assert job.created_at <= job.started_at <= job.finished_at  # type: ignore[operator]


def test_one_bad_entry_among_100_changes_nothing(
    jobs: JobClient, e2e_auth: Any, e2e_db: Engine
) -> None:
    document = create_doc(100)
    document["data"][57]["relationships"]["service"]["data"]["id"] = "999999"
    before = entry_count(e2e_db)
    outcome = jobs.run("POST", "/api/v2/time_entries", document, e2e_auth(7781))
    assert outcome.status == 404
    errors = outcome.document["errors"]
    assert [e["source"]["pointer"] for e in errors] == ["/data/57/relationships/service"]
    assert errors[0]["status"] == "404" and errors[0]["title"] and errors[0]["detail"]
    assert entry_count(e2e_db) == before


def test_every_error_is_reported(jobs: JobClient, e2e_auth: Any, e2e_db: Engine) -> None:
    document = create_doc(4)
    document["data"][0]["relationships"]["person"]["data"]["id"] = "7784"  # no rate, not mine
    document["data"][2]["relationships"]["person"]["data"]["id"] = "7782"  # not mine
    outcome = jobs.run("POST", "/api/v2/time_entries", document, e2e_auth(7781))
    assert outcome.status == 400  # 422 and 403 mixed
    pointers = {(e["status"], e["source"]["pointer"]) for e in outcome.document["errors"]}
    assert pointers == {
        ("403", "/data/0/relationships/person"),
        ("422", "/data/0/relationships/person"),
        ("403", "/data/2/relationships/person"),
    }


def test_foreign_entry_fails_with_404_and_changes_nothing(
    jobs: JobClient, e2e_auth: Any, e2e_db: Engine
) -> None:
    with Session(e2e_db) as session:
        foreign = session.execute(
            text(
                "INSERT INTO time_entries (organization_id, person_id, service_id, date, time,"
                " currency, currency_default, currency_normalized)"
                " VALUES (2112, 8881, 2213, '2026-01-01', 60, 'EUR', 'USD', 'EUR') RETURNING id"
            )
        ).scalar_one()
        session.commit()
    document = {
        "data": [
            {"id": 223, "type": "time_entries", "attributes": {"note": "mine"}},
            {"id": foreign, "type": "time_entries", "attributes": {"note": "theirs"}},
        ]
    }
    outcome = jobs.run("PATCH", "/api/v2/time_entries", document, e2e_auth(7781))
    assert outcome.status == 404
    assert outcome.document["errors"][0]["source"]["pointer"] == "/data/1/id"
    assert str(foreign) not in outcome.document["errors"][0]["title"]
    with Session(e2e_db) as session:
        notes = session.execute(
            select(TimeEntry.note).where(TimeEntry.id.in_([223, foreign])).order_by(TimeEntry.id)
        ).scalars()
        assert list(notes) == ["one", None]


def test_editing_an_approved_entry_is_refused(
    jobs: JobClient, e2e_auth: Any, e2e_db: Engine
) -> None:
    # 249 is approved in the demo data.
    document = {"data": [{"id": 249, "type": "time_entries", "attributes": {"time": 1}}]}
    outcome = jobs.run("PATCH", "/api/v2/time_entries", document, e2e_auth(7781))
    assert outcome.status == 409
    assert outcome.document["errors"][0]["source"]["pointer"] == "/data/0/id"
    assert "unapprove first" in outcome.document["errors"][0]["detail"]
    deleted = jobs.run(
        "DELETE", "/api/v2/time_entries", {"data": [{"id": 249, "type": "time_entries"}]},
        e2e_auth(7781),
    )  # fmt: skip
    assert deleted.status == 409


def test_same_message_delivered_twice_applies_once(
    jobs: JobClient,
    e2e_auth: Any,
    e2e_db: Engine,
    e2e_settings: Settings,
    worker: WorkerProcess,
) -> None:
    headers = e2e_auth(7781)
    before = entry_count(e2e_db)
    accepted = jobs.submit("POST", "/api/v2/time_entries", create_doc(50), headers)
    job_id = accepted.headers["Location"].rsplit("/", 1)[1]
    celery = create_celery(e2e_settings)
    for _ in range(2):
        celery.send_task(PROCESS_JOB, args=[job_id])
    outcome = jobs.follow(accepted, headers)
    assert outcome.status == 201
    # The submit's own message and the two copies: each delivery logs what it did.
    eventually(lambda: len(worker.outcomes(job_id)) >= 3, what="three deliveries of the job")
    ran = worker.outcomes(job_id)
    assert ran.count("succeeded") == 1, ran
    assert len(ran) == 3 and set(ran) - {"succeeded"} <= {"skipped", "busy"}, ran
    assert entry_count(e2e_db) == before + 50
    with Session(e2e_db) as session:
        job = session.get_one(Job, uuid.UUID(job_id))
        assert job.status == "succeeded"
        assert job.attempts == 1


def test_same_idempotency_key_gives_one_job(jobs: JobClient, e2e_auth: Any, e2e_db: Engine) -> None:
    headers = e2e_auth(7781)
    key = {"Idempotency-Key": "batch-42"}
    first = jobs.submit("POST", "/api/v2/time_entries", create_doc(5), headers, key)
    second = jobs.submit("POST", "/api/v2/time_entries", create_doc(5), headers, key)
    assert first.status_code == second.status_code == 202
    assert first.headers["Location"] == second.headers["Location"]
    other = jobs.submit("POST", "/api/v2/time_entries", create_doc(6), headers, key)
    assert other.status_code == 422
    assert other.json is not None and other.json["errors"][0]["title"] == "Idempotency key reused"
    outcome = jobs.follow(first, headers)
    assert outcome.status == 201
    with Session(e2e_db) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_prefer_wait_answers_with_the_final_result(jobs: JobClient, e2e_auth: Any) -> None:
    response = jobs.submit(
        "POST", "/api/v2/time_entries", create_doc(2), e2e_auth(7781), {"Prefer": "wait=30"}
    )
    assert response.status_code == 201
    assert response.headers["Preference-Applied"] == "wait=30"
    assert len(response.json["data"]) == 2  # type: ignore[index]


@pytest.mark.parametrize(("entries", "carried"), [(2, True), (200, False)])
def test_a_small_result_comes_with_the_job_s_end_and_a_larger_one_is_read_back(
    jobs: JobClient,
    e2e_auth: Any,
    e2e_client: Any,
    monkeypatch: pytest.MonkeyPatch,
    entries: int,
    carried: bool,
) -> None:
    told: list[Any] = []

    def counted(job: Any, ended: Any) -> Any:
        told.append(ended)
        return ended_job(job, ended)

    monkeypatch.setattr(jobs_view, "ended_job", counted)
    headers = e2e_auth(7781)
    response = jobs.submit(
        "POST", "/api/v2/time_entries", create_doc(entries), headers, {"Prefer": "wait=30"}
    )
    assert response.status_code == 201
    assert len(told) == (1 if carried else 0)
    # The same answer as the stored one, whichever way it came.
    stored = e2e_client.get(response.headers["Content-Location"], headers=headers)
    assert stored.status_code == 201
    assert response.json == stored.json


def test_polling_with_prefer_wait_redirects_once_finished(
    jobs: JobClient, e2e_auth: Any, e2e_client: Any
) -> None:
    headers = e2e_auth(7781)
    accepted = jobs.submit("POST", "/api/v2/time_entries", create_doc(3), headers)
    polled = e2e_client.get(accepted.headers["Location"], headers=headers | {"Prefer": "wait=30"})
    assert polled.status_code == 303
    assert polled.headers["Location"].endswith("/result")


def test_result_is_served_gzip_to_clients_that_accept_it(
    jobs: JobClient, e2e_auth: Any, e2e_client: Any
) -> None:
    import gzip

    headers = e2e_auth(7781)
    outcome = jobs.run("POST", "/api/v2/time_entries", create_doc(50), headers)
    location = outcome.result.request.path
    zipped = e2e_client.get(location, headers=headers | {"Accept-Encoding": "gzip, br"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.data) == outcome.result.data
    assert len(zipped.data) * 5 < len(outcome.result.data)
    refused = e2e_client.get(location, headers=headers | {"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers
    assert refused.data == outcome.result.data


def worker_peak_rss(worker: WorkerProcess) -> int:
    """Peak resident memory (bytes) of the biggest process in the worker's tree."""
    import psutil

    assert worker.process is not None
    root = psutil.Process(worker.process.pid)
    peaks = []
    for process in [root, *root.children(recursive=True)]:
        with open(f"/proc/{process.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) * 1024)
    return max(peaks)


def test_processed_moves_during_a_long_job(jobs: JobClient, e2e_auth: Any, e2e_client: Any) -> None:
    headers = e2e_auth(7781)
    accepted = jobs.submit("POST", "/api/v2/time_entries", create_doc(10_000), headers)
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        polled = e2e_client.get(accepted.headers["Location"], headers=headers)
        if polled.status_code == 303:
            break
        seen.add(polled.json["data"]["attributes"]["processed"])
        time.sleep(0.005)
    assert polled.status_code == 303
    assert {n for n in seen if 0 < n < 10_000}, sorted(seen)


def test_ten_thousand_entries(
    jobs: JobClient, e2e_auth: Any, e2e_db: Engine, worker: WorkerProcess
) -> None:
    headers = e2e_auth(7781)
    before = entry_count(e2e_db)
    started = time.perf_counter()
    outcome = jobs.run("POST", "/api/v2/time_entries", create_doc(10_000), headers)
    elapsed = time.perf_counter() - started
    assert outcome.status == 201
    assert len(outcome.document["data"]) == 10_000
    assert entry_count(e2e_db) == before + 10_000
    peak = worker_peak_rss(worker)
    print(
        f"\n10,000-entry create: {elapsed:.2f}s from submit to result, {outcome.polls} polls,"
        f" worker peak RSS {peak / 2**20:.0f} MiB"
    )
    assert peak < 2**30


def test_job_accepted_while_the_broker_is_down_is_recovered_by_the_sweeper(
    e2e_settings: Settings, e2e_db: Engine, e2e_auth: Any, worker: WorkerProcess
) -> None:
    import dataclasses

    from api import create_app
    from shared.jobs.sweeper import recover_jobs
    from shared.store.engine import make_session_factory
    from worker.app import create_worker_app

    down = dataclasses.replace(e2e_settings, broker_url="redis://127.0.0.1:9/0")
    client = create_app(down, sessions=make_session_factory(e2e_db)).test_client()
    headers = e2e_auth(7781)
    accepted = JobClient(client).submit("POST", "/api/v2/time_entries", create_doc(3), headers)
    assert accepted.status_code == 202
    job_id = accepted.json["data"]["id"]  # type: ignore[index]
    with Session(e2e_db) as session:
        session.execute(
            text("UPDATE jobs SET created_at = now() - interval '1 hour' WHERE id = :id"),
            {"id": job_id},
        )
        session.commit()
    assert recover_jobs(e2e_db, e2e_settings, create_worker_app(e2e_settings)) == 1
    assert recover_jobs(e2e_db, e2e_settings, create_worker_app(e2e_settings)) == 0
    live = create_app(e2e_settings, sessions=make_session_factory(e2e_db)).test_client()
    outcome = JobClient(live).follow(accepted, headers)
    assert outcome.status == 201
