"""GET /jobs/{id}/events: a job's progress and end as Server-Sent Events, in this process.

Refusals and streams of a job that already ended run in the test's rolled-back transaction.
Streams that follow a job as it moves need notifications, which PostgreSQL delivers only at
commit: those run on the committed database (`e2e_db`), where this test moves the job itself
by updating its row and notifying in committed transactions, as the worker does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, delete, update
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from api import create_app
from shared.domain.tokens import hash_token
from shared.settings import Settings
from shared.store.engine import make_session_factory
from shared.store.models import ApiToken, Job
from shared.store.notify import notify_finished, notify_progress
from tests.checked_client import CheckedClient
from tests.conftest import PublishLog, token_for

STREAM = {"Accept": "text/event-stream"}


@dataclass(frozen=True)
class Event:
    """One block of the stream: an event, a `retry:` field, or a comment."""

    name: str | None
    id: str | None
    data: Any
    retry: int | None = None
    comment: str | None = None


def parse(block: bytes) -> Event:
    fields: dict[str, str] = {}
    comment = None
    for line in block.decode().splitlines():
        if line.startswith(":"):
            comment = line[1:].strip()
            continue
        name, _, value = line.partition(": ")
        fields[name] = value
    data = json.loads(fields["data"]) if "data" in fields else None
    retry = int(fields["retry"]) if "retry" in fields else None
    return Event(fields.get("event"), fields.get("id"), data, retry, comment)


class Stream:
    """An open stream, read block by block as the server sends them."""

    def __init__(self, response: TestResponse) -> None:
        self.response = response
        self._blocks = iter(cast(Iterable[bytes], response.response))

    def next(self) -> Event:
        return parse(next(self._blocks))

    def next_event(self) -> Event:
        """The next event, past the retry field and keep-alive comments."""
        while True:
            found = self.next()
            if found.name is not None:
                return found

    def rest(self) -> list[Event]:
        """Every block left, until the server ends the response."""
        return [parse(block) for block in self._blocks]

    def close(self) -> None:
        self.response.close()


def open_stream(client: FlaskClient, job_id: str, headers: dict[str, str]) -> Stream:
    response = client.get(f"/api/v2/jobs/{job_id}/events", headers=headers, buffered=False)
    assert response.status_code == 200, response.get_data()
    return Stream(response)


def error_of(response: TestResponse) -> Any:
    assert response.json is not None
    return response.json


def make_job(session: Session, **values: Any) -> Job:
    job = Job(
        organization_id=values.pop("organization_id", 2110),
        person_id=values.pop("person_id", 7781),
        operation="create",
        total=values.pop("total", 10_000),
        batch=b"[]",
        **values,
    )
    session.add(job)
    session.flush()
    return job


def succeeded(session: Session) -> Job:
    return make_job(session, status="succeeded", processed=10_000, result_status=201)


# ------------------------------------------------------- refusals (rolled-back transaction)


@pytest.fixture
def plain(app: Flask) -> FlaskClient:
    """A client that leaves a 200 stream unread: the checked one would read it to its end."""
    return FlaskClient(app, app.response_class)


def test_an_accept_header_without_event_streams_is_a_406(
    client: FlaskClient, auth: Any, session: Session
) -> None:
    job = make_job(session)
    for accept in ("application/vnd.api+json", "text/event-stream;q=0", "text/html"):
        response = client.get(f"/api/v2/jobs/{job.id}/events", headers=auth() | {"Accept": accept})
        assert response.status_code == 406, accept
        assert "text/event-stream" in error_of(response)["errors"][0]["detail"]


@pytest.mark.parametrize("accept", ["text/event-stream", "text/*", "*/*", None])
def test_what_admits_an_event_stream_gets_one(
    plain: FlaskClient, auth: Any, session: Session, accept: str | None
) -> None:
    job = succeeded(session)
    headers = auth() | ({"Accept": accept} if accept else {})
    stream = open_stream(plain, str(job.id), headers)
    assert stream.response.headers["Content-Type"] == "text/event-stream"
    stream.close()


def test_another_organization_s_job_and_an_unknown_one_are_404(
    client: FlaskClient, auth: Any, session: Session
) -> None:
    theirs = make_job(session, organization_id=2111, person_id=7791)
    for job_id in (str(theirs.id), "00000000-0000-4000-8000-000000000000", "not-a-uuid"):
        response = client.get(f"/api/v2/jobs/{job_id}/events", headers=auth() | STREAM)
        assert response.status_code == 404, job_id
        assert error_of(response)["errors"][0]["title"] == "Not found"


def test_any_query_parameter_is_a_400(client: FlaskClient, auth: Any, session: Session) -> None:
    job = make_job(session)
    response = client.get(f"/api/v2/jobs/{job.id}/events?since=3", headers=auth() | STREAM)
    assert response.status_code == 400
    assert error_of(response)["errors"][0]["source"] == {"parameter": "since"}


def test_without_a_token_it_is_a_401(client: FlaskClient, session: Session) -> None:
    job = make_job(session)
    response = client.get(f"/api/v2/jobs/{job.id}/events", headers=STREAM)
    assert response.status_code == 401


def test_a_finished_job_streams_one_finished_event_and_ends(
    plain: FlaskClient, auth: Any, session: Session
) -> None:
    job = succeeded(session)
    stream = open_stream(plain, str(job.id), auth() | STREAM)
    headers = stream.response.headers
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Accel-Buffering"] == "no"
    assert stream.next().retry is not None  # once, first
    blocks = stream.rest()
    assert blocks == [
        Event(
            "finished",
            "finished",
            {
                "status": "succeeded",
                "result_status": 201,
                "links": {"result": f"/api/v2/jobs/{job.id}/result"},
            },
        )
    ]


def test_a_failed_job_links_its_result_and_a_canceled_one_has_none(
    plain: FlaskClient, auth: Any, session: Session
) -> None:
    failed = make_job(session, status="failed", result_status=422)
    canceled = make_job(session, status="canceled")
    (end,) = open_stream(plain, str(failed.id), auth() | STREAM).rest()[1:]
    assert end.data == {
        "status": "failed",
        "result_status": 422,
        "links": {"result": f"/api/v2/jobs/{failed.id}/result"},
    }
    (end,) = open_stream(plain, str(canceled.id), auth() | STREAM).rest()[1:]
    assert end.data == {"status": "canceled", "result_status": None, "links": {"result": None}}


def test_after_the_finished_event_a_reconnection_is_a_204(
    client: FlaskClient, plain: FlaskClient, auth: Any, session: Session
) -> None:
    job = succeeded(session)
    headers = auth() | STREAM
    again = client.get(
        f"/api/v2/jobs/{job.id}/events", headers=headers | {"Last-Event-ID": "finished"}
    )
    assert again.status_code == 204
    assert again.data == b""
    # Any other last id gets the end again: the client has not seen it.
    stream = open_stream(plain, str(job.id), headers | {"Last-Event-ID": "running:9000"})
    assert [e.name for e in stream.rest()] == [None, "finished"]


def test_with_a_stream_capacity_of_zero_it_is_a_503_with_retry_after(
    settings: Settings, sessions: sessionmaker[Session], auth: Any, session: Session
) -> None:
    app = create_app(
        dataclasses.replace(settings, stream_capacity=0), sessions=sessions, publish=PublishLog()
    )
    app.test_client_class = CheckedClient
    job = make_job(session)
    response = app.test_client().get(f"/api/v2/jobs/{job.id}/events", headers=auth() | STREAM)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(settings.retry_after)
    assert error_of(response)["errors"][0]["title"] == "Too many streams"


def test_past_the_stream_capacity_it_is_a_503_at_once_and_the_rest_answers(
    settings: Settings, sessions: sessionmaker[Session], auth: Any, session: Session
) -> None:
    app = create_app(
        dataclasses.replace(settings, stream_capacity=1), sessions=sessions, publish=PublishLog()
    )
    job = make_job(session)
    headers = auth() | STREAM
    held = open_stream(FlaskClient(app, app.response_class), str(job.id), headers)
    assert held.next_event().id == "queued:0"
    app.test_client_class = CheckedClient
    checked = app.test_client()
    refused = checked.get(f"/api/v2/jobs/{job.id}/events", headers=headers)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"].isdigit()
    assert checked.get(f"/api/v2/jobs/{job.id}", headers=auth()).status_code == 200
    # A client that goes away gives its slot back.
    held.close()
    again = open_stream(FlaskClient(app, app.response_class), str(job.id), headers)
    assert again.next_event().id == "queued:0"
    again.close()


# ------------------------------------------------------------- following a job (committed)


@pytest.fixture
def live(e2e_settings: Settings, e2e_db: Engine) -> Flask:
    """The app on the committed database, its jobs published nowhere: they stay queued until
    the test moves them."""
    return create_app(e2e_settings, sessions=make_session_factory(e2e_db), publish=PublishLog())


@pytest.fixture
def live_headers(e2e_db: Engine) -> dict[str, str]:
    with Session(e2e_db) as session:
        headers = token_for(session, 7781)
        session.commit()
    return headers | STREAM


@pytest.fixture
def job_id(e2e_db: Engine) -> str:
    with Session(e2e_db) as session:
        job = make_job(session)
        session.commit()
        return str(job.id)


def move(engine: Engine, job_id: str, status: str, processed: int) -> None:
    """What the worker's running mark and ProgressReporter do: the row and its
    notification, committed together."""
    with engine.begin() as connection:
        connection.execute(
            update(Job).where(Job.id == job_id).values(status=status, processed=processed)
        )
        notify_progress(connection, job_id, status, processed, 10_000)


def finish(engine: Engine, job_id: str) -> None:
    with Session(engine) as session, session.begin():
        notify_finished(session, job_id)
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="succeeded", processed=10_000, result_status=201, result_body=b"{}")
        )


def test_a_stream_follows_the_job_from_queued_to_finished(
    live: Flask, live_headers: dict[str, str], job_id: str, e2e_db: Engine
) -> None:
    stream = open_stream(FlaskClient(live, live.response_class), job_id, live_headers)
    first = stream.next_event()
    assert first == Event(
        "progress", "queued:0", {"status": "queued", "processed": 0, "total": 10_000}
    )
    # While it waits, the stream holds no database connection.
    assert e2e_db.pool.checkedout() == 0  # type: ignore[attr-defined]
    move(e2e_db, job_id, "running", 0)
    assert stream.next_event().id == "running:0"
    move(e2e_db, job_id, "running", 4000)
    running = stream.next_event()
    assert running == Event(
        "progress", "running:4000", {"status": "running", "processed": 4000, "total": 10_000}
    )
    finish(e2e_db, job_id)
    assert stream.rest() == [
        Event(
            "finished",
            "finished",
            {
                "status": "succeeded",
                "result_status": 201,
                "links": {"result": f"/api/v2/jobs/{job_id}/result"},
            },
        )
    ]


def test_a_reconnection_resumes_after_the_last_event_id(
    live: Flask, live_headers: dict[str, str], job_id: str, e2e_db: Engine
) -> None:
    move(e2e_db, job_id, "running", 3000)
    stream = open_stream(
        live.test_client(), job_id, live_headers | {"Last-Event-ID": "running:3000"}
    )
    assert stream.next().retry is not None
    move(e2e_db, job_id, "running", 6000)
    # The event the client had is not sent again: the first one is the change after it.
    assert stream.next_event().id == "running:6000"
    stream.close()
    # With an older id, the job's state now comes first.
    older = open_stream(
        FlaskClient(live, live.response_class), job_id, live_headers | {"Last-Event-ID": "queued:0"}
    )
    assert older.next_event().id == "running:6000"
    older.close()


def test_silence_is_broken_by_keep_alive_comments_and_a_stream_ends_at_its_lifetime(
    live: Flask, live_headers: dict[str, str], job_id: str
) -> None:
    live.config["TIMEBATCH_STREAM_KEEPALIVE"] = 0.1
    live.config["TIMEBATCH_STREAM_LIFETIME"] = 1.0
    stream = open_stream(FlaskClient(live, live.response_class), job_id, live_headers)
    assert stream.next_event().id == "queued:0"
    assert stream.next().comment == "keep-alive"
    rest = stream.rest()  # ends without a finished event: the client reconnects
    assert rest and {block.comment for block in rest} == {"keep-alive"}


def test_a_job_canceled_without_a_notification_is_seen_at_the_next_recheck(
    live: Flask, live_headers: dict[str, str], job_id: str, e2e_db: Engine
) -> None:
    live.config["TIMEBATCH_STREAM_RECHECK"] = 0.2
    stream = open_stream(FlaskClient(live, live.response_class), job_id, live_headers)
    assert stream.next_event().id == "queued:0"
    token = {k: v for k, v in live_headers.items() if k != "Accept"}
    canceled = live.test_client().delete(f"/api/v2/jobs/{job_id}", headers=token)
    assert canceled.status_code == 200
    (end,) = [block for block in stream.rest() if block.name is not None]
    assert end.data == {"status": "canceled", "result_status": None, "links": {"result": None}}


def test_a_revoked_token_ends_the_stream_at_the_next_recheck(
    live: Flask, live_headers: dict[str, str], job_id: str, e2e_db: Engine
) -> None:
    live.config["TIMEBATCH_STREAM_RECHECK"] = 0.2
    stream = open_stream(FlaskClient(live, live.response_class), job_id, live_headers)
    assert stream.next_event().id == "queued:0"
    with Session(e2e_db) as session, session.begin():
        token_hash = hash_token(live_headers["X-Auth-Token"])
        session.execute(delete(ApiToken).where(ApiToken.token_hash == token_hash))
    # Ended, though the job is still queued; reconnecting would be a 401.
    assert [block for block in stream.rest() if block.name is not None] == []
    again = live.test_client().get(f"/api/v2/jobs/{job_id}/events", headers=live_headers)
    assert again.status_code == 401
