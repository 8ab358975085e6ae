"""Submissions: negotiation, validation with pointers, job creation, publish after commit."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from shared.jobs import submit
from shared.settings import Settings
from shared.store.engine import make_session_factory
from shared.store.models import Job, Operation
from tests.applying import decoded_items
from tests.checked_client import CheckedClient
from tests.conftest import BULK, token_for
from tests.factories import create_resource as entry


def post(client: FlaskClient, headers: dict[str, str], body: Any, **extra: str) -> Any:
    raw = body if isinstance(body, bytes) else None
    return client.post(
        "/api/v2/time_entries",
        data=raw,
        json=None if raw is not None else body,
        headers={"Content-Type": BULK} | headers | extra,
    )


def jobs_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Job)) or 0


def pointers(response: Any) -> list[str]:
    return [e["source"]["pointer"] for e in response.json["errors"]]


def test_accepted_submission_is_a_job(
    client: FlaskClient, auth: Any, session: Session, published: list[str]
) -> None:
    response = post(client, auth(), {"data": [entry(), entry(note="b")]})
    assert response.status_code == 202
    job = response.json["data"]
    assert job["type"] == "jobs"
    assert job["attributes"]["status"] == "queued"
    assert job["attributes"]["operation"] == "create"
    assert job["attributes"]["total"] == 2
    assert job["attributes"]["processed"] == 0
    location = f"/api/v2/jobs/{job['id']}"
    assert response.headers["Location"] == location
    assert response.headers["Content-Location"] == location
    assert int(response.headers["Retry-After"]) >= 1
    assert published == [job["id"]]
    stored = session.get_one(Job, uuid.UUID(job["id"]))
    assert stored.batch is not None
    assert decoded_items(Operation.CREATE, stored.batch) == [
        {"date": "2026-01-02", "time": 60, "person_id": 7781, "service_id": 1213},
        {"date": "2026-01-02", "time": 60, "note": "b", "person_id": 7781, "service_id": 1213},
    ]
    polled = client.get(location, headers=auth())
    assert polled.status_code == 200
    assert polled.json["data"]["id"] == job["id"]
    assert "Retry-After" in polled.headers
    early = client.get(location + "/result", headers=auth())
    assert early.status_code == 409
    assert early.json["errors"][0]["title"] == "Job not finished"


def test_rolled_back_request_publishes_nothing(
    settings: Settings, sessions: sessionmaker[Session], auth: Any, session: Session
) -> None:
    published: list[str] = []

    class FailingCommit(Session):
        def commit(self) -> None:
            raise RuntimeError("database went away at commit")

    failing = sessionmaker(
        bind=sessions.kw["bind"], class_=FailingCommit, join_transaction_mode="create_savepoint"
    )
    app = create_app(settings, sessions=failing, publish=published)
    before = jobs_count(session)
    response = post(app.test_client(), auth(), {"data": [entry()]})
    assert response.status_code == 500
    assert published == []
    assert jobs_count(session) == before


def test_delete_approve_and_unapprove_routes(client: FlaskClient, auth: Any) -> None:
    body = {"data": [{"type": "time_entries", "id": "223"}]}
    headers = auth(7783) | {"Content-Type": BULK}
    for method, path, operation in (
        ("DELETE", "/api/v2/time_entries", "delete"),
        ("PATCH", "/api/v2/time_entries/approve", "approve"),
        ("PATCH", "/api/v2/time_entries/unapprove", "unapprove"),
    ):
        response = client.open(path, method=method, json=body, headers=headers)
        assert response.status_code == 202, response.json
        assert response.json["data"]["attributes"]["operation"] == operation


def test_for_all_approvers_from_body_or_query(
    client: FlaskClient, auth: Any, session: Session
) -> None:
    headers = auth(7783) | {"Content-Type": BULK}
    ids = []
    for path, body in (
        ("/api/v2/time_entries/approve", {"for_all_approvers": True, "data": [{"type": "time_entries", "id": 1}]}),
        ("/api/v2/time_entries/approve?for_all_approvers=true", {"data": [{"type": "time_entries", "id": 1}]}),
        ("/api/v2/time_entries/approve", {"data": [{"type": "time_entries", "id": 1}]}),
    ):  # fmt: skip
        response = client.patch(path, json=body, headers=headers)
        assert response.status_code == 202
        ids.append(response.json["data"]["id"])
    options = [session.get_one(Job, uuid.UUID(i)).options for i in ids]
    assert options == [
        {"for_all_approvers": True},
        {"for_all_approvers": True},
        {"for_all_approvers": False},
    ]
    # The spellings the OpenAPI document lists, exactly.
    for value in ("maybe", "TRUE", "yes"):
        bad = client.patch(
            f"/api/v2/time_entries/approve?for_all_approvers={value}",
            json={"data": [{"type": "time_entries", "id": 1}]},
            headers=headers,
        )
        assert bad.status_code == 400
        assert bad.json["errors"][0]["source"] == {"parameter": "for_all_approvers"}


def test_whole_numbers_are_taken_in_either_spelling(
    client: FlaskClient, auth: Any, session: Session
) -> None:
    """JSON Schema, the OpenAPI document's language, calls 7781.0 an integer: so does the app,
    on the fast path and in the full check that reports every problem."""
    whole = entry(time=60.0) | {
        "relationships": {
            "person": {"data": {"type": "people", "id": 7781.0}},
            "service": {"data": {"type": "services", "id": 1213.0}},
        }
    }
    accepted = post(client, auth(), {"data": [whole]})
    assert accepted.status_code == 202, accepted.json
    refused = post(client, auth(), {"data": [whole, entry(time=60.5)]})
    assert refused.status_code == 422
    assert [e["source"]["pointer"] for e in refused.json["errors"]] == ["/data/1/attributes/time"]


@pytest.mark.parametrize(
    ("key", "status"),
    [("batch 42", 202), ("k" * 255, 202), ("k" * 256, 400), ("clé", 400), ("a\tb", 400)],
)
def test_idempotency_keys_are_visible_ascii(
    client: FlaskClient, auth: Any, key: str, status: int
) -> None:
    response = client.post(
        "/api/v2/time_entries",
        json={"data": [entry()]},
        headers=auth() | {"Content-Type": BULK, "Idempotency-Key": key},
    )
    assert response.status_code == status, response.json


@pytest.mark.parametrize(
    ("content_type", "accept", "status"),
    [
        ("application/json", None, 415),
        ("application/vnd.api+json", None, 415),
        ("text/plain", None, 415),
        (BULK, "text/html", 406),
        (BULK, "application/json", 406),
        (BULK, "application/vnd.api+json; q=0", 406),
        (BULK, "*/*", 202),
        (BULK, "application/vnd.api+json", 202),
        (BULK, 'application/vnd.api+json; ext="bulk"', 202),
        ('application/vnd.api+json; ext="bulk"', None, 202),
    ],
)
def test_negotiation(
    client: FlaskClient,
    auth: Any,
    session: Session,
    content_type: str,
    accept: str | None,
    status: int,
) -> None:
    headers = auth() | {"Content-Type": content_type}
    if accept is not None:
        headers["Accept"] = accept
    before = jobs_count(session)
    response = client.post("/api/v2/time_entries", json={"data": [entry()]}, headers=headers)
    assert response.status_code == status
    assert response.content_type == "application/vnd.api+json; charset=utf-8"
    assert jobs_count(session) == before + (1 if status == 202 else 0)


def test_unicode_notes_are_kept(client: FlaskClient, auth: Any, session: Session) -> None:
    note = "Zeit \u00fcber \u65f6\u95f4 \U0001f552 \u200f"
    response = post(client, auth(), {"data": [entry(note=note)]})
    assert response.status_code == 202
    job = session.get_one(Job, uuid.UUID(response.json["data"]["id"]))
    assert job.batch is not None and decoded_items(Operation.CREATE, job.batch)[0]["note"] == note


def test_database_down_is_503(settings: Settings, auth: Any) -> None:
    from shared.store.engine import make_engine, make_session_factory

    down = dataclasses.replace(settings, database_url="postgresql+psycopg://nobody@127.0.0.1:9/x")
    engine = make_engine(down)
    app = create_app(down, sessions=make_session_factory(engine), publish=lambda _job, _rank: None)
    app.test_client_class = CheckedClient
    response = post(
        app.test_client(),
        {"X-Auth-Token": "tb_x", "X-Organization-Id": "2110"},
        {"data": [entry()]},
    )
    engine.dispose()
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.json["errors"][0]["title"] == "Service unavailable"


def test_oversized_body_is_413(
    settings: Settings, sessions: sessionmaker[Session], auth: Any
) -> None:
    small = dataclasses.replace(settings, max_body_bytes=2048)
    app = create_app(small, sessions=sessions, publish=lambda _job, _rank: None)
    response = post(app.test_client(), auth(), {"data": [entry(note="x" * 4000)]})
    assert response.status_code == 413
    assert response.json["errors"][0]["status"] == "413"


def test_batch_over_the_limit_is_413_naming_it(
    settings: Settings, sessions: sessionmaker[Session], auth: Any
) -> None:
    limited = dataclasses.replace(settings, max_batch_size=3)
    app = create_app(limited, sessions=sessions, publish=lambda _job, _rank: None)
    response = post(app.test_client(), auth(), {"data": [entry()] * 4})
    assert response.status_code == 413
    assert "at most 3 entries" in response.json["errors"][0]["detail"]


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (b"{not json", 400, [""]),
        (b"", 400, [""]),
        (b"[]", 400, [""]),
        ({"data": []}, 400, ["/data"]),
        ({"data": {"type": "time_entries"}}, 400, ["/data"]),
        ({"data": [entry()], "extra": 1}, 400, ["/extra"]),
        ({"data": [entry()], "a/b~": 1}, 400, ["/a~1b~0"]),
        ({"data": [5]}, 400, ["/data/0"]),
        ({"data": [entry() | {"type": "people"}]}, 409, ["/data/0/type"]),
        ({"data": [entry() | {"id": "12"}]}, 403, ["/data/0/id"]),
        ({"data": [entry(date="2026-02-30")]}, 422, ["/data/0/attributes/date"]),
        ({"data": [entry(date="26-01-01")]}, 422, ["/data/0/attributes/date"]),
        ({"data": [entry(time=-1)]}, 422, ["/data/0/attributes/time"]),
        ({"data": [entry(time="60")]}, 422, ["/data/0/attributes/time"]),
        ({"data": [entry(time=True)]}, 422, ["/data/0/attributes/time"]),
        ({"data": [entry(note=5)]}, 422, ["/data/0/attributes/note"]),
        ({"data": [entry(note="a\u0000b")]}, 422, ["/data/0/attributes/note"]),
        ({"data": [entry(note="x" * 10_001)]}, 422, ["/data/0/attributes/note"]),
        (b'{"data": [' * 600 + b"]}" * 600, 400, [""]),
        (b'{"data": [{"type": "time_entries", "attributes": {"note": "\\ud800"}}]}', 400, [""]),
        ({"data": [entry(cost=1)]}, 400, ["/data/0/attributes/cost"]),
        ({"data": [entry(colour="red")]}, 400, ["/data/0/attributes/colour"]),
        (
            {"data": [entry(), entry(time=-5, date="x")]},
            422,
            ["/data/1/attributes/date", "/data/1/attributes/time"],
        ),
        (
            {"data": [{"type": "time_entries", "attributes": {"time": 5}}]},
            422,
            ["/data/0/attributes/date", "/data/0/relationships/person", "/data/0/relationships/service"],
        ),
        (
            {"data": [entry() | {"relationships": {"person": {"data": {"type": "services", "id": 1}}}}]},
            400,
            ["/data/0/relationships/person/data/type", "/data/0/relationships/service"],
        ),
        (
            {"data": [entry() | {"relationships": {"approver": {"data": None}}}]},
            400,
            ["/data/0/relationships/approver", "/data/0/relationships/person", "/data/0/relationships/service"],
        ),
    ],
)  # fmt: skip
def test_bad_documents_make_no_job(
    client: FlaskClient,
    auth: Any,
    session: Session,
    published: list[str],
    body: Any,
    status: int,
    expected: list[str],
) -> None:
    before = jobs_count(session)
    response = post(client, auth(), body)
    assert response.status_code == status, response.json
    assert sorted(pointers(response)) == sorted(expected)
    for error in response.json["errors"]:
        assert error["title"] and error["detail"]
    assert jobs_count(session) == before
    assert published == []


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ({"data": [{"type": "time_entries"}]}, 400, ["/data/0/id"]),
        ({"data": [{"type": "time_entries", "id": "abc"}]}, 400, ["/data/0/id"]),
        ({"data": [{"type": "time_entries", "id": -3}]}, 400, ["/data/0/id"]),
        ({"data": [{"type": "time_entries", "id": 1.5}]}, 400, ["/data/0/id"]),
        (
            {"data": [{"type": "time_entries", "id": 7}, {"type": "time_entries", "id": "7"}]},
            422,
            ["/data/1/id"],
        ),
        (
            {"data": [{"type": "time_entries", "id": 7, "attributes": {"note": "x"}}]},
            400,
            ["/data/0/attributes"],
        ),
    ],
)
def test_bad_delete_documents(
    client: FlaskClient, auth: Any, body: Any, status: int, expected: list[str]
) -> None:
    response = client.delete(
        "/api/v2/time_entries", json=body, headers=auth() | {"Content-Type": BULK}
    )
    assert response.status_code == status
    assert pointers(response) == expected


def test_update_needs_ids(client: FlaskClient, auth: Any) -> None:
    response = client.patch(
        "/api/v2/time_entries",
        json={"data": [{"type": "time_entries", "attributes": {"note": "x"}}]},
        headers=auth() | {"Content-Type": BULK},
    )
    assert response.status_code == 400
    assert pointers(response) == ["/data/0/id"]


def test_job_cancel(client: FlaskClient, auth: Any, session: Session) -> None:
    accepted = post(client, auth(), {"data": [entry()]})
    location = accepted.headers["Location"]
    canceled = client.delete(location, headers=auth())
    assert canceled.status_code == 200
    assert canceled.json["data"]["attributes"]["status"] == "canceled"
    again = client.delete(location, headers=auth())
    assert again.status_code == 409
    assert client.get(location + "/result", headers=auth()).status_code == 409


def test_jobs_of_another_organization_are_invisible(client: FlaskClient, auth: Any) -> None:
    accepted = post(client, auth(7781), {"data": [entry()]})
    location = accepted.headers["Location"]
    other = auth(8881)
    assert client.get(location, headers=other).status_code == 404
    assert client.get(location + "/result", headers=other).status_code == 404
    assert client.delete(location, headers=other).status_code == 404


def test_unknown_query_parameters_are_refused_not_ignored(
    client: FlaskClient, auth: Any, session: Session, published: Any
) -> None:
    headers = auth()
    before = jobs_count(session)
    for method, path in (
        ("POST", "/api/v2/time_entries?foo=bar"),
        ("PATCH", "/api/v2/time_entries/unapprove?for_all_approvers=true"),
        ("PATCH", "/api/v2/time_entries/approve?fields=all"),
    ):
        response = client.open(
            path, method=method, json={"data": [entry()]}, headers={"Content-Type": BULK} | headers
        )
        assert response.status_code == 400, path
        (error,) = response.json["errors"]  # type: ignore[index]
        assert error["title"] == "Unsupported parameter"
        assert error["source"]["parameter"] in {"foo", "for_all_approvers", "fields"}
    assert jobs_count(session) == before and published == []
    accepted = post(client, headers, {"data": [entry()]})
    location = accepted.headers["Location"]
    for path in (location, f"{location}/result"):
        refused = client.get(f"{path}?verbose=1", headers=headers)
        assert refused.status_code == 400
        assert refused.json["errors"][0]["source"] == {"parameter": "verbose"}  # type: ignore[index]
    assert client.delete(f"{location}?force=1", headers=headers).status_code == 400


def job_options(session: Session, response: Any) -> Any:
    assert response.status_code == 202, response.json
    return session.get_one(Job, uuid.UUID(response.json["data"]["id"])).options


def test_include_is_stored_with_the_job_in_one_order(
    client: FlaskClient, auth: Any, session: Session
) -> None:
    headers = auth(7783) | {"Content-Type": BULK}
    ids = {"data": [{"type": "time_entries", "id": "223"}]}
    for method, path, body, options in (
        ("POST", "/api/v2/time_entries?include=task,person", {"data": [entry()]}, {"include": ["person", "task"]}),
        ("PATCH", "/api/v2/time_entries?include=service", ids, {"include": ["service"]}),
        ("PATCH", "/api/v2/time_entries/approve?include=task,service,person&for_all_approvers=true", ids, {"for_all_approvers": True, "include": ["person", "service", "task"]}),
        ("PATCH", "/api/v2/time_entries/unapprove?include=person,person", ids, {"include": ["person"]}),
        ("POST", "/api/v2/time_entries", {"data": [entry()]}, {}),
    ):  # fmt: skip
        response = client.open(path, method=method, json=body, headers=headers)
        assert job_options(session, response) == options, path


@pytest.mark.parametrize(
    ("method", "path", "title"),
    [
        ("POST", "/api/v2/time_entries?include=approver", "Unsupported include"),
        ("POST", "/api/v2/time_entries?include=person.manager", "Unsupported include"),
        ("PATCH", "/api/v2/time_entries?include=", "Invalid parameter"),
        ("PATCH", "/api/v2/time_entries/approve?include=person&include=task", "Invalid parameter"),
        ("PATCH", "/api/v2/time_entries/unapprove?include=tasks", "Unsupported include"),
        # 204 and no body: nothing to include anything in.
        ("DELETE", "/api/v2/time_entries?include=person", "Unsupported include"),
    ],
)
def test_include_is_checked_as_on_reads(
    client: FlaskClient,
    auth: Any,
    session: Session,
    published: list[str],
    method: str,
    path: str,
    title: str,
) -> None:
    before = jobs_count(session)
    body = (
        {"data": [entry()]} if method == "POST" else {"data": [{"type": "time_entries", "id": 1}]}
    )
    response = client.open(
        path, method=method, json=body, headers=auth(7783) | {"Content-Type": BULK}
    )
    assert response.status_code == 400
    (error,) = response.json["errors"]
    assert (error["title"], error["source"]) == (title, {"parameter": "include"})
    if method == "DELETE":
        assert error["detail"] == "cannot include 'person'; nothing can be included here"
    assert jobs_count(session) == before and published == []


def test_a_replay_asking_another_include_is_another_request(
    client: FlaskClient, auth: Any, published: list[str]
) -> None:
    headers = auth() | {"Idempotency-Key": "include-replay", "Content-Type": BULK}
    body = {"data": [entry()]}
    first = client.post("/api/v2/time_entries?include=person,task", json=body, headers=headers)
    assert first.status_code == 202
    for query, status in (("include=task,person", 202), ("", 422), ("include=person", 422)):
        replay = client.post(f"/api/v2/time_entries?{query}", json=body, headers=headers)
        assert replay.status_code == status, query
        if status == 202:
            # The same names in another order ask for the same result: the same job.
            assert replay.json["data"]["id"] == first.json["data"]["id"]
        else:
            assert replay.json["errors"][0]["title"] == "Idempotency key reused"
    assert published == [first.json["data"]["id"]]


def test_a_connection_cut_under_the_submission_s_pipeline_is_503_and_stores_nothing(
    e2e_db: Engine, e2e_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Session(e2e_db) as session:
        headers = token_for(session, 7781)
        session.commit()
    app = create_app(
        e2e_settings, sessions=make_session_factory(e2e_db), publish=lambda _job, _rank: None
    )
    app.test_client_class = CheckedClient
    real = submit.lock_and_load

    def cut(session: Session, organization_id: int) -> Any:
        # The lock and the count go to the server past SQLAlchemy: its driver's error then.
        pid = session.connection().scalar(text("SELECT pg_backend_pid()"))
        with e2e_db.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
        return real(session, organization_id)

    monkeypatch.setattr(submit, "lock_and_load", cut)
    response = post(app.test_client(), headers, {"data": [entry()]})
    assert response.status_code == 503, response.data
    assert response.headers["Retry-After"]
    assert response.json["errors"][0]["title"] == "Service unavailable"
    monkeypatch.undo()
    with Session(e2e_db) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    # The pool dropped the cut connection: the next submission is stored.
    assert post(app.test_client(), headers, {"data": [entry()]}).status_code == 202
