from __future__ import annotations

from typing import Any

from flask import Flask, g
from flask.testing import FlaskClient
from sqlalchemy import Engine, text

from api.context import close_db
from api.limits import MAX_HEADER_FIELD, MAX_REQUEST_TARGET
from shared.store.engine import make_session_factory

JSONAPI = "application/vnd.api+json; charset=utf-8"


def test_unknown_route_is_a_jsonapi_404(client: FlaskClient) -> None:
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.content_type == JSONAPI
    error = response.json["errors"][0]  # type: ignore[index]
    assert error["status"] == "404" and error["title"] == "Not found"


def test_wrong_method_is_a_jsonapi_405(client: FlaskClient, auth: Any) -> None:
    response = client.put("/api/v2/time_entries", headers=auth())
    assert response.status_code == 405
    assert response.content_type == JSONAPI
    assert "PATCH" in response.headers["Allow"]
    assert response.json["errors"][0]["status"] == "405"  # type: ignore[index]


def test_unexpected_error_is_a_500_without_internals(app: Flask) -> None:
    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret internals")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.content_type == JSONAPI
    assert b"secret internals" not in response.data
    assert response.json["errors"][0]["title"] == "Internal server error"  # type: ignore[index]


def test_unknown_job_is_404(client: FlaskClient, auth: Any) -> None:
    for path in ("/api/v2/jobs/not-a-uuid", "/api/v2/jobs/8a0d1ab0-5b1c-4b7e-9b59-2f8f35f0a2f1"):
        response = client.get(path, headers=auth())
        assert response.status_code == 404
        assert response.content_type == JSONAPI


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"database": "ok", "broker": "ok"}


def test_healthz_names_a_broker_that_is_down(settings: Any, sessions: Any) -> None:
    import dataclasses

    from api import create_app

    down = dataclasses.replace(settings, broker_url="redis://127.0.0.1:9/0")
    response = create_app(down, sessions=sessions).test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json == {"database": "ok", "broker": "down"}


def test_an_over_long_request_line_or_header_is_a_jsonapi_error(
    client: FlaskClient, auth: Any
) -> None:
    headers = auth()
    long_query = client.get(
        "/api/v2/time_entries?sort=" + "x" * MAX_REQUEST_TARGET, headers=headers
    )
    assert long_query.status_code == 414
    assert long_query.json["errors"][0]["title"] == "URI too long"  # type: ignore[index]
    long_header = client.get(
        "/api/v2/time_entries", headers=headers | {"X-Padding": "x" * MAX_HEADER_FIELD}
    )
    assert long_header.status_code == 431
    assert "X-Padding" in long_header.json["errors"][0]["detail"]  # type: ignore[index]
    # Just inside the limits, the request is the app's to judge.
    fits = client.get("/api/v2/time_entries?sort=" + "x" * 100, headers=headers)
    assert fits.status_code == 400


def test_a_request_whose_connection_died_still_gets_the_apps_answer(
    app: Flask, engine: Engine
) -> None:
    """Closing the session of a request whose database connection was cut (a restart) must
    not raise: gunicorn would answer its own HTML 500 in place of the app's answer."""
    sessions = make_session_factory(engine)
    with app.app_context():
        session = sessions()
        g.db = session
        pid = session.scalar(text("SELECT pg_backend_pid()"))
        with engine.connect() as killer:
            assert killer.scalar(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid})
        close_db()
        assert "db" not in g
