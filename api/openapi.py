"""The OpenAPI 3.1 description of the whole HTTP API, served at GET /api/v2/openapi.json.

Built in Python so that limits, enumerations and attribute lists come from the code that
enforces them; the request bodies are the msgspec structs that decode them, as JSON Schema.
tests/api/test_openapi.py checks that it names exactly the app's routes and that real
answers conform to it; a schemathesis run against the live app checks the rest.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
import orjson

from api.listing import MAX_PAGE_NUMBER
from api.negotiation import BULK_CONTENT_TYPE, MAX_WAIT
from api.parsing import FLAG_VALUES
from api.telemetry import ACCEPTED_ID
from api.telemetry import HEADER as REQUEST_ID
from api.views.bulk import IDEMPOTENCY_KEY, MAX_IDEMPOTENCY_KEY
from shared.domain.documents import DOCUMENTS
from shared.domain.limits import ID_PATTERN, MAX_MINUTES
from shared.jsonapi.errors import MEDIA_TYPE
from shared.jsonapi.render import RELATIONSHIPS
from shared.store.columns import COST_COLUMNS, REFERENCE_NAMED
from shared.store.models import DeliveryStatus, JobStatus, Operation, WebhookEvent
from shared.store.queries import (
    DEFAULT_PAGE_SIZE,
    ENTRY_SORTS,
    ENTRY_STATUSES,
    JOB_SORTS,
    MAX_PAGE_SIZE,
)
from shared.webhooks.endpoints import SECRET_BYTES, SECRET_PREFIX, URL_PATTERN
from shared.webhooks.targets import MAX_URL_LENGTH

Schema = dict[str, Any]

# info.version: this description of the /api/v2 API; bump it when the API changes.
VERSION = "2.0.0"
NULLABLE_TIMESTAMPS = (
    "started_at",
    "timer_started_at",
    "timer_stopped_at",
    "approved_at",
    "rejected_at",
)

ERROR_DESCRIPTIONS = {
    400: "The request is malformed: see each error's source",
    401: "X-Auth-Token is missing or unknown",
    403: "Not allowed: wrong organization, read-only token, or a permission is missing",
    404: "No such resource in your organization",
    406: f"Accept allows neither {MEDIA_TYPE} nor */*",
    409: "Conflict: a type mismatch, a locked entry, or a job in the wrong state",
    410: "The job's result was deleted by retention",
    413: "The body or the batch is too large",
    414: "The request target is too long",
    415: f"The body must be sent as {BULK_CONTENT_TYPE}",
    422: "Validation failed: see each error's source",
    431: "A request header is too long",
    429: "Your organization has as many unfinished jobs or entries as its limits allow;"
    " retry after Retry-After seconds",
    500: "A job failed on an internal error (its stored answer)",
    503: "The database is unavailable; retry after Retry-After seconds",
}
AUTHENTICATED = (401, 403, 406, 414, 431, 503)


def ref(name: str, kind: str = "schemas") -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def nullable(schema: Schema) -> Schema:
    kind = schema["type"]
    return schema | {"type": [kind, "null"]}


def _text(**extra: Any) -> Schema:
    return {"type": "string", **extra}


def _integer(**extra: Any) -> Schema:
    return {"type": "integer", **extra}


def _object(properties: Schema, required: tuple[str, ...] = (), *, closed: bool = True) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


TIMESTAMP = _text(format="date-time")
RESOURCE_ID = _text(pattern=f"^{ID_PATTERN}$", examples=["7781"])


def _listed(word: str) -> Schema:
    """One value matching `word`, or several separated by commas."""
    return _text(pattern=f"^{word}(,{word})*$")


# ------------------------------------------------------------------------------- schemas


def _linkage(kind: str) -> Schema:
    return _object({"type": {"const": kind}, "id": RESOURCE_ID}, ("type", "id"))


def _to_one(kind: str) -> Schema:
    """A relationship that `include` can fill: linkage (or null), else meta.included false."""
    return {
        "oneOf": [
            _object({"data": nullable(_linkage(kind))}, ("data",)),
            ref("NotIncluded"),
        ]
    }


def _organization() -> Schema:
    return _object({"data": _linkage("organizations")}, ("data",))


def _time_entry_attributes() -> Schema:
    properties: Schema = {
        "date": _text(format="date"),
        "created_at": TIMESTAMP,
        "time": _integer(minimum=0, maximum=MAX_MINUTES),
        "billable_time": _integer(minimum=0),
        "recognized_time": _integer(),
        "note": nullable(_text()),
        "track_method_id": _integer(),
        "approved": {"type": "boolean"},
        "updated_at": TIMESTAMP,
        "calendar_event_id": nullable(_integer()),
        "invoice_attribution_id": nullable(_integer()),
        "invoiced": {"type": "boolean"},
        "overhead": {"type": "boolean"},
        "rejected": {"type": "boolean"},
        "rejected_reason": nullable(_text()),
        "last_activity_at": TIMESTAMP,
        "submitted": {"type": "boolean"},
        "currency": _text(minLength=3, maxLength=3),
        "currency_default": _text(minLength=3, maxLength=3),
        "currency_normalized": _text(minLength=3, maxLength=3),
    }
    for name in NULLABLE_TIMESTAMPS:
        properties[name] = nullable(TIMESTAMP)
    for name in COST_COLUMNS:
        properties[name] = _integer(description="cents")
    return _object(properties, tuple(properties))


def _time_entry() -> Schema:
    relationships: Schema = {"organization": _organization()}
    for name in RELATIONSHIPS[1:]:
        reference = REFERENCE_NAMED.get(name)
        relationships[name] = _to_one(reference.type) if reference else ref("NotIncluded")
    return _object(
        {
            "id": RESOURCE_ID,
            "type": {"const": "time_entries"},
            "attributes": ref("TimeEntryAttributes"),
            "relationships": _object(relationships, tuple(relationships)),
        },
        ("id", "type", "attributes", "relationships"),
    )


def _directory(kind: str, attributes: Schema, relationships: tuple[str, ...]) -> Schema:
    related: Schema = {"organization": _organization()}
    for name in relationships:
        related[name] = ref("NotIncluded")
    attributes = attributes | {"created_at": TIMESTAMP}
    return _object(
        {
            "id": RESOURCE_ID,
            "type": {"const": kind},
            "attributes": _object(attributes, tuple(attributes)),
            "relationships": _object(related, tuple(related)),
        },
        ("id", "type", "attributes", "relationships"),
    )


def _job() -> Schema:
    attributes = _object(
        {
            "status": {"enum": list(JobStatus)},
            "operation": {"enum": list(Operation)},
            "total": _integer(minimum=0),
            "processed": _integer(minimum=0),
            "errors": _integer(minimum=0, description="error objects in a failed job's result"),
            "created_at": TIMESTAMP,
            "started_at": nullable(TIMESTAMP),
            "finished_at": nullable(TIMESTAMP),
            "attempts": _integer(minimum=0),
        },
        (
            "status",
            "operation",
            "total",
            "processed",
            "errors",
            "created_at",
            "started_at",
            "finished_at",
            "attempts",
        ),
    )
    return _object(
        {
            "id": _text(format="uuid"),
            "type": {"const": "jobs"},
            "attributes": attributes,
            "links": _object({"self": _text()}, ("self",)),
            "meta": _object(
                {"result": _text(description="where a finished job's result is")}, ("result",)
            ),
        },
        ("id", "type", "attributes", "links"),
    )


def _webhook(*, secret: bool) -> Schema:
    properties: Schema = {
        "url": _text(),
        "events": ref("WebhookEvents"),
        "enabled": {"type": "boolean"},
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
    }
    if secret:
        # Base64 of SECRET_BYTES bytes, padded: what the Standard Webhooks libraries take.
        encoded = -(-SECRET_BYTES // 3) * 4
        padding = "=" * (-SECRET_BYTES % 3)
        body = encoded - len(padding)
        properties["secret"] = _text(
            pattern=f"^{SECRET_PREFIX}[A-Za-z0-9+/]{{{body}}}{padding}$",
            description="the signing key; shown in this answer only",
        )
    return _object(
        {
            "id": RESOURCE_ID,
            "type": {"const": "webhooks"},
            "attributes": _object(properties, tuple(properties)),
            "links": _object({"self": _text()}, ("self",)),
        },
        ("id", "type", "attributes", "links"),
    )


def _webhook_request(*, creating: bool) -> Schema:
    """The body of a POST (no id, url required) or of a PATCH (the path's id, any attribute)."""
    attributes = _object(
        {
            "url": _text(
                maxLength=MAX_URL_LENGTH,
                pattern=URL_PATTERN,
                description=(
                    "https (or http where TIMEBATCH_WEBHOOK_ALLOW_PRIVATE=1); a host that"
                    " resolves to a loopback, private, link-local, multicast or otherwise"
                    " internal address is refused (422, `Target refused`) unless private targets"
                    " are allowed"
                ),
            ),
            "events": ref("WebhookEvents"),
            "enabled": {"type": "boolean", "description": "default true"},
        },
        ("url",) if creating else (),
    )
    resource: Schema = {
        "type": {"const": "webhooks"},
        "attributes": attributes,
        "meta": _object({}, closed=False),
    }
    required: tuple[str, ...] = ("type", "attributes")
    if not creating:
        resource["id"] = _text(description="the id in the path, as a string (else 409)")
        required = ("type", "id")
    return _object(
        {"data": _object(resource, required), "meta": _object({}, closed=False)}, ("data",)
    )


def _delivery() -> Schema:
    properties: Schema = {
        "event": {"enum": list(WebhookEvent)},
        "job_id": _text(format="uuid"),
        "message_id": _text(description="the webhook-id header the receiver sees"),
        "status": {"enum": list(DeliveryStatus)},
        "attempts": _integer(minimum=0),
        "last_response_status": nullable(_integer()),
        "last_error": nullable(_text()),
        "next_attempt_at": nullable(TIMESTAMP),
        "delivered_at": nullable(TIMESTAMP),
        "created_at": TIMESTAMP,
    }
    return _object(
        {
            "id": RESOURCE_ID,
            "type": {"const": "webhook_deliveries"},
            "attributes": _object(properties, tuple(properties)),
        },
        ("id", "type", "attributes"),
    )


def _job_event() -> Schema:
    """One event of a job's stream, as a client's SSE parser reads it; OpenAPI 3.1 has
    `schema` of text/event-stream describe each event."""
    progress = _object(
        {
            "status": {"enum": list(JobStatus)},
            "processed": _integer(minimum=0),
            "total": _integer(minimum=0),
        },
        ("status", "processed", "total"),
    )
    finished = _object(
        {
            "status": {"enum": list(JobStatus)},
            "result_status": nullable(_integer()),
            "links": _object({"result": nullable(_text())}, ("result",)),
        },
        ("status", "result_status", "links"),
    )
    return _object(
        {
            "event": {"enum": ["progress", "finished"]},
            "data": _text(
                contentMediaType="application/json",
                contentSchema={"oneOf": [progress, finished]},
                description="JSON: {status, processed, total} for progress; {status,"
                " result_status, links: {result}} for the final finished event",
            ),
            "id": _text(description="send it back as Last-Event-ID to resume after it"),
            "retry": _integer(minimum=0),
        },
        ("event", "data", "id"),
    )


def _document(data: Schema, *, included: bool = False, paged: bool = False) -> Schema:
    properties: Schema = {"data": data, "meta": _object({}, closed=False)}
    required = ["data", "meta"]
    if included:
        properties["included"] = {"type": "array", "items": ref("DirectoryResource")}
    if paged:
        properties["meta"] = ref("PageMeta")
        properties["links"] = ref("PageLinks")
        required.append("links")
    return _object(properties, tuple(required))


def _bulk_documents(max_batch_size: int | None) -> Schema:
    """The request bodies, from the structs that decode them, and the batch size a setting
    limits."""
    kinds = dict.fromkeys(DOCUMENTS.values())
    _, components = msgspec.json.schema_components(
        kinds, ref_template="#/components/schemas/{name}"
    )
    if max_batch_size is not None:
        for kind in kinds:
            components[kind.__name__]["properties"]["data"]["maxItems"] = max_batch_size
    return components


def schemas(max_batch_size: int | None = None) -> Schema:
    return {
        "Error": _object(
            {
                "status": _text(pattern="^[1-5][0-9][0-9]$"),
                "title": _text(minLength=1),
                "code": _text(),
                "detail": _text(minLength=1),
                "source": _object(
                    {"pointer": _text(), "parameter": _text()},
                ),
            },
            ("status", "title", "detail"),
        ),
        "ErrorDocument": _object(
            {
                "errors": {"type": "array", "minItems": 1, "items": ref("Error")},
                "jsonapi": _object({"version": _text()}),
            },
            ("errors",),
        ),
        "NotIncluded": _object(
            {"meta": _object({"included": {"const": False}}, ("included",))}, ("meta",)
        ),
        "TimeEntryAttributes": _time_entry_attributes(),
        "TimeEntry": _time_entry(),
        "Person": _directory(
            "people",
            {"first_name": _text(), "last_name": _text(), "email": nullable(_text())},
            ("manager",),
        ),
        "Service": _directory(
            "services", {"name": _text(), "billable": {"type": "boolean"}}, ("approver",)
        ),
        "Task": _directory("tasks", {"title": _text()}, ("service",)),
        "DirectoryResource": {
            "oneOf": [ref("Person"), ref("Service"), ref("Task")],
        },
        "Job": _job(),
        "JobDocument": _document(ref("Job")),
        "JobCollection": _document({"type": "array", "items": ref("Job")}, paged=True),
        "TimeEntryResult": _document({"type": "array", "items": ref("TimeEntry")}, included=True),
        "TimeEntryCollection": _document(
            {"type": "array", "items": ref("TimeEntry")}, included=True, paged=True
        ),
        "TimeEntryDocument": _document(ref("TimeEntry"), included=True),
        "PersonCollection": _document({"type": "array", "items": ref("Person")}, paged=True),
        "PersonDocument": _document(ref("Person")),
        "ServiceCollection": _document({"type": "array", "items": ref("Service")}, paged=True),
        "ServiceDocument": _document(ref("Service")),
        "TaskCollection": _document({"type": "array", "items": ref("Task")}, paged=True),
        "TaskDocument": _document(ref("Task")),
        "WebhookEvents": {
            "type": "array",
            "items": {"enum": list(WebhookEvent)},
            "minItems": 1,
            "uniqueItems": True,
            "description": f"default all of {', '.join(WebhookEvent)}",
        },
        "Webhook": _webhook(secret=False),
        "CreatedWebhook": _webhook(secret=True),
        "WebhookDocument": _document(ref("Webhook")),
        "CreatedWebhookDocument": _document(ref("CreatedWebhook")),
        "WebhookCollection": _document({"type": "array", "items": ref("Webhook")}, paged=True),
        "WebhookCreateDocument": _webhook_request(creating=True),
        "WebhookUpdateDocument": _webhook_request(creating=False),
        "WebhookDelivery": _delivery(),
        "WebhookDeliveryCollection": _document(
            {"type": "array", "items": ref("WebhookDelivery")}, paged=True
        ),
        "JobEvent": _job_event(),
        "PageMeta": _object(
            {
                "current_page": _integer(minimum=1),
                "total_pages": _integer(minimum=0),
                "total_count": _integer(minimum=0),
                "page_size": _integer(minimum=1, maximum=MAX_PAGE_SIZE),
                "max_page_size": {"const": MAX_PAGE_SIZE},
            },
            ("current_page", "total_pages", "total_count", "page_size", "max_page_size"),
        ),
        "PageLinks": _object(
            {
                "self": _text(),
                "first": _text(),
                "prev": nullable(_text()),
                "next": nullable(_text()),
                "last": _text(),
            },
            ("self", "first", "prev", "next", "last"),
        ),
        "Health": _object(
            {"database": {"enum": ["ok", "down"]}, "broker": {"enum": ["ok", "down"]}},
            ("database", "broker"),
        ),
        **_bulk_documents(max_batch_size),
    }


# ---------------------------------------------------------------------------- parameters


def parameters() -> Schema:
    def query(name: str, schema: Schema, description: str) -> Schema:
        return {"name": name, "in": "query", "schema": schema, "description": description}

    comma_ids = _listed(ID_PATTERN)
    return {
        "JobId": {
            "name": "job_id",
            "in": "path",
            "required": True,
            "schema": _text(format="uuid"),
        },
        "ResourceId": {"name": "id", "in": "path", "required": True, "schema": RESOURCE_ID},
        "LastEventId": {
            "name": "Last-Event-ID",
            "in": "header",
            "schema": _text(),
            "description": (
                "the id of the last event received: the stream resumes after it; when it is"
                " the finished event's, there is nothing more to send (204)"
            ),
        },
        "RequestId": {
            "name": REQUEST_ID,
            "in": "header",
            "schema": _text(),
            "description": (
                "echoed back when it is 1 to 128 letters, digits and `._:-`; when absent or"
                " anything else, replaced by one the app makes up"
            ),
        },
        "Prefer": {
            "name": "Prefer",
            "in": "header",
            # RFC 7240: a preference the server does not know is ignored, not refused.
            "schema": _text(examples=["wait=10"]),
            "description": (
                f"`wait=N` (RFC 7240, N capped at {MAX_WAIT}): wait up to N seconds and answer"
                " with the job's final result if it finishes by then; other preferences are"
                " ignored"
            ),
        },
        "IdempotencyKey": {
            "name": "Idempotency-Key",
            "in": "header",
            "schema": _text(
                minLength=1, maxLength=MAX_IDEMPOTENCY_KEY, pattern=f"^{IDEMPOTENCY_KEY.pattern}$"
            ),
            "description": (
                "the same key with the same body returns the same job (kept at least 24 hours);"
                " with another body: 422"
            ),
        },
        "PageNumber": query(
            "page[number]", _integer(minimum=1, maximum=MAX_PAGE_NUMBER), "1-based page number"
        ),
        "PageSize": query(
            "page[size]",
            _integer(minimum=1, maximum=MAX_PAGE_SIZE),
            f"resources per page, default {DEFAULT_PAGE_SIZE}",
        ),
        "FilterId": query("filter[id]", comma_ids, "ids, separated by commas"),
        "FilterPersonId": query("filter[person_id]", comma_ids, "people's ids"),
        "FilterServiceId": query("filter[service_id]", comma_ids, "services' ids"),
        "FilterTaskId": query("filter[task_id]", comma_ids, "tasks' ids"),
        "FilterDate": query("filter[date]", _text(format="date"), "entries of that day"),
        "FilterAfter": query("filter[after]", _text(format="date"), "entries on or after"),
        "FilterBefore": query("filter[before]", _text(format="date"), "entries on or before"),
        "FilterEntryStatus": query(
            "filter[status]",
            _listed(f"({'|'.join(ENTRY_STATUSES)})"),
            f"any of {', '.join(ENTRY_STATUSES)}, separated by commas",
        ),
        "EntrySort": query(
            "sort",
            _listed(f"-?({'|'.join(ENTRY_SORTS)})"),
            "sort keys separated by commas, each descending with a leading -; default -date",
        ),
        "EntryInclude": query(
            "include",
            _text(pattern="^(person|service|task)(,(person|service|task))*$"),
            "related resources to add under `included`",
        ),
        "FilterJobStatus": query(
            "filter[status]",
            _listed(f"({'|'.join(JobStatus)})"),
            "job statuses, separated by commas",
        ),
        "JobSort": query(
            "sort", _listed(f"-?({'|'.join(JOB_SORTS)})"), "default -created_at (newest first)"
        ),
        "FilterOperation": query(
            "filter[operation]",
            _listed(f"({'|'.join(Operation)})"),
            "operations, separated by commas",
        ),
        "ForAllApprovers": query(
            "for_all_approvers",
            {"enum": list(FLAG_VALUES)},
            "as the top-level member of the same name",
        ),
    }


# ----------------------------------------------------------------------------- responses


def _headers(*names: str) -> Schema:
    found = {REQUEST_ID: ref("RequestId", "headers")}
    for name in names:
        found[name] = ref(name, "headers")
    return found


def _json_api(schema: Schema, description: str, *headers: str) -> Schema:
    return {
        "description": description,
        "headers": _headers(*headers),
        "content": {MEDIA_TYPE: {"schema": schema}},
    }


def _error(status: int) -> Schema:
    headers = ("Retry-After",) if status in (429, 503) else ()
    return _json_api(ref("ErrorDocument"), ERROR_DESCRIPTIONS[status], *headers)


def _responses(answers: dict[int, Schema], errors: tuple[int, ...]) -> Schema:
    found = {str(status): answer for status, answer in answers.items()}
    for status in sorted(set(errors)):
        found.setdefault(str(status), _error(status))
    return dict(sorted(found.items()))


def _no_content(description: str, *headers: str) -> Schema:
    return {"description": description, "headers": _headers(*headers)}


def headers() -> Schema:
    def header(description: str, schema: Schema, *, required: bool = True) -> Schema:
        return {"description": description, "required": required, "schema": schema}

    return {
        "RequestId": header(
            "the request's id, as in the logs", _text(pattern=f"^{ACCEPTED_ID.pattern}$")
        ),
        "Location": header("where to go next", _text()),
        "Content-Location": header("the job this answer is about", _text()),
        # Absent once the job is finished (an idempotent replay of a finished job).
        "Retry-After": header(
            "seconds to wait before asking again", _text(pattern="^[0-9]+$"), required=False
        ),
        "Preference-Applied": header("the Prefer: wait that was honoured", _text()),
    }


# ---------------------------------------------------------------------------- operations

JOB_ACCEPTED = "Accepted: the job is stored and queued; poll its Location"
RESULT_ERRORS = (400, 403, 404, 409, 422, 500)


def _submission(
    summary: str,
    operation_id: str,
    operation: Operation,
    final: int,
    *,
    query: tuple[str, ...] = (),
) -> Schema:
    answers: dict[int, Schema] = {
        202: _json_api(
            ref("JobDocument"), JOB_ACCEPTED, "Location", "Content-Location", "Retry-After"
        )
    }
    if final == 204:
        answers[204] = _no_content(
            "With Prefer: wait, the job finished: entries deleted",
            "Content-Location",
            "Preference-Applied",
        )
    else:
        answers[final] = _json_api(
            ref("TimeEntryResult"),
            "With Prefer: wait, the job finished: the entries, in request order",
            "Content-Location",
            "Preference-Applied",
        )
        # A result with entries can carry what they reference, as a read of them can.
        query = (*query, "EntryInclude")
    return {
        "tags": ["bulk"],
        "operationId": operation_id,
        "summary": summary,
        "parameters": [
            ref("Prefer", "parameters"),
            ref("IdempotencyKey", "parameters"),
            ref("RequestId", "parameters"),
            *(ref(name, "parameters") for name in query),
        ],
        "requestBody": {
            "required": True,
            "content": {BULK_CONTENT_TYPE: {"schema": ref(DOCUMENTS[operation].__name__)}},
        },
        "responses": _responses(answers, (*AUTHENTICATED, 413, 415, 429, *RESULT_ERRORS)),
    }


def _read(
    summary: str, operation: str, schema: str, *, parameters: tuple[str, ...], one: bool
) -> Schema:
    errors = (*AUTHENTICATED, 400, 404) if one else (*AUTHENTICATED, 400)
    return {
        "tags": ["reading"],
        "operationId": operation,
        "summary": summary,
        "parameters": [
            *(ref(name, "parameters") for name in parameters),
            ref("RequestId", "parameters"),
        ],
        "responses": _responses({200: _json_api(ref(schema), "OK")}, errors),
    }


def paths() -> Schema:
    paging = ("PageNumber", "PageSize")
    entry_filters = (
        "FilterPersonId",
        "FilterServiceId",
        "FilterTaskId",
        "FilterDate",
        "FilterAfter",
        "FilterBefore",
        "FilterEntryStatus",
    )
    job = [ref("JobId", "parameters"), ref("RequestId", "parameters")]
    found: Schema = {
        "/api/v2/time_entries": {
            "get": _read(
                "List time entries",
                "listTimeEntries",
                "TimeEntryCollection",
                parameters=(*entry_filters, "EntrySort", "EntryInclude", *paging),
                one=False,
            ),
            "post": _submission("Create time entries", "createTimeEntries", Operation.CREATE, 201),
            "patch": _submission("Update time entries", "updateTimeEntries", Operation.UPDATE, 200),
            "delete": _submission(
                "Delete time entries", "deleteTimeEntries", Operation.DELETE, 204
            ),
        },
        "/api/v2/time_entries/approve": {
            "patch": _submission(
                "Approve time entries",
                "approveTimeEntries",
                Operation.APPROVE,
                200,
                query=("ForAllApprovers",),
            )
        },
        "/api/v2/time_entries/unapprove": {
            "patch": _submission(
                "Unapprove time entries", "unapproveTimeEntries", Operation.UNAPPROVE, 200
            )
        },
        "/api/v2/time_entries/{id}": {
            "get": _read(
                "Show a time entry",
                "showTimeEntry",
                "TimeEntryDocument",
                parameters=("ResourceId", "EntryInclude"),
                one=True,
            )
        },
        "/api/v2/jobs": {
            "get": {
                "tags": ["jobs"],
                "operationId": "listJobs",
                "summary": "List your organization's jobs, newest first",
                "parameters": [
                    ref("FilterJobStatus", "parameters"),
                    ref("FilterOperation", "parameters"),
                    ref("JobSort", "parameters"),
                    *(ref(name, "parameters") for name in paging),
                    ref("RequestId", "parameters"),
                ],
                "responses": _responses(
                    {200: _json_api(ref("JobCollection"), "OK")}, (*AUTHENTICATED, 400)
                ),
            }
        },
        "/api/v2/jobs/{job_id}": {
            "get": {
                "tags": ["jobs"],
                "operationId": "showJob",
                "summary": "Poll a job: 200 while it runs, 303 to its result once finished",
                "parameters": [*job, ref("Prefer", "parameters")],
                "responses": _responses(
                    {
                        200: _json_api(
                            ref("JobDocument"),
                            "Queued, running or canceled",
                            "Content-Location",
                        ),
                        303: _no_content("Finished: see Location for the result", "Location"),
                    },
                    (*AUTHENTICATED, 400, 404),
                ),
            },
            "delete": {
                "tags": ["jobs"],
                "operationId": "cancelJob",
                "summary": "Cancel a job that has not started",
                "parameters": job,
                "responses": _responses(
                    {200: _json_api(ref("JobDocument"), "Canceled", "Content-Location")},
                    (*AUTHENTICATED, 400, 404, 409),
                ),
            },
        },
        "/api/v2/jobs/{job_id}/result": {
            "get": {
                "tags": ["jobs"],
                "operationId": "showJobResult",
                "summary": "What the synchronous API would have answered",
                "description": (
                    "A succeeded job answers 201 (create) or 200 with the entries as they were"
                    " when it committed, or 204 (delete); a failed job its error document."
                    " 409 before the job finishes, 410 once retention deleted the result."
                ),
                "parameters": job,
                "responses": _responses(
                    {
                        200: _json_api(
                            ref("TimeEntryResult"),
                            "Updated, approved or unapproved",
                            "Content-Location",
                        ),
                        201: _json_api(ref("TimeEntryResult"), "Created", "Content-Location"),
                        204: _no_content("Deleted", "Content-Location"),
                    },
                    (*AUTHENTICATED, 404, 410, *RESULT_ERRORS),
                ),
            }
        },
    }
    found["/api/v2/jobs/{job_id}/events"] = _job_events(job)
    found |= _webhooks()
    for plural, singular, name in (
        ("people", "person", "Person"),
        ("services", "service", "Service"),
        ("tasks", "task", "Task"),
    ):
        filters = ("FilterId", "FilterServiceId") if plural == "tasks" else ("FilterId",)
        found[f"/api/v2/{plural}"] = {
            "get": _read(
                f"List {plural}",
                f"list{name}s" if plural != "people" else "listPeople",
                f"{name}Collection",
                parameters=(*filters, *paging),
                one=False,
            )
        }
        found[f"/api/v2/{plural}/{{id}}"] = {
            "get": _read(
                f"Show a {singular}",
                f"show{name}",
                f"{name}Document",
                parameters=("ResourceId",),
                one=True,
            )
        }
    found |= _outside_api()
    return dict(sorted(found.items()))


WEBHOOK_ERRORS = (*AUTHENTICATED, 400)
WEBHOOK_BODY_ERRORS = (*WEBHOOK_ERRORS, 409, 413, 415, 422)


def _webhook_body_answers() -> dict[int, Schema]:
    """The refusals of a body that differ from the bulk submissions'."""
    return {
        409: _json_api(
            ref("ErrorDocument"), "A resource of another type, or an id other than the path's"
        ),
        415: _json_api(ref("ErrorDocument"), f"The body must be sent as {MEDIA_TYPE}"),
    }


def _webhooks() -> Schema:
    """Managers' and admins' only (403 for anyone else, reads too), per organization."""
    one = [ref("ResourceId", "parameters"), ref("RequestId", "parameters")]
    paging = [ref("PageNumber", "parameters"), ref("PageSize", "parameters")]

    def operation(name: str, summary: str, parameters: list[Schema], answers: dict[int, Schema],
                  errors: tuple[int, ...], body: str | None = None) -> Schema:  # fmt: skip
        found: Schema = {
            "tags": ["webhooks"],
            "operationId": name,
            "summary": summary,
            "parameters": parameters,
        }
        if body is not None:
            found["requestBody"] = {
                "required": True,
                "content": {MEDIA_TYPE: {"schema": ref(body)}},
            }
            answers = _webhook_body_answers() | answers
        found["responses"] = _responses(answers, errors)
        return found

    return {
        "/api/v2/webhooks": {
            "get": operation(
                "listWebhooks",
                "List your organization's webhook endpoints, oldest first",
                [*paging, ref("RequestId", "parameters")],
                {200: _json_api(ref("WebhookCollection"), "OK")},
                WEBHOOK_ERRORS,
            ),
            "post": operation(
                "createWebhook",
                "Register an endpoint; the answer holds its secret, shown this once",
                [ref("RequestId", "parameters")],
                {201: _json_api(ref("CreatedWebhookDocument"), "Created", "Location")},
                WEBHOOK_BODY_ERRORS,
                "WebhookCreateDocument",
            ),
        },
        "/api/v2/webhooks/{id}": {
            "get": operation(
                "showWebhook",
                "Show a webhook endpoint",
                one,
                {200: _json_api(ref("WebhookDocument"), "OK")},
                (*WEBHOOK_ERRORS, 404),
            ),
            "patch": operation(
                "updateWebhook",
                "Change an endpoint's url, events or enabled",
                one,
                {200: _json_api(ref("WebhookDocument"), "Updated")},
                (*WEBHOOK_BODY_ERRORS, 404),
                "WebhookUpdateDocument",
            ),
            "delete": operation(
                "deleteWebhook",
                "Delete an endpoint and its deliveries",
                one,
                {204: _no_content("Deleted")},
                (*WEBHOOK_ERRORS, 404),
            ),
        },
        "/api/v2/webhooks/{id}/deliveries": {
            "get": operation(
                "listWebhookDeliveries",
                "An endpoint's deliveries, newest first",
                [ref("ResourceId", "parameters"), *paging, ref("RequestId", "parameters")],
                {200: _json_api(ref("WebhookDeliveryCollection"), "OK")},
                (*WEBHOOK_ERRORS, 404),
            ),
        },
    }


def _job_events(job: list[Schema]) -> Schema:
    stream = {
        "description": "The job's events, each with an id; the stream ends after `finished`",
        "headers": _headers(),
        "content": {"text/event-stream": {"schema": ref("JobEvent")}},
    }
    return {
        "get": {
            "tags": ["jobs"],
            "operationId": "streamJobEvents",
            "summary": "Follow a job as Server-Sent Events until it ends",
            "description": (
                "Accept, when sent, must allow text/event-stream (406 otherwise). Events"
                " `progress` while the job runs, then one final `finished` (id `finished`),"
                " after which the stream ends; `Last-Event-ID` resumes after that event. 503"
                " with Retry-After when this process follows as many streams as it can."
            ),
            "parameters": [*job, ref("LastEventId", "parameters")],
            "responses": _responses(
                {
                    200: stream,
                    204: _no_content("Last-Event-ID is the finished event's: nothing to send"),
                    406: _json_api(ref("ErrorDocument"), "Accept does not allow text/event-stream"),
                    503: _json_api(
                        ref("ErrorDocument"),
                        "The database is unavailable, or this process follows as many streams"
                        " as it can; retry after Retry-After seconds",
                        "Retry-After",
                    ),
                },
                (*AUTHENTICATED, 400, 404),
            ),
        }
    }


def _outside_api() -> Schema:
    """Routes without authentication: health, metrics and this document. They take no query
    parameter either, and refuse one as the API's routes do."""

    def operation(name: str, summary: str, answers: dict[int, Schema], *errors: int) -> Schema:
        return {
            "tags": ["operations"],
            "operationId": name,
            "summary": summary,
            "security": [],
            "parameters": [ref("RequestId", "parameters")],
            "responses": _responses(answers, (400, 414, 431, *errors)),
        }

    def plain(description: str, media_type: str, schema: Schema, *headers: str) -> Schema:
        return {
            "description": description,
            "headers": _headers(*headers),
            "content": {media_type: {"schema": schema}},
        }

    health = ref("Health")
    return {
        "/healthz": {
            "get": operation(
                "health",
                "Can the app reach the database and the broker?",
                {
                    200: plain("All up", "application/json", health),
                    503: plain("Something is down", "application/json", health, "Retry-After"),
                },
            )
        },
        "/metrics": {
            "get": operation(
                "metrics",
                "Prometheus metrics of web and worker processes",
                {200: plain("The Prometheus text format 0.0.4", "text/plain", _text())},
                503,
            )
        },
        "/api/v2/openapi.json": {
            "get": operation(
                "openapi",
                "This document",
                {200: plain("OpenAPI 3.1", "application/json", {"type": "object"})},
            )
        },
    }


@cache
def document(max_batch_size: int | None = None) -> Schema:
    """The document; with the running app's TIMEBATCH_MAX_BATCH_SIZE, the one it serves."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "timebatch",
            "version": VERSION,
            "summary": "Asynchronous bulk API for time entries (JSON:API with ext=bulk)",
            "description": (
                "Each bulk submission is stored as a job and answered 202 Accepted; poll the"
                " job until it redirects (303) to its result, which is exactly what the"
                " synchronous API would have answered. `Prefer: wait=N` answers with the"
                " result directly when the job finishes within N seconds."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"AuthToken": [], "OrganizationId": []}],
        "tags": [
            {"name": "bulk", "description": "Bulk submissions, each accepted as a job"},
            {"name": "jobs", "description": "Jobs and their results"},
            {"name": "reading", "description": "Time entries, people, services and tasks"},
            {
                "name": "webhooks",
                "description": "Endpoints told of your jobs' ends, and their deliveries",
            },
            {"name": "operations", "description": "Health, metrics and this document"},
        ],
        "paths": paths(),
        "components": {
            "securitySchemes": {
                "AuthToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Auth-Token",
                    "description": "a personal token (`timebatch token create`)",
                },
                "OrganizationId": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Organization-Id",
                    "description": "the id of the token's organization",
                },
            },
            "schemas": schemas(max_batch_size),
            "parameters": parameters(),
            "headers": headers(),
        },
    }


@cache
def document_bytes(max_batch_size: int) -> bytes:
    return orjson.dumps(document(max_batch_size))
