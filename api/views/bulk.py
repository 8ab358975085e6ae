"""The five bulk operations of the spec, each accepted as a job."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from api.auth import principal
from api.context import db, services
from api.negotiation import require_acceptable, require_bulk_content_type
from api.parsing import load_json, parse_bulk, parse_flag
from api.views.jobs import answer_for
from shared.jobs import fingerprint, submit_job
from shared.jsonapi import ApiError

blueprint = Blueprint("bulk", __name__)

MAX_IDEMPOTENCY_KEY = 255


def _submit(operation: str) -> Response:
    require_acceptable(request)
    require_bulk_content_type(request)
    settings = services().settings
    body = request.get_data(cache=False)
    document = load_json(body)
    extra = frozenset({"for_all_approvers"}) if operation == "approve" else frozenset()
    items = parse_bulk(document, operation, max_batch=settings.max_batch_size, extra_members=extra)
    options: dict[str, Any] = {}
    if operation == "approve":
        flag = False
        if "for_all_approvers" in request.args:
            flag = parse_flag(
                request.args["for_all_approvers"], "for_all_approvers", parameter=True
            )
        if "for_all_approvers" in document:
            flag = parse_flag(document["for_all_approvers"], "/for_all_approvers")
        options["for_all_approvers"] = flag
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        key = key.strip()
        if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
            raise ApiError.one(
                400,
                "Invalid header",
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters",
            )
    session = db()
    digest = fingerprint(operation, body, options)
    job, created = submit_job(session, principal(), operation, items, options, key, digest)
    session.commit()
    if created:
        # Only after the commit: a worker must find the row the message names.
        services().publish(str(job.id))
    return answer_for(job, accepted=True)


@blueprint.post("/time_entries")
def create() -> Response:
    return _submit("create")


@blueprint.patch("/time_entries")
def update() -> Response:
    return _submit("update")


@blueprint.delete("/time_entries")
def delete() -> Response:
    return _submit("delete")


@blueprint.patch("/time_entries/approve")
def approve() -> Response:
    return _submit("approve")


@blueprint.patch("/time_entries/unapprove")
def unapprove() -> Response:
    return _submit("unapprove")
