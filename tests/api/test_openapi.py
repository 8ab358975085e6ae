"""The OpenAPI document: valid OpenAPI 3.1, every route of the app and nothing else, answers
that conform to it, served without a token, and the API reference in step with it."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis.specs.openapi.definitions import OPENAPI_31
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from api.openapi import document
from shared.settings import Settings
from shared.store.models import Job
from tests.conftest import BULK
from tests.factories import create_resource as entry

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT_URI = "urn:timebatch:openapi"
IGNORED_METHODS = {"HEAD", "OPTIONS"}

formats = FormatChecker()


@formats.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    return not isinstance(value, str) or dt.datetime.fromisoformat(value).tzinfo is not None


@formats.checks("date", raises=ValueError)
def _date(value: object) -> bool:
    return not isinstance(value, str) or (len(value) == 10 and bool(dt.date.fromisoformat(value)))


@formats.checks("uuid", raises=ValueError)
def _uuid(value: object) -> bool:
    return not isinstance(value, str) or bool(uuid.UUID(value))


REGISTRY = Registry().with_resource(
    DOCUMENT_URI, Resource.from_contents(document(), default_specification=DRAFT202012)
)


def _pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def operations() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document()["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }


def routes(app: Flask) -> set[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in IGNORED_METHODS:
                found.add((method, path))
    return found


def conforms(response: TestResponse, method: str, path: str) -> None:
    """The response is one the document describes for this operation: status, headers, body."""
    answers = document()["paths"][path][method.lower()]["responses"]
    status = str(response.status_code)
    assert status in answers, f"{method} {path} answered an undocumented {status}"
    answer = answers[status]
    for name, header in answer.get("headers", {}).items():
        if "$ref" in header:
            header = document()["components"]["headers"][header["$ref"].rsplit("/", 1)[1]]
        if header.get("required"):
            assert name in response.headers, f"{method} {path} {status} lacks {name}"
    content = answer.get("content")
    if content is None:
        assert response.data == b""
        return
    (media_type,) = content
    assert response.mimetype == media_type.split(";")[0]
    if response.mimetype == "text/plain":
        return
    pointer = _pointer("paths", path, method.lower(), "responses", status, "content", media_type)
    validator = Draft202012Validator(
        {"$ref": f"{DOCUMENT_URI}#/{pointer}/schema"}, registry=REGISTRY, format_checker=formats
    )
    # An event stream's schema describes each event (OpenAPI 3.1 has no itemSchema).
    values = (
        server_sent_events(response.get_data(as_text=True))
        if response.mimetype == "text/event-stream"
        else [orjson.loads(response.data)]
    )
    for value in values:
        errors = sorted(validator.iter_errors(value), key=str)
        assert not errors, f"{method} {path} {status}: {errors[0].message[:400]}"


def server_sent_events(text: str) -> list[dict[str, Any]]:
    """The events of a stream as an SSE client reads them: those with data, comments left out."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = int(value) if name == "retry" else value
        if "data" in fields:
            events.append(fields)
    return events


# ------------------------------------------------------------------------------- document


def test_the_document_is_valid_openapi_3_1() -> None:
    validator = Draft202012Validator(OPENAPI_31)
    errors = sorted(validator.iter_errors(document()), key=str)
    assert not errors, errors[0].message[:400]
    assert document()["openapi"].startswith("3.1.")
    operation_ids = [
        operation["operationId"]
        for item in document()["paths"].values()
        for operation in item.values()
    ]
    assert len(operation_ids) == len(set(operation_ids))


def test_the_document_names_every_route_of_the_app_and_nothing_else(app: Flask) -> None:
    documented, served = operations(), routes(app)
    assert served - documented == set(), "routes missing from the document"
    assert documented - served == set(), "documented operations the app does not serve"


def test_submissions_that_answer_with_entries_take_include_as_reads_do() -> None:
    include = {"$ref": "#/components/parameters/EntryInclude"}
    assert include in document()["paths"]["/api/v2/time_entries"]["get"]["parameters"]
    declared = {
        f"{method.upper()} {path}": include in operation["parameters"]
        for path, item in document()["paths"].items()
        for method, operation in item.items()
        if "bulk" in operation["tags"]
    }
    assert declared == {
        "POST /api/v2/time_entries": True,
        "PATCH /api/v2/time_entries": True,
        "DELETE /api/v2/time_entries": False,
        "PATCH /api/v2/time_entries/approve": True,
        "PATCH /api/v2/time_entries/unapprove": True,
    }
    result = document()["components"]["schemas"]["TimeEntryResult"]
    assert result["properties"]["included"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/DirectoryResource"},
    }
    assert "included" not in result["required"]


def test_every_reference_resolves() -> None:
    text = orjson.dumps(document()).decode()
    for name in set(re.findall(r'"\$ref":"#/([^"]+)"', text)):
        node: Any = document()
        for part in name.split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        assert node, name


def test_served_without_a_token(client: FlaskClient, settings: Settings) -> None:
    response = client.get("/api/v2/openapi.json")
    conforms(response, "GET", "/api/v2/openapi.json")
    # With the limit the app enforces, which is a setting.
    served = document(settings.max_batch_size)
    assert served["components"]["schemas"]["CreateDocument"]["properties"]["data"]["maxItems"] == (
        settings.max_batch_size
    )
    assert orjson.loads(response.data) == orjson.loads(orjson.dumps(served))


def test_the_api_reference_has_a_section_per_operation() -> None:
    reference = (ROOT / "docs" / "api.md").read_text()
    headings = set(re.findall(r"^### (GET|POST|PATCH|DELETE) (\S+)$", reference, re.MULTILINE))
    assert headings == operations()


# -------------------------------------------------------------------------------- answers


def test_job_answers_conform(client: FlaskClient, auth: Any, session: Session) -> None:
    headers = auth()
    bulk = headers | {"Content-Type": BULK}
    body = orjson.dumps({"data": [entry(), entry(note="b")]})
    accepted = client.post("/api/v2/time_entries", data=body, headers=bulk)
    conforms(accepted, "POST", "/api/v2/time_entries")
    job_id = accepted.json["data"]["id"]  # type: ignore[index]
    job_path = "/api/v2/jobs/{job_id}"
    conforms(client.get(f"/api/v2/jobs/{job_id}", headers=headers), "GET", job_path)
    conforms(client.get("/api/v2/jobs", headers=headers), "GET", "/api/v2/jobs")
    result = client.get(f"/api/v2/jobs/{job_id}/result", headers=headers)
    assert result.status_code == 409
    conforms(result, "GET", f"{job_path}/result")
    canceled = client.delete(f"/api/v2/jobs/{job_id}", headers=headers)
    assert canceled.status_code == 200
    conforms(canceled, "DELETE", job_path)
    conforms(client.delete(f"/api/v2/jobs/{job_id}", headers=headers), "DELETE", job_path)
    missing = client.get(f"/api/v2/jobs/{uuid.uuid4()}", headers=headers)
    assert missing.status_code == 404
    conforms(missing, "GET", job_path)

    job = session.get_one(Job, uuid.UUID(job_id))
    job.status, job.result_status, job.result_body = "failed", 422, None
    session.flush()
    finished = client.get(f"/api/v2/jobs/{job_id}", headers=headers)
    assert finished.status_code == 303
    conforms(finished, "GET", job_path)


@pytest.mark.parametrize(
    ("method", "change", "status"),
    [
        ("POST", {"data": b"{not json"}, 400),
        ("POST", {"data": b"{}", "headers": {"X-Auth-Token": "tb_nobody"}}, 401),
        ("POST", {"headers": {"Content-Type": "application/json"}}, 415),
        ("POST", {"headers": {"Accept": "text/html"}}, 406),
        ("PATCH", {"data": orjson.dumps({"data": [{"type": "people", "id": "1"}]})}, 409),
        ("DELETE", {"data": orjson.dumps({"data": [{"type": "time_entries"}]})}, 400),
    ],
)
def test_refusals_conform(
    client: FlaskClient, auth: Any, method: str, change: dict[str, Any], status: int
) -> None:
    headers = auth() | {"Content-Type": BULK} | change.get("headers", {})
    data = change.get("data", orjson.dumps({"data": [entry()]}))
    response = client.open("/api/v2/time_entries", method=method, data=data, headers=headers)
    assert response.status_code == status
    conforms(response, method, "/api/v2/time_entries")


def test_reading_answers_conform(client: FlaskClient, auth: Any) -> None:
    headers = auth(7783)
    for url, path in [
        ("/api/v2/time_entries?include=person,service,task", "/api/v2/time_entries"),
        ("/api/v2/time_entries?filter[status]=approved&sort=date", "/api/v2/time_entries"),
        ("/api/v2/time_entries/223?include=task", "/api/v2/time_entries/{id}"),
        ("/api/v2/time_entries/1", "/api/v2/time_entries/{id}"),
        ("/api/v2/people?page[size]=2", "/api/v2/people"),
        ("/api/v2/people/7781", "/api/v2/people/{id}"),
        ("/api/v2/services", "/api/v2/services"),
        ("/api/v2/services/1213", "/api/v2/services/{id}"),
        ("/api/v2/tasks?filter[service_id]=1213", "/api/v2/tasks"),
        ("/api/v2/tasks/302", "/api/v2/tasks/{id}"),
        ("/api/v2/tasks?filter[nope]=1", "/api/v2/tasks"),
    ]:
        conforms(client.get(url, headers=headers), "GET", path)


def test_event_stream_answers_conform(
    app: Flask, client: FlaskClient, auth: Any, session: Session
) -> None:
    # The checked client takes every answer for JSON:API; a stream is not.
    plain = FlaskClient(app, app.response_class)
    headers = auth()
    body = orjson.dumps({"data": [entry()]})
    accepted = client.post(
        "/api/v2/time_entries", data=body, headers=headers | {"Content-Type": BULK}
    )
    job_id = accepted.json["data"]["id"]  # type: ignore[index]
    path = "/api/v2/jobs/{job_id}/events"
    url = f"/api/v2/jobs/{job_id}/events"
    job = session.get_one(Job, uuid.UUID(job_id))
    job.status, job.result_status, job.processed = "succeeded", 201, 1
    session.flush()
    stream = plain.get(url, headers=headers | {"Accept": "text/event-stream"})
    assert stream.status_code == 200
    conforms(stream, "GET", path)
    events = server_sent_events(stream.get_data(as_text=True))
    assert [event["event"] for event in events] == ["finished"]
    done = client.get(url, headers=headers | {"Last-Event-ID": events[-1]["id"]})
    assert done.status_code == 204
    conforms(done, "GET", path)
    for answer in (
        client.get(url, headers=headers | {"Accept": "application/json"}),
        client.get(f"/api/v2/jobs/{uuid.uuid4()}/events", headers=headers),
        client.get(f"{url}?x=1", headers=headers),
    ):
        assert answer.status_code in (400, 404, 406)
        conforms(answer, "GET", path)


def test_webhook_answers_conform(client: FlaskClient, auth: Any, session: Session) -> None:
    headers = auth(7783)
    write = headers | {"Content-Type": "application/vnd.api+json"}
    one, many = "/api/v2/webhooks/{id}", "/api/v2/webhooks"
    # An address literal: no DNS, and not an internal address.
    document_ = {"data": {"type": "webhooks", "attributes": {"url": "https://93.184.215.14/h"}}}
    created = client.post(many, data=orjson.dumps(document_), headers=write)
    assert created.status_code == 201, created.json
    conforms(created, "POST", many)
    webhook_id = created.json["data"]["id"]  # type: ignore[index]
    url = f"{many}/{webhook_id}"
    conforms(client.get(many, headers=headers), "GET", many)
    conforms(client.get(url, headers=headers), "GET", one)
    change = {"data": {"type": "webhooks", "id": webhook_id, "attributes": {"enabled": False}}}
    patched = client.patch(url, data=orjson.dumps(change), headers=write)
    assert patched.status_code == 200
    conforms(patched, "PATCH", one)
    mismatch = change | {"data": change["data"] | {"id": "1"}}
    conforms(client.patch(url, data=orjson.dumps(mismatch), headers=write), "PATCH", one)
    conforms(client.patch(url, data=b"{}", headers=headers), "PATCH", one)
    refused = {"data": {"type": "webhooks", "attributes": {"url": "https://127.0.0.1/"}}}
    private = client.post(many, data=orjson.dumps(refused), headers=write)
    assert private.status_code == 422
    conforms(private, "POST", many)
    conforms(client.get(f"{url}/deliveries", headers=headers), "GET", f"{one}/deliveries")
    conforms(client.get(f"{many}?sort=id", headers=headers), "GET", many)
    conforms(client.get(url, headers=auth(7781)), "GET", one)
    deleted = client.delete(url, headers=headers)
    assert deleted.status_code == 204
    conforms(deleted, "DELETE", one)
    conforms(client.delete(url, headers=headers), "DELETE", one)


def test_the_secret_is_documented_for_the_creation_only() -> None:
    schemas = document()["components"]["schemas"]
    assert "secret" in schemas["CreatedWebhook"]["properties"]["attributes"]["required"]
    assert "secret" not in schemas["Webhook"]["properties"]["attributes"]["properties"]
    request = schemas["WebhookCreateDocument"]["properties"]["data"]["properties"]["attributes"]
    assert set(request["properties"]) == {"url", "events", "enabled"}
    assert request["additionalProperties"] is False


def test_operations_answers_conform(client: FlaskClient) -> None:
    conforms(client.get("/healthz"), "GET", "/healthz")
    conforms(client.get("/metrics"), "GET", "/metrics")


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/api/v2/openapi.json"])
def test_the_routes_outside_the_api_refuse_query_parameters_too(
    client: FlaskClient, path: str
) -> None:
    """A scraper's `?name[]=...` filter, say, would otherwise be ignored without a word."""
    response = client.get(f"{path}?name[]=up")
    assert response.status_code == 400
    assert response.json is not None
    assert response.json["errors"][0]["source"] == {"parameter": "name[]"}
    conforms(response, "GET", path)
