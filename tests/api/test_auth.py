from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from tests.conftest import BULK

DOC = {"data": [{"id": 223, "type": "time_entries", "attributes": {"note": "x"}}]}


def _errors(response: Any) -> list[dict[str, Any]]:
    assert response.content_type == "application/vnd.api+json; charset=utf-8"
    errors: list[dict[str, Any]] = response.json["errors"]
    for error in errors:
        assert error["status"] == str(response.status_code)
        assert error["title"] and error["detail"]
    return errors


def test_missing_token_is_401(client: FlaskClient) -> None:
    response = client.get("/api/v2/jobs/x", headers={"X-Organization-Id": "2110"})
    assert response.status_code == 401
    assert "X-Auth-Token" in _errors(response)[0]["detail"]


def test_unknown_token_is_401(client: FlaskClient) -> None:
    response = client.get(
        "/api/v2/jobs/x", headers={"X-Auth-Token": "tb_nope", "X-Organization-Id": "2110"}
    )
    assert response.status_code == 401
    _errors(response)


def test_token_of_another_organization_is_403(client: FlaskClient, auth: Any) -> None:
    headers = auth(7781) | {"X-Organization-Id": "2112"}
    response = client.get("/api/v2/jobs/x", headers=headers)
    assert response.status_code == 403
    _errors(response)


def test_missing_organization_is_403(client: FlaskClient, auth: Any) -> None:
    headers = auth(7781)
    del headers["X-Organization-Id"]
    assert client.get("/api/v2/jobs/x", headers=headers).status_code == 403


def test_read_only_token_cannot_write(client: FlaskClient, auth: Any, published: list[str]) -> None:
    headers = auth(7781, read_only=True) | {"Content-Type": BULK}
    response = client.patch("/api/v2/time_entries", json=DOC, headers=headers)
    assert response.status_code == 403
    assert "read-only" in _errors(response)[0]["detail"]
    assert published == []
    # ...but may read
    assert client.get("/api/v2/jobs/x", headers=auth(7781, read_only=True)).status_code == 404
