"""Reading: time entries, people, services and tasks, listed a page at a time or one by one.

Time entries render exactly as the bulk results do; `include=person,service,task` adds the
related resources once each under `included` and gives the entries' relationships data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import Blueprint, Response, request
from sqlalchemy import Row

from api.auth import principal
from api.context import db
from api.listing import (
    Parser,
    date,
    ids,
    include_query,
    list_query,
    one_of,
    page_response,
)
from api.negotiation import require_acceptable
from shared.domain.limits import parse_id
from shared.jsonapi.errors import CONTENT_TYPE, ApiError, encode
from shared.jsonapi.render import DirectoryRenderer, EntryRenderer
from shared.store.queries import (
    DIRECTORIES,
    ENTRY_INCLUDES,
    ENTRY_SORTS,
    ENTRY_STATUSES,
    DirectoryFilters,
    EntryFilters,
    directory_by_id,
    directory_page,
    entries_page,
    find_entry,
    referenced,
    time_zone,
)

blueprint = Blueprint("reading", __name__)

ENTRY_FILTERS: dict[str, Parser] = {
    "person_id": ids,
    "service_id": ids,
    "task_id": ids,
    "date": date,
    "after": date,
    "before": date,
    "status": one_of(ENTRY_STATUSES),
}
ENTRY_DEFAULT_SORT = "-date"
DIRECTORY_FILTERS: dict[str, dict[str, Parser]] = {
    "person": {"id": ids},
    "service": {"id": ids},
    "task": {"id": ids, "service_id": ids},
}


def _not_found(kind: str, value: str) -> ApiError:
    shown = value if len(value) <= 40 else value[:40] + "..."
    return ApiError.one(404, "Not found", f"{kind} {shown} does not exist")


def _entries(
    rows: Sequence[Row[Any]], include: frozenset[str], organization_id: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    session = db()
    mappings = [row._mapping for row in rows]
    related = referenced(session, organization_id, mappings, include)
    renderer = EntryRenderer(organization_id, time_zone(session, organization_id), related)
    return [renderer.resource(row) for row in mappings], renderer.included()


@blueprint.get("/time_entries")
def list_entries() -> Response:
    require_acceptable(request)
    query = list_query(
        request.args,
        filters=ENTRY_FILTERS,
        sorts=tuple(ENTRY_SORTS),
        default_sort=ENTRY_DEFAULT_SORT,
        includes=ENTRY_INCLUDES,
    )
    organization_id = principal().organization_id
    page = entries_page(
        db(), organization_id, EntryFilters(**query.filters), query.sorts, query.page
    )
    data, included = _entries(page.items, query.include, organization_id)
    return page_response(page, data, path=request.path, args=request.args, included=included)


@blueprint.get("/time_entries/<digits:id>")
def show_entry(id: str) -> Response:
    require_acceptable(request)
    include = include_query(request.args, includes=ENTRY_INCLUDES)
    organization_id = principal().organization_id
    entry_id = parse_id(id)
    row = None if entry_id is None else find_entry(db(), organization_id, entry_id)
    if row is None:
        raise _not_found("time entry", id)
    data, included = _entries([row], include, organization_id)
    document: dict[str, Any] = {"data": data[0]}
    if included is not None:
        document["included"] = included
    document["meta"] = {}
    return Response(encode(document), status=200, content_type=CONTENT_TYPE)


def _list_directory(kind: str) -> Response:
    require_acceptable(request)
    query = list_query(
        request.args, filters=DIRECTORY_FILTERS[kind], sorts=("id",), default_sort="id"
    )
    organization_id = principal().organization_id
    session = db()
    filters = DirectoryFilters(**query.filters)
    page = directory_page(
        session, DIRECTORIES[kind], organization_id, filters, query.sorts, query.page
    )
    renderer = DirectoryRenderer(organization_id, time_zone(session, organization_id))
    data = [renderer.resource(kind, item) for item in page.items]
    return page_response(page, data, path=request.path, args=request.args)


def _show_directory(kind: str, value: str) -> Response:
    require_acceptable(request)
    include_query(request.args)
    organization_id = principal().organization_id
    session = db()
    wanted = parse_id(value)
    found = None
    if wanted is not None:
        found = directory_by_id(session, DIRECTORIES[kind], organization_id, [wanted]).get(wanted)
    if found is None:
        raise _not_found(kind, value)
    renderer = DirectoryRenderer(organization_id, time_zone(session, organization_id))
    document = {"data": renderer.resource(kind, found), "meta": {}}
    return Response(encode(document), status=200, content_type=CONTENT_TYPE)


@blueprint.get("/people")
def list_people() -> Response:
    return _list_directory("person")


@blueprint.get("/people/<digits:id>")
def show_person(id: str) -> Response:
    return _show_directory("person", id)


@blueprint.get("/services")
def list_services() -> Response:
    return _list_directory("service")


@blueprint.get("/services/<digits:id>")
def show_service(id: str) -> Response:
    return _show_directory("service", id)


@blueprint.get("/tasks")
def list_tasks() -> Response:
    return _list_directory("task")


@blueprint.get("/tasks/<digits:id>")
def show_task(id: str) -> Response:
    return _show_directory("task", id)
