"""The five bulk operations of the spec, each accepted as a job."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, request
from msgspec import UNSET

from api.auth import principal
from api.context import db, services
from api.listing import include_query
from api.negotiation import require_acceptable, require_bulk_content_type
from api.parsing import check_bulk, load_json, parse_flag
from api.views.jobs import answer_for
from shared.domain import documents
from shared.jobs.submit import submit_job
from shared.jsonapi.errors import ApiError
from shared.store.models import Operation
from shared.store.queries import ENTRY_INCLUDES

blueprint = Blueprint("bulk", __name__)

MAX_IDEMPOTENCY_KEY = 255
# Visible ASCII, with spaces inside only: what the OpenAPI document declares.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")
# The spec's one query parameter of a bulk request. Besides it, `include` where the result
# has entries (as on reads); any other is refused, not ignored.
APPROVE_PARAMETERS = ("for_all_approvers",)


def _checked(operation: Operation, body: bytes, max_batch: int) -> Any:
    """The typed document. The common valid body takes the compiled fast path; any other is
    checked in full, so the client hears of every problem with its pointer."""
    try:
        document = documents.decode(operation, body)
    except documents.NotWellFormed as exc:
        check_bulk(load_json(body), operation, max_batch=max_batch)
        # Both checks must agree; should the full one find nothing, say what the fast one saw.
        raise ApiError.one(400, "Malformed document", str(exc), pointer="") from None
    if len(document.data) > max_batch:
        raise ApiError.one(
            413,
            "Batch too large",
            f"a batch holds at most {max_batch} entries; this one has {len(document.data)}",
            pointer="/data",
        )
    return document


def _submit(operation: Operation) -> Response:
    require_acceptable(request)
    require_bulk_content_type(request)
    include = include_query(
        request.args,
        # A delete answers 204, without a body to include anything in.
        includes=() if operation == Operation.DELETE else ENTRY_INCLUDES,
        allowed=APPROVE_PARAMETERS if operation == Operation.APPROVE else (),
    )
    settings = services().settings
    body = request.get_data(cache=False)
    document = _checked(operation, body, settings.max_batch_size)
    options: dict[str, Any] = {}
    if include:
        # In one order: the options are part of what makes two submissions the same request.
        options["include"] = [name for name in ENTRY_INCLUDES if name in include]
    if operation == Operation.APPROVE:
        flag = False
        if "for_all_approvers" in request.args:
            flag = parse_flag(
                request.args["for_all_approvers"], "for_all_approvers", parameter=True
            )
        if document.for_all_approvers is not UNSET:
            flag = document.for_all_approvers
        options["for_all_approvers"] = flag
    key = request.headers.get("Idempotency-Key")
    if key is not None and (len(key) > MAX_IDEMPOTENCY_KEY or not IDEMPOTENCY_KEY.fullmatch(key)):
        raise ApiError.one(
            400,
            "Invalid header",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
            " (spaces inside allowed)",
        )
    session = db()
    job, created = submit_job(
        session,
        principal(),
        operation,
        body,
        options,
        total=len(document.data),
        settings=settings,
        idempotency_key=key,
    )
    session.commit()
    if not created:
        return answer_for(job, accepted=True)
    # Only after the commit: a worker must find the row the message names.
    return answer_for(job, accepted=True, publish=lambda: services().publish(str(job.id), job.rank))


@blueprint.post("/time_entries")
def create() -> Response:
    return _submit(Operation.CREATE)


@blueprint.patch("/time_entries")
def update() -> Response:
    return _submit(Operation.UPDATE)


@blueprint.delete("/time_entries")
def delete() -> Response:
    return _submit(Operation.DELETE)


@blueprint.patch("/time_entries/approve")
def approve() -> Response:
    return _submit(Operation.APPROVE)


@blueprint.patch("/time_entries/unapprove")
def unapprove() -> Response:
    return _submit(Operation.UNAPPROVE)
