"""The webhook endpoints: an organization's endpoints and their deliveries, for managers and
admins only; the secret shown once; every refusal with its pointer; no private target."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import re
import uuid
from typing import Any

import orjson
import pytest
import standardwebhooks
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from api import create_app
from shared.domain.tokens import Principal
from shared.settings import Settings
from shared.store.models import Job, Webhook, WebhookDelivery
from shared.webhooks.targets import TargetRefused, check_url
from tests.checked_client import CheckedClient
from tests.conftest import PublishLog
from tests.factories import Factories, create_resource, queue_job

MEDIA = "application/vnd.api+json"
BASE = "/api/v2/webhooks"
ALL_EVENTS = ["job.succeeded", "job.failed", "job.canceled"]
SECRET = re.compile(r"^whsec_[A-Za-z0-9+/]{43}=$")
MILLISECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
MANAGER, ADMIN, MEMBER, NO_RIGHTS = 7782, 7783, 7781, 7784
OTHER_MANAGER = 7792  # of organization 2111


def _client(
    settings: Settings,
    sessions: sessionmaker[Session],
    published: PublishLog,
    *,
    allow_private: bool,
) -> FlaskClient:
    own = dataclasses.replace(settings, webhook_allow_private=allow_private)
    app: Flask = create_app(own, sessions=sessions, publish=published)
    app.test_client_class = CheckedClient
    return app.test_client()


@pytest.fixture
def client(
    settings: Settings, sessions: sessionmaker[Session], published: PublishLog
) -> FlaskClient:
    """Private targets allowed, as under `make run`: no test depends on DNS."""
    return _client(settings, sessions, published, allow_private=True)


@pytest.fixture
def strict_client(
    settings: Settings, sessions: sessionmaker[Session], published: PublishLog
) -> FlaskClient:
    """The production default: private targets refused."""
    return _client(settings, sessions, published, allow_private=False)


def body(attributes: dict[str, Any] | None = None, **resource: Any) -> bytes:
    data: dict[str, Any] = {"type": "webhooks"} | resource
    if attributes is not None:
        data["attributes"] = attributes
    return orjson.dumps({"data": data})


def write_headers(headers: dict[str, str]) -> dict[str, str]:
    return headers | {"Content-Type": MEDIA}


def post(client: FlaskClient, headers: dict[str, str], data: bytes) -> TestResponse:
    return client.post(BASE, data=data, headers=write_headers(headers))


def patch(
    client: FlaskClient, headers: dict[str, str], webhook_id: int | str, data: bytes
) -> TestResponse:
    return client.patch(f"{BASE}/{webhook_id}", data=data, headers=write_headers(headers))


def errors(response: TestResponse) -> list[tuple[str, str, str | None]]:
    """Each error's status, title and pointer."""
    assert response.json is not None
    return [
        (error["status"], error["title"], error.get("source", {}).get("pointer"))
        for error in response.json["errors"]
    ]


def ids_of(response: TestResponse) -> list[int]:
    assert response.status_code == 200, response.json
    assert response.json is not None
    return [int(resource["id"]) for resource in response.json["data"]]


# ----------------------------------------------------------------------------- creating


def test_create_answers_201_with_the_secret_a_standard_webhooks_key(
    client: FlaskClient, auth: Any, session: Session
) -> None:
    response = post(client, auth(MANAGER), body({"url": "https://hooks.example.com/in"}))
    assert response.status_code == 201, response.json
    assert response.json is not None
    resource = response.json["data"]
    webhook_id = int(resource["id"])
    assert response.headers["Location"] == f"{BASE}/{webhook_id}"
    assert resource["type"] == "webhooks"
    assert resource["links"] == {"self": f"{BASE}/{webhook_id}"}
    secret = resource["attributes"]["secret"]
    assert SECRET.match(secret), secret
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32

    stored = session.get_one(Webhook, webhook_id)
    assert stored.organization_id == 2110
    assert stored.secret == secret
    # A receiver holding the secret verifies what the sender signed with it.
    signer = standardwebhooks.Webhook(secret)
    now = dt.datetime.now(dt.UTC)
    payload = '{"type": "job.succeeded"}'
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signer.sign("msg_1", now, payload),
    }
    assert standardwebhooks.Webhook(secret).verify(payload, headers) == {"type": "job.succeeded"}
    forged = headers | {
        "webhook-signature": standardwebhooks.Webhook(
            "whsec_" + base64.b64encode(b"x" * 32).decode()
        ).sign("msg_1", now, payload)
    }
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        signer.verify(payload, forged)


def test_every_endpoint_gets_a_secret_of_its_own(client: FlaskClient, auth: Any) -> None:
    headers = auth(ADMIN)
    secrets = {
        post(client, headers, body({"url": "https://hooks.example.com/in"})).json["data"][  # type: ignore[index]
            "attributes"
        ]["secret"]
        for _ in range(3)
    }
    assert len(secrets) == 3


def test_defaults_every_event_in_order_and_enabled(client: FlaskClient, auth: Any) -> None:
    response = post(client, auth(MANAGER), body({"url": "http://127.0.0.1:8080/hook"}))
    assert response.status_code == 201, response.json
    attributes = response.json["data"]["attributes"]  # type: ignore[index]
    assert attributes["events"] == ALL_EVENTS
    assert attributes["enabled"] is True
    assert attributes["url"] == "http://127.0.0.1:8080/hook"
    assert MILLISECONDS.match(attributes["created_at"]), attributes["created_at"]
    assert MILLISECONDS.match(attributes["updated_at"]), attributes["updated_at"]
    assert set(attributes) == {"url", "events", "enabled", "created_at", "updated_at", "secret"}


def test_create_keeps_the_events_and_enabled_given(client: FlaskClient, auth: Any) -> None:
    attributes = {"url": "https://a.example/h", "events": ["job.failed"], "enabled": False}
    response = post(client, auth(MANAGER), body(attributes, meta={"note": "ignored"}))
    assert response.status_code == 201, response.json
    shown = response.json["data"]["attributes"]  # type: ignore[index]
    assert (shown["events"], shown["enabled"]) == (["job.failed"], False)


def test_the_secret_is_shown_at_creation_only(
    client: FlaskClient, auth: Any, factories: Factories
) -> None:
    headers = auth(MANAGER)
    created = post(client, headers, body({"url": "https://hooks.example.com/in"}))
    webhook_id = created.json["data"]["id"]  # type: ignore[index]
    secret = created.json["data"]["attributes"]["secret"]  # type: ignore[index]
    answers = [
        client.get(f"{BASE}/{webhook_id}", headers=headers),
        client.get(BASE, headers=headers),
        patch(client, headers, webhook_id, body({"enabled": False}, id=webhook_id)),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.json
        assert b"secret" not in answer.data
        assert secret.encode() not in answer.data


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({}, [("422", "Missing attribute", "/data/attributes/url")]),
        ({"url": 42}, [("422", "Invalid attribute", "/data/attributes/url")]),
        ({"url": None}, [("422", "Invalid attribute", "/data/attributes/url")]),
        ({"url": "ftp://hooks.example.com/"}, [("422", "Invalid attribute", "/data/attributes/url")]),
        ({"url": "https://hooks.example.com/a b"}, [("422", "Invalid attribute", "/data/attributes/url")]),
        ({"url": "https://h.example/" + "a" * 2048}, [("422", "Invalid attribute", "/data/attributes/url")]),
        ({"url": "https://user:pw@h.example/"}, [("422", "Target refused", "/data/attributes/url")]),
        ({"url": "https://h.example/", "events": []}, [("422", "Invalid attribute", "/data/attributes/events")]),
        ({"url": "https://h.example/", "events": "job.failed"}, [("422", "Invalid attribute", "/data/attributes/events")]),
        ({"url": "https://h.example/", "events": ["job.nope"]}, [("422", "Invalid attribute", "/data/attributes/events/0")]),
        ({"url": "https://h.example/", "events": ["job.failed", 3]}, [("422", "Invalid attribute", "/data/attributes/events/1")]),
        (
            {"url": "https://h.example/", "events": ["job.failed", "job.succeeded", "job.failed"]},
            [("422", "Duplicate event", "/data/attributes/events/2")],
        ),
        ({"url": "https://h.example/", "enabled": "yes"}, [("422", "Invalid attribute", "/data/attributes/enabled")]),
        ({"url": "https://h.example/", "enabled": 1}, [("422", "Invalid attribute", "/data/attributes/enabled")]),
        ({"url": "https://h.example/", "color": "red"}, [("422", "Unknown attribute", "/data/attributes/color")]),
        ({"url": "https://h.example/", "a/b~": 1}, [("422", "Unknown attribute", "/data/attributes/a~1b~0")]),
        ({"url": "https://h.example/", "secret": "whsec_x"}, [("422", "Read-only attribute", "/data/attributes/secret")]),
        ({"url": "https://h.example/", "created_at": "2026-01-01T00:00:00Z"}, [("422", "Read-only attribute", "/data/attributes/created_at")]),
        (
            {"events": [], "enabled": None},
            [
                ("422", "Invalid attribute", "/data/attributes/events"),
                ("422", "Invalid attribute", "/data/attributes/enabled"),
                ("422", "Missing attribute", "/data/attributes/url"),
            ],
        ),
    ],
)  # fmt: skip
def test_invalid_attributes_are_422_with_their_pointers(
    client: FlaskClient, auth: Any, session: Session, attributes: dict[str, Any], expected: Any
) -> None:
    response = post(client, auth(MANAGER), body(attributes))
    assert response.status_code == 422
    assert errors(response) == expected
    assert session.scalar(select(func.count()).select_from(Webhook)) == 0


@pytest.mark.parametrize(
    ("data", "status", "expected"),
    [
        (b"", 400, [("400", "Malformed document", "")]),
        (b"{not json", 400, [("400", "Malformed document", "")]),
        (b"[]", 400, [("400", "Malformed document", "")]),
        (b"{}", 400, [("400", "Invalid document", "/data")]),
        (b'{"data": []}', 400, [("400", "Invalid document", "/data")]),
        (
            b'{"data": {"type": "webhooks", "attributes": {"url": "https://h.example/"}}, "included": []}',
            400,
            [("400", "Unknown member", "/included")],
        ),
        (
            b'{"data": {"type": "webhooks", "attributes": {"url": "https://h.example/"}}, "meta": 1}',
            400,
            [("400", "Invalid member", "/meta")],
        ),
        (
            b'{"data": {"type": "webhooks", "relationships": {}, "attributes": {"url": "https://h.example/"}}}',
            400,
            [("400", "Unknown member", "/data/relationships")],
        ),
        (b'{"data": {"attributes": {"url": "https://h.example/"}}}', 400, [("400", "Missing type", "/data/type")]),
        (b'{"data": {"type": "jobs", "attributes": {"url": "https://h.example/"}}}', 409, [("409", "Type mismatch", "/data/type")]),
        (
            b'{"data": {"type": "webhooks", "id": "5", "attributes": {"url": "https://h.example/"}}}',
            403,
            [("403", "Client-generated id", "/data/id")],
        ),
        (b'{"data": {"type": "webhooks", "attributes": []}}', 400, [("400", "Invalid member", "/data/attributes")]),
    ],
)  # fmt: skip
def test_malformed_documents_are_refused_with_their_pointers(
    client: FlaskClient, auth: Any, data: bytes, status: int, expected: Any
) -> None:
    response = post(client, auth(MANAGER), data)
    assert response.status_code == status
    assert errors(response) == expected


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "application/vnd.api+json; ext=bulk", "text/plain",
     "application/vnd.api+json; profile=x", "application/vnd.api+json; charset=latin-1"],
)  # fmt: skip
def test_a_body_of_another_media_type_is_415(
    client: FlaskClient, auth: Any, factories: Factories, content_type: str | None
) -> None:
    headers = auth(MANAGER) | ({"Content-Type": content_type} if content_type else {})
    webhook = factories.webhook()
    data = body({"url": "https://h.example/"})
    for response in (
        client.post(BASE, data=data, headers=headers),
        client.patch(f"{BASE}/{webhook.id}", data=body({}, id=str(webhook.id)), headers=headers),
    ):
        assert response.status_code == 415
        assert errors(response) == [("415", "Unsupported media type", None)]


def test_the_media_type_may_name_the_charset_the_api_speaks(client: FlaskClient, auth: Any) -> None:
    headers = auth(MANAGER) | {"Content-Type": "application/vnd.api+json; charset=UTF-8"}
    response = client.post(BASE, data=body({"url": "https://h.example/"}), headers=headers)
    assert response.status_code == 201, response.json


# ------------------------------------------------------------------------------- targets

PRIVATE_TARGETS = [
    "https://127.0.0.1/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://10.0.0.1/hook",
    "https://[::1]/hook",
    "https://localhost:8443/hook",
    "http://hooks.example.com/hook",
]


def refusal(url: str) -> str:
    try:
        check_url(url, allow_private=False)
    except TargetRefused as refused:
        return str(refused)
    raise AssertionError(f"{url} was not refused")


@pytest.mark.parametrize("url", PRIVATE_TARGETS)
def test_private_targets_are_refused_at_creation(
    strict_client: FlaskClient, auth: Any, session: Session, url: str
) -> None:
    response = post(strict_client, auth(MANAGER), body({"url": url}))
    assert response.status_code == 422
    assert errors(response) == [("422", "Target refused", "/data/attributes/url")]
    assert response.json["errors"][0]["detail"] == refusal(url)  # type: ignore[index]
    assert session.scalar(select(func.count()).select_from(Webhook)) == 0


@pytest.mark.parametrize("url", PRIVATE_TARGETS)
def test_private_targets_are_refused_at_update(
    strict_client: FlaskClient, auth: Any, factories: Factories, session: Session, url: str
) -> None:
    webhook = factories.webhook(url="https://hooks.example.com/kept")
    response = patch(
        strict_client, auth(MANAGER), webhook.id, body({"url": url}, id=str(webhook.id))
    )
    assert response.status_code == 422
    assert errors(response) == [("422", "Target refused", "/data/attributes/url")]
    assert response.json["errors"][0]["detail"] == refusal(url)  # type: ignore[index]
    session.refresh(webhook)
    assert webhook.url == "https://hooks.example.com/kept"


def test_a_public_address_is_accepted_without_private_targets(
    strict_client: FlaskClient, auth: Any
) -> None:
    # An address literal: resolving it needs no DNS.
    response = post(strict_client, auth(MANAGER), body({"url": "https://93.184.215.14/hook"}))
    assert response.status_code == 201, response.json


def test_loopback_over_http_is_accepted_when_private_targets_are_allowed(
    client: FlaskClient, auth: Any
) -> None:
    response = post(client, auth(MANAGER), body({"url": "http://127.0.0.1:9000/hook"}))
    assert response.status_code == 201, response.json
    headers = auth(MANAGER)
    webhook_id = response.json["data"]["id"]  # type: ignore[index]
    changed = patch(client, headers, webhook_id, body({"url": "http://[::1]/h"}, id=webhook_id))
    assert changed.status_code == 200, changed.json
    assert changed.json["data"]["attributes"]["url"] == "http://[::1]/h"  # type: ignore[index]


# ------------------------------------------------------------------------- permissions

ROUTES = [
    ("GET", BASE, None),
    ("POST", BASE, {"url": "https://h.example/"}),
    ("GET", f"{BASE}/{{id}}", None),
    ("PATCH", f"{BASE}/{{id}}", {"enabled": False}),
    ("DELETE", f"{BASE}/{{id}}", None),
    ("GET", f"{BASE}/{{id}}/deliveries", None),
]


def call(
    client: FlaskClient,
    method: str,
    path: str,
    attributes: dict[str, Any] | None,
    headers: dict[str, str],
    webhook_id: int,
    query: str = "",
) -> TestResponse:
    url = path.format(id=webhook_id) + query
    if attributes is None:
        return client.open(url, method=method, headers=headers)
    resource = {"id": str(webhook_id)} if method == "PATCH" else {}
    return client.open(
        url, method=method, data=body(attributes, **resource), headers=write_headers(headers)
    )


@pytest.mark.parametrize("person_id", [MEMBER, NO_RIGHTS])
@pytest.mark.parametrize(("method", "path", "attributes"), ROUTES)
def test_only_managers_and_admins_use_webhooks_at_all(
    client: FlaskClient,
    auth: Any,
    factories: Factories,
    session: Session,
    person_id: int,
    method: str,
    path: str,
    attributes: dict[str, Any] | None,
) -> None:
    webhook = factories.webhook()
    response = call(client, method, path, attributes, auth(person_id), webhook.id)
    assert response.status_code == 403
    assert response.json["errors"][0]["detail"] == (  # type: ignore[index]
        "only managers and admins may see or change webhooks"
    )
    session.refresh(webhook)
    assert webhook.enabled is True


@pytest.mark.parametrize(
    "person",
    [
        # can_manage_time alone, can_approve alone, can_approve_all alone
        {"can_manage_time": True},
        {"can_approve": True},
        {"can_approve_all": True},
    ],
)
def test_any_of_the_three_rights_is_enough(
    client: FlaskClient, auth: Any, factories: Factories, person: dict[str, bool]
) -> None:
    someone = factories.person(**person)
    assert client.get(BASE, headers=auth(someone.id)).status_code == 200


@pytest.mark.parametrize(("method", "path", "attributes"), ROUTES)
def test_a_read_only_token_reads_but_never_writes(
    client: FlaskClient,
    auth: Any,
    factories: Factories,
    method: str,
    path: str,
    attributes: dict[str, Any] | None,
) -> None:
    webhook = factories.webhook()
    response = call(client, method, path, attributes, auth(ADMIN, read_only=True), webhook.id)
    if method == "GET":
        assert response.status_code == 200, response.json
    else:
        assert response.status_code == 403
        assert response.json["errors"][0]["detail"] == "this token is read-only"  # type: ignore[index]


@pytest.mark.parametrize(("method", "path", "attributes"), ROUTES[2:])
def test_another_organizations_webhook_is_404(
    client: FlaskClient,
    auth: Any,
    factories: Factories,
    session: Session,
    method: str,
    path: str,
    attributes: dict[str, Any] | None,
) -> None:
    theirs = factories.webhook(organization_id=2111)
    response = call(client, method, path, attributes, auth(MANAGER), theirs.id)
    assert response.status_code == 404
    assert errors(response) == [("404", "Not found", None)]
    # And it is theirs still, unchanged; its own organization sees it.
    session.refresh(theirs)
    assert theirs.enabled is True
    assert client.get(f"{BASE}/{theirs.id}", headers=auth(OTHER_MANAGER)).status_code == 200


@pytest.mark.parametrize("missing", ["0", "999999999", "9223372036854775808", "1" * 40])
@pytest.mark.parametrize(("method", "path", "attributes"), ROUTES[2:])
def test_a_missing_id_is_404_even_beyond_bigint(
    client: FlaskClient,
    auth: Any,
    method: str,
    path: str,
    attributes: dict[str, Any] | None,
    missing: str,
) -> None:
    url = path.format(id=missing)
    if attributes is None:
        response = client.open(url, method=method, headers=auth(MANAGER))
    else:
        data = body(attributes, id=missing)
        response = client.open(url, method=method, data=data, headers=write_headers(auth(MANAGER)))
    assert response.status_code == 404
    assert errors(response) == [("404", "Not found", None)]


def test_a_path_id_that_is_no_number_is_no_route(client: FlaskClient, auth: Any) -> None:
    response = client.get(f"{BASE}/abc", headers=auth(MANAGER))
    assert response.status_code == 404


@pytest.mark.parametrize(("method", "path", "attributes"), ROUTES)
def test_an_unknown_query_parameter_is_400_on_every_route(
    client: FlaskClient,
    auth: Any,
    factories: Factories,
    method: str,
    path: str,
    attributes: dict[str, Any] | None,
) -> None:
    webhook = factories.webhook()
    response = call(client, method, path, attributes, auth(MANAGER), webhook.id, "?nope=1")
    assert response.status_code == 400
    assert response.json["errors"][0]["source"] == {"parameter": "nope"}  # type: ignore[index]


@pytest.mark.parametrize("path", [BASE, f"{BASE}/{{id}}/deliveries"])
@pytest.mark.parametrize("query", ["sort=id", "filter[url]=x", "include=deliveries"])
def test_the_collections_take_pages_only(
    client: FlaskClient, auth: Any, factories: Factories, path: str, query: str
) -> None:
    webhook = factories.webhook()
    response = client.get(f"{path.format(id=webhook.id)}?{query}", headers=auth(MANAGER))
    assert response.status_code == 400
    assert response.json["errors"][0]["source"] == {"parameter": query.split("=")[0]}  # type: ignore[index]


def test_a_json_api_accept_is_required(client: FlaskClient, auth: Any) -> None:
    response = client.get(BASE, headers=auth(MANAGER) | {"Accept": "text/html"})
    assert response.status_code == 406


# ----------------------------------------------------------------------- reading, paging


def test_the_list_is_the_organizations_a_page_at_a_time_by_id(
    client: FlaskClient, auth: Any, factories: Factories
) -> None:
    mine = [factories.webhook(url=f"https://h.example/{n}") for n in range(3)]
    factories.webhook(organization_id=2111)
    headers = auth(MANAGER)
    first = client.get(BASE, query_string={"page[size]": "2"}, headers=headers)
    assert ids_of(first) == [mine[0].id, mine[1].id]
    assert first.json["meta"] == {  # type: ignore[index]
        "current_page": 1,
        "total_pages": 2,
        "total_count": 3,
        "page_size": 2,
        "max_page_size": 200,
    }
    links = first.json["links"]  # type: ignore[index]
    assert links["next"] == f"{BASE}?page[size]=2&page[number]=2"
    assert links["prev"] is None
    second = client.get(links["next"], headers=headers)
    assert ids_of(second) == [mine[2].id]
    assert second.json["links"]["next"] is None  # type: ignore[index]
    resource = second.json["data"][0]  # type: ignore[index]
    assert resource == {
        "id": str(mine[2].id),
        "type": "webhooks",
        "attributes": {
            "url": "https://h.example/2",
            "events": ALL_EVENTS,
            "enabled": True,
            "created_at": mine[2].created_at.isoformat(timespec="milliseconds"),
            "updated_at": mine[2].updated_at.isoformat(timespec="milliseconds"),
        },
        "links": {"self": f"{BASE}/{mine[2].id}"},
    }


def test_an_empty_list(client: FlaskClient, auth: Any) -> None:
    response = client.get(BASE, headers=auth(ADMIN))
    assert ids_of(response) == []
    assert response.json["meta"]["total_count"] == 0  # type: ignore[index]


def test_show(client: FlaskClient, auth: Any, factories: Factories) -> None:
    webhook = factories.webhook(events=["job.canceled"], enabled=False)
    response = client.get(f"{BASE}/{webhook.id}", headers=auth(ADMIN))
    assert response.status_code == 200
    assert response.json["data"]["attributes"]["events"] == ["job.canceled"]  # type: ignore[index]
    assert response.json["data"]["attributes"]["enabled"] is False  # type: ignore[index]
    assert response.json["meta"] == {}  # type: ignore[index]


@pytest.fixture
def job(session: Session) -> Job:
    principal = Principal(person_id=MANAGER, organization_id=2110, read_only=False)
    return queue_job(session, principal, "create", [create_resource()])


def test_deliveries_newest_first_a_page_at_a_time(
    client: FlaskClient, auth: Any, factories: Factories, job: Job
) -> None:
    webhook = factories.webhook()
    other = factories.webhook()
    made = [factories.delivery(webhook, job) for _ in range(3)]
    factories.delivery(other, job)
    path = f"{BASE}/{webhook.id}/deliveries"
    first = client.get(path, query_string={"page[size]": "2"}, headers=auth(MANAGER))
    assert ids_of(first) == [made[2].id, made[1].id]
    assert first.json["meta"]["total_count"] == 3  # type: ignore[index]
    second = client.get(first.json["links"]["next"], headers=auth(MANAGER))  # type: ignore[index]
    assert ids_of(second) == [made[0].id]
    assert first.json["links"]["last"] == f"{path}?page[size]=2&page[number]=2"  # type: ignore[index]


def test_a_delivery_shows_its_state_and_message_id_not_its_payload(
    client: FlaskClient, auth: Any, factories: Factories, job: Job
) -> None:
    webhook = factories.webhook()
    attempted = dt.datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=dt.UTC)
    delivery = factories.delivery(
        webhook,
        job,
        event="job.failed",
        message_id="msg_correlate_me",
        payload=b'{"secret-ish": "payload"}',
        status="failed",
        attempts=3,
        last_response_status=500,
        last_error="HTTP 500",
        next_attempt_at=attempted,
        delivered_at=None,
    )
    response = client.get(f"{BASE}/{webhook.id}/deliveries", headers=auth(MANAGER))
    assert response.status_code == 200
    assert response.json["data"] == [  # type: ignore[index]
        {
            "id": str(delivery.id),
            "type": "webhook_deliveries",
            "attributes": {
                "event": "job.failed",
                "job_id": str(job.id),
                "message_id": "msg_correlate_me",
                "status": "failed",
                "attempts": 3,
                "last_response_status": 500,
                "last_error": "HTTP 500",
                "next_attempt_at": "2026-03-02T09:30:15.123+00:00",
                "delivered_at": None,
                "created_at": delivery.created_at.isoformat(timespec="milliseconds"),
            },
        }
    ]
    assert b"payload" not in response.data


def test_deliveries_of_an_endpoint_without_any(
    client: FlaskClient, auth: Any, factories: Factories
) -> None:
    webhook = factories.webhook()
    response = client.get(f"{BASE}/{webhook.id}/deliveries", headers=auth(MANAGER))
    assert ids_of(response) == []
    assert response.json["links"]["next"] is None  # type: ignore[index]


# ------------------------------------------------------------------------------ updating


def test_patch_changes_what_it_names_and_nothing_else(
    client: FlaskClient, auth: Any, factories: Factories, session: Session
) -> None:
    webhook = factories.webhook(url="https://h.example/old")
    secret = webhook.secret
    response = patch(
        client,
        auth(MANAGER),
        webhook.id,
        body({"events": ["job.canceled", "job.succeeded"], "enabled": False}, id=str(webhook.id)),
    )
    assert response.status_code == 200, response.json
    attributes = response.json["data"]["attributes"]  # type: ignore[index]
    assert attributes["url"] == "https://h.example/old"
    assert attributes["events"] == ["job.canceled", "job.succeeded"]
    assert attributes["enabled"] is False
    session.refresh(webhook)
    assert (webhook.events, webhook.enabled, webhook.secret) == (
        ["job.canceled", "job.succeeded"],
        False,
        secret,
    )
    url = patch(
        client,
        auth(MANAGER),
        webhook.id,
        body({"url": "https://h.example/new"}, id=str(webhook.id)),
    )
    assert url.json["data"]["attributes"]["url"] == "https://h.example/new"  # type: ignore[index]
    assert url.json["data"]["attributes"]["events"] == ["job.canceled", "job.succeeded"]  # type: ignore[index]


def test_patch_without_attributes_changes_nothing(
    client: FlaskClient, auth: Any, factories: Factories
) -> None:
    webhook = factories.webhook()
    response = patch(client, auth(MANAGER), webhook.id, body(id=str(webhook.id)))
    assert response.status_code == 200, response.json
    assert response.json["data"]["attributes"]["events"] == ALL_EVENTS  # type: ignore[index]


# Stand-ins for the id of another webhook, and for no id at all.
OTHER, DROP = object(), object()


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"id": OTHER}, [("409", "Id mismatch", "/data/id")]),
        ({"id": DROP}, [("400", "Missing id", "/data/id")]),
        ({"id": 0}, [("400", "Invalid id", "/data/id")]),
        ({"id": None}, [("400", "Invalid id", "/data/id")]),
        ({"type": "jobs"}, [("409", "Type mismatch", "/data/type")]),
        ({"attributes": {"enabled": "no"}}, [("422", "Invalid attribute", "/data/attributes/enabled")]),
        ({"attributes": {"events": ["job.failed", "job.failed"]}}, [("422", "Duplicate event", "/data/attributes/events/1")]),
        ({"attributes": {"url": None}}, [("422", "Invalid attribute", "/data/attributes/url")]),
        ({"attributes": {"updated_at": "now"}}, [("422", "Read-only attribute", "/data/attributes/updated_at")]),
        ({"attributes": {"name": "x"}}, [("422", "Unknown attribute", "/data/attributes/name")]),
    ],
)  # fmt: skip
def test_patch_refusals_change_nothing(
    client: FlaskClient,
    auth: Any,
    factories: Factories,
    session: Session,
    resource: dict[str, Any],
    expected: Any,
) -> None:
    webhook = factories.webhook()
    data: dict[str, Any] = {"type": "webhooks", "id": str(webhook.id)} | resource
    if data["id"] is OTHER:
        data["id"] = str(webhook.id + 1)
    elif data["id"] is DROP:
        del data["id"]
    response = patch(client, auth(MANAGER), webhook.id, orjson.dumps({"data": data}))
    assert errors(response) == expected
    assert response.status_code == int(expected[0][0])
    session.refresh(webhook)
    assert (webhook.events, webhook.enabled) == (ALL_EVENTS, True)


# ------------------------------------------------------------------------------ deleting


def test_delete_is_204_then_404_and_takes_the_deliveries_along(
    client: FlaskClient, auth: Any, factories: Factories, session: Session, job: Job
) -> None:
    webhook = factories.webhook()
    kept = factories.webhook()
    factories.delivery(webhook, job)
    factories.delivery(kept, job)
    headers = auth(ADMIN)
    response = client.delete(f"{BASE}/{webhook.id}", headers=headers)
    assert response.status_code == 204
    assert response.data == b""
    assert "Content-Type" not in response.headers
    assert client.get(f"{BASE}/{webhook.id}", headers=headers).status_code == 404
    assert client.delete(f"{BASE}/{webhook.id}", headers=headers).status_code == 404
    assert client.get(f"{BASE}/{webhook.id}/deliveries", headers=headers).status_code == 404
    left = session.scalars(select(WebhookDelivery.webhook_id)).all()
    assert left == [kept.id]
    assert ids_of(client.get(BASE, headers=headers)) == [kept.id]


def test_a_job_id_is_not_a_webhook_id(client: FlaskClient, auth: Any) -> None:
    response = client.get(f"{BASE}/{uuid.uuid4()}", headers=auth(MANAGER))
    assert response.status_code == 404
