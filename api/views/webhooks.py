"""Webhooks: an organization's endpoints (managers and admins only) and their deliveries.

The endpoint's secret is in the answer to its creation and nowhere else: a client that lost
it deletes the endpoint and creates another.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, Response, request, url_for

from api.auth import principal
from api.context import db, services
from api.listing import invalid, list_query, no_query, page_response
from api.negotiation import require_acceptable
from api.parsing import escape, load_json
from shared.domain.limits import parse_id
from shared.jsonapi.errors import CONTENT_TYPE, MEDIA_TYPE, ApiError, Problem, encode
from shared.store.models import Webhook, WebhookDelivery
from shared.store.queries import PageRequest
from shared.webhooks.endpoints import (
    Changes,
    create_webhook,
    delete_webhook,
    deliveries_page,
    find_webhook,
    may_manage,
    read_changes,
    update_webhook,
    webhooks_page,
)

blueprint = Blueprint("webhooks", __name__)

SHOW = "api_v2.webhooks.show"
TYPE = "webhooks"
DELIVERY_TYPE = "webhook_deliveries"
DOCUMENT_MEMBERS = frozenset({"data", "meta"})
RESOURCE_MEMBERS = frozenset({"type", "id", "attributes", "meta"})


def _timestamp(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds")


def webhook_resource(webhook: Webhook, *, secret: bool = False) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "url": webhook.url,
        "events": list(webhook.events),
        "enabled": webhook.enabled,
        "created_at": _timestamp(webhook.created_at),
        "updated_at": _timestamp(webhook.updated_at),
    }
    if secret:
        attributes["secret"] = webhook.secret
    return {
        "id": str(webhook.id),
        "type": TYPE,
        "attributes": attributes,
        "links": {"self": url_for(SHOW, id=str(webhook.id))},
    }


def delivery_resource(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": str(delivery.id),
        "type": DELIVERY_TYPE,
        "attributes": {
            "event": delivery.event,
            "job_id": str(delivery.job_id),
            "message_id": delivery.message_id,
            "status": delivery.status,
            "attempts": delivery.attempts,
            "last_response_status": delivery.last_response_status,
            "last_error": delivery.last_error,
            "next_attempt_at": _timestamp(delivery.next_attempt_at),
            "delivered_at": _timestamp(delivery.delivered_at),
            "created_at": _timestamp(delivery.created_at),
        },
    }


def _document(resource: dict[str, Any], status: int = 200) -> Response:
    body = encode({"data": resource, "meta": {}})
    return Response(body, status=status, content_type=CONTENT_TYPE)


def _require_manager() -> None:
    """Every route, reads too: an endpoint's URL and its deliveries tell where the
    organization's data goes."""
    caller = principal()
    if not may_manage(db(), caller.organization_id, caller.person_id):
        raise ApiError.one(403, "Forbidden", "only managers and admins may see or change webhooks")


def _require_content_type() -> None:
    """JSON:API without an extension: a webhook is one resource, not a bulk batch. Like
    JSON:API 1.0, no media type parameter but the charset this API answers with."""
    params = {name.lower(): value for name, value in request.mimetype_params.items()}
    charset = params.pop("charset", "utf-8").lower()
    if request.mimetype != MEDIA_TYPE or params or charset != "utf-8":
        raise ApiError.one(415, "Unsupported media type", f"send the body as {MEDIA_TYPE!r}")


def _webhook_or_404(value: str) -> Webhook:
    wanted = parse_id(value)
    found = None if wanted is None else find_webhook(db(), principal().organization_id, wanted)
    if found is None:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ApiError.one(404, "Not found", f"webhook {shown} does not exist")
    return found


def _attributes(path_id: str | None) -> dict[str, Any]:
    """The attributes of the request's document, whose envelope is checked here: a resource
    of type webhooks, with the path's id for a PATCH and none for a POST."""
    document = load_json(request.get_data())
    if not isinstance(document, dict):
        raise ApiError.one(400, "Malformed document", "the document must be an object", pointer="")
    problems: list[Problem] = [
        Problem(400, "Unknown member", f"unexpected top-level member {name!r}", f"/{escape(name)}")
        for name in document
        if name not in DOCUMENT_MEMBERS
    ]
    if "meta" in document and not isinstance(document["meta"], dict):
        problems.append(Problem(400, "Invalid member", "meta must be an object", "/meta"))
    data = document.get("data")
    if not isinstance(data, dict):
        problems.append(
            Problem(400, "Invalid document", "data must be a webhooks resource object", "/data")
        )
        raise ApiError(problems)
    for name in data:
        if name not in RESOURCE_MEMBERS:
            problems.append(
                Problem(
                    400, "Unknown member", f"unexpected member {name!r}", f"/data/{escape(name)}"
                )
            )
    if "meta" in data and not isinstance(data["meta"], dict):
        problems.append(Problem(400, "Invalid member", "meta must be an object", "/data/meta"))
    if "type" not in data:
        problems.append(Problem(400, "Missing type", "the resource needs a type", "/data/type"))
    elif data["type"] != TYPE:
        problems.append(
            Problem(409, "Type mismatch", f"the resource must be of type {TYPE!r}", "/data/type")
        )
    if path_id is None:
        if "id" in data:
            problems.append(
                Problem(
                    403,
                    "Client-generated id",
                    "ids are assigned by the server; leave id out when creating",
                    "/data/id",
                )
            )
    elif "id" not in data:
        problems.append(Problem(400, "Missing id", "the resource needs its id", "/data/id"))
    elif not isinstance(data["id"], str):
        problems.append(Problem(400, "Invalid id", "an id is a string", "/data/id"))
    elif data["id"] != path_id:
        problems.append(
            Problem(
                409,
                "Id mismatch",
                f"the resource's id must be the one in the URL, {path_id!r}",
                "/data/id",
            )
        )
    attributes: dict[str, Any] = data.get("attributes", {})
    if not isinstance(attributes, dict):
        problems.append(
            Problem(400, "Invalid member", "attributes must be an object", "/data/attributes")
        )
    if problems:
        raise ApiError(problems)
    return attributes


def _page_request() -> PageRequest:
    """page[number] and page[size]; a collection in a fixed order takes no sort."""
    if "sort" in request.args:
        raise invalid("sort", "sort is not a supported query parameter", "Unsupported parameter")
    return list_query(request.args, filters={}, sorts=("id",), default_sort="id").page


def _changes(path_id: str | None) -> Changes:
    attributes = _attributes(path_id)
    allow_private = services().settings.webhook_allow_private
    return read_changes(attributes, creating=path_id is None, allow_private=allow_private)


@blueprint.get("/webhooks")
def index() -> Response:
    require_acceptable(request)
    _require_manager()
    page = webhooks_page(db(), principal().organization_id, _page_request())
    data = [webhook_resource(webhook) for webhook in page.items]
    return page_response(page, data, path=request.path, args=request.args)


@blueprint.post("/webhooks")
def create() -> Response:
    require_acceptable(request)
    _require_manager()
    no_query(request.args)
    _require_content_type()
    changes = _changes(None)
    session = db()
    webhook = create_webhook(session, principal().organization_id, changes)
    session.commit()
    response = _document(webhook_resource(webhook, secret=True), 201)
    response.headers["Location"] = url_for(SHOW, id=str(webhook.id))
    return response


@blueprint.get("/webhooks/<digits:id>")
def show(id: str) -> Response:
    require_acceptable(request)
    _require_manager()
    no_query(request.args)
    return _document(webhook_resource(_webhook_or_404(id)))


@blueprint.patch("/webhooks/<digits:id>")
def update(id: str) -> Response:
    require_acceptable(request)
    _require_manager()
    no_query(request.args)
    _require_content_type()
    webhook = _webhook_or_404(id)
    changes = _changes(id)
    session = db()
    update_webhook(session, webhook, changes)
    session.commit()
    return _document(webhook_resource(webhook))


@blueprint.delete("/webhooks/<digits:id>")
def destroy(id: str) -> Response:
    require_acceptable(request)
    _require_manager()
    no_query(request.args)
    session = db()
    delete_webhook(session, _webhook_or_404(id))
    session.commit()
    response = Response(status=204)
    response.headers.pop("Content-Type", None)  # no body, so no media type
    return response


@blueprint.get("/webhooks/<digits:id>/deliveries")
def deliveries(id: str) -> Response:
    require_acceptable(request)
    _require_manager()
    wanted = _page_request()
    page = deliveries_page(db(), _webhook_or_404(id), wanted)
    data = [delivery_resource(delivery) for delivery in page.items]
    return page_response(page, data, path=request.path, args=request.args)
