"""Reading: time entries, people, services and tasks, listed a page at a time or one by one.

Time entries render exactly as the bulk results do; `include=person,service,task` adds the
related resources once each under `included` and gives the entries' relationships data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, request
from sqlalchemy import Row

from api.auth import principal
from api.context import db
from api.listing import (
    Parser,
    date,
    ids,
    list_query,
    one_of,
    page_response,
    show_query,
)
from api.negotiation import require_acceptable
from shared.domain.limits import parse_id
from shared.jsonapi.errors import CONTENT_TYPE, ApiError, encode
from shared.jsonapi.render import EntryRenderer, format_timestamp
from shared.store.columns import REFERENCE_NAMED, REFERENCES
from shared.store.models import Person, Service, Task
from shared.store.queries import (
    ENTRY_SORTS,
    ENTRY_STATUSES,
    Directory,
    DirectoryFilters,
    EntryFilters,
    directory_by_id,
    directory_page,
    entries_page,
    find_entry,
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
# What an entry can include: the resources it references.
ENTRY_INCLUDES = tuple(reference.name for reference in REFERENCES)
NOT_INCLUDED = {"meta": {"included": False}}


class DirectoryRenderer:
    """People, services and tasks of one organization as plain JSON:API resources."""

    def __init__(self, organization_id: int, zone: str) -> None:
        self.zone = ZoneInfo(zone)
        self.organization = {"data": {"type": "organizations", "id": str(organization_id)}}

    def _timestamp(self, value: dt.datetime) -> str:
        return format_timestamp(value, self.zone)

    def person(self, person: Person) -> dict[str, Any]:
        return {
            "id": str(person.id),
            "type": "people",
            "attributes": {
                "first_name": person.first_name,
                "last_name": person.last_name,
                "email": person.email,
                "created_at": self._timestamp(person.created_at),
            },
            "relationships": {"organization": self.organization, "manager": NOT_INCLUDED},
        }

    def service(self, service: Service) -> dict[str, Any]:
        return {
            "id": str(service.id),
            "type": "services",
            "attributes": {
                "name": service.name,
                "billable": service.billable,
                "created_at": self._timestamp(service.created_at),
            },
            "relationships": {"organization": self.organization, "approver": NOT_INCLUDED},
        }

    def task(self, task: Task) -> dict[str, Any]:
        return {
            "id": str(task.id),
            "type": "tasks",
            "attributes": {
                "title": task.title,
                "created_at": self._timestamp(task.created_at),
            },
            "relationships": {"organization": self.organization, "service": NOT_INCLUDED},
        }


Render = Callable[[DirectoryRenderer, Any], dict[str, Any]]
# Per kind of referenced resource: its model, how it renders and which filters it takes.
KINDS: dict[str, tuple[Directory, Render, dict[str, Parser]]] = {
    "person": (Person, DirectoryRenderer.person, {"id": ids}),
    "service": (Service, DirectoryRenderer.service, {"id": ids}),
    "task": (Task, DirectoryRenderer.task, {"id": ids, "service_id": ids}),
}


def _not_found(kind: str, value: str) -> ApiError:
    shown = value if len(value) <= 40 else value[:40] + "..."
    return ApiError.one(404, "Not found", f"{kind} {shown} does not exist")


def _related(
    rows: Sequence[Row[Any]], include: frozenset[str], organization_id: int, zone: str
) -> tuple[dict[str, dict[int, Any]], list[dict[str, Any]]]:
    """The included resources: one query per kind, each resource once."""
    found: dict[str, dict[int, Any]] = {}
    included: list[dict[str, Any]] = []
    renderer = DirectoryRenderer(organization_id, zone)
    for name in ENTRY_INCLUDES:
        if name not in include:
            continue
        model, render, _ = KINDS[name]
        column = REFERENCE_NAMED[name].column
        found[name] = directory_by_id(
            db(), model, organization_id, (row._mapping[column] for row in rows)
        )
        included.extend(render(renderer, item) for _, item in sorted(found[name].items()))
    return found, included


def _entries(
    rows: Sequence[Row[Any]], include: frozenset[str], organization_id: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    zone = time_zone(db(), organization_id)
    renderer = EntryRenderer(organization_id, zone)
    data = [renderer.resource(row._mapping) for row in rows]
    if not include:
        return data, None
    found, included = _related(rows, include, organization_id, zone)
    for resource, row in zip(data, rows, strict=True):
        # A copy: the renderer shares one relationships object among its resources.
        relationships = dict(resource["relationships"])
        for name, related in found.items():
            reference = REFERENCE_NAMED[name]
            related_id = row._mapping[reference.column]
            linkage = None
            if related_id in related:
                linkage = {"type": reference.type, "id": str(related_id)}
            relationships[name] = {"data": linkage}
        resource["relationships"] = relationships
    return data, included


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


@blueprint.get("/time_entries/<id>")
def show_entry(id: str) -> Response:
    require_acceptable(request)
    include = show_query(request.args, includes=ENTRY_INCLUDES)
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
    model, render, filters = KINDS[kind]
    query = list_query(request.args, filters=filters, sorts=("id",), default_sort="id")
    organization_id = principal().organization_id
    session = db()
    page = directory_page(
        session, model, organization_id, DirectoryFilters(**query.filters), query.sorts, query.page
    )
    renderer = DirectoryRenderer(organization_id, time_zone(session, organization_id))
    data = [render(renderer, item) for item in page.items]
    return page_response(page, data, path=request.path, args=request.args)


def _show_directory(kind: str, value: str) -> Response:
    require_acceptable(request)
    model, render, _ = KINDS[kind]
    show_query(request.args)
    organization_id = principal().organization_id
    session = db()
    wanted = parse_id(value)
    found = None
    if wanted is not None:
        found = directory_by_id(session, model, organization_id, [wanted]).get(wanted)
    if found is None:
        raise _not_found(kind, value)
    renderer = DirectoryRenderer(organization_id, time_zone(session, organization_id))
    document = {"data": render(renderer, found), "meta": {}}
    return Response(encode(document), status=200, content_type=CONTENT_TYPE)


@blueprint.get("/people")
def list_people() -> Response:
    return _list_directory("person")


@blueprint.get("/people/<id>")
def show_person(id: str) -> Response:
    return _show_directory("person", id)


@blueprint.get("/services")
def list_services() -> Response:
    return _list_directory("service")


@blueprint.get("/services/<id>")
def show_service(id: str) -> Response:
    return _show_directory("service", id)


@blueprint.get("/tasks")
def list_tasks() -> Response:
    return _list_directory("task")


@blueprint.get("/tasks/<id>")
def show_task(id: str) -> Response:
    return _show_directory("task", id)
