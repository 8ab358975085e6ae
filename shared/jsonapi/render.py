"""Time entries as JSON:API resources, attribute for attribute as in the spec's examples, and
the people, services and tasks that `include` adds to them."""

from __future__ import annotations

import datetime as dt
import gzip
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from shared.store.columns import ATTRIBUTES, REFERENCE_NAMED, TIMESTAMPS
from shared.store.models import Person, Service, Task

RELATIONSHIPS = (
    "organization",
    "person",
    "service",
    "task",
    "approver",
    "updater",
    "rejecter",
    "creator",
    "last_actor",
    "person_subsidiary",
    "deal_subsidiary",
    "timesheet",
    "invoice_attribution",
    "approval_statuses",
)

NOT_INCLUDED = {"meta": {"included": False}}
# Per relationship that `include` names, the resources it links to, by id.
Related = Mapping[str, Mapping[int, Any]]


def format_timestamp(value: dt.datetime, zone: dt.tzinfo) -> str:
    local = value.astimezone(zone)
    return local.isoformat(timespec="milliseconds")


class DirectoryRenderer:
    """People, services and tasks of one organization as plain JSON:API resources."""

    def __init__(self, organization_id: int, time_zone: str) -> None:
        self.zone = ZoneInfo(time_zone)
        self.organization = {"data": {"type": "organizations", "id": str(organization_id)}}

    def _timestamp(self, value: dt.datetime) -> str:
        return format_timestamp(value, self.zone)

    def resource(self, kind: str, item: Any) -> dict[str, Any]:
        """`kind` is the name of the relationship that refers to it: person, service, task."""
        return _DIRECTORY[kind](self, item)

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


_DIRECTORY: dict[str, Callable[[DirectoryRenderer, Any], dict[str, Any]]] = {
    "person": DirectoryRenderer.person,
    "service": DirectoryRenderer.service,
    "task": DirectoryRenderer.task,
}


class EntryRenderer:
    """Renders entries of one organization; the zone and relationship blocks are built once.

    With `related` (what was asked to include), those relationships carry linkage and the
    resources go under `included`; without it the document has exactly the spec's shape.
    """

    def __init__(
        self, organization_id: int, time_zone: str, related: Related | None = None
    ) -> None:
        self.zone = ZoneInfo(time_zone)
        self.organization = {"data": {"type": "organizations", "id": str(organization_id)}}
        self._relationships: dict[str, Any] = {"organization": self.organization}
        for name in RELATIONSHIPS[1:]:
            self._relationships[name] = NOT_INCLUDED
        self.related = related or {}
        self._directory = DirectoryRenderer(organization_id, time_zone)
        # A batch shares a handful of timestamps and dates: format each once.
        self._formatted: dict[Any, str] = {}

    def _format(self, value: Any) -> str:
        text = self._formatted.get(value)
        if text is None:
            if isinstance(value, dt.datetime):
                text = format_timestamp(value, self.zone)
            else:
                text = value.isoformat()
            if len(self._formatted) < 10_000:
                self._formatted[value] = text
        return text

    def resource(self, row: Mapping[Any, Any]) -> dict[str, Any]:
        # Read every attribute at once in C, then format the few dates and timestamps.
        values = list(_ATTRIBUTE_VALUES(row))
        fmt = self._format
        for n in _FORMATTED_AT:
            value = values[n]
            if value is not None:
                values[n] = fmt(value)
        attributes = dict(zip(ATTRIBUTES, values, strict=True))
        return {
            "id": str(row["id"]),
            "type": "time_entries",
            "attributes": attributes,
            "relationships": self._linked(row) if self.related else self._relationships,
        }

    def _linked(self, row: Mapping[Any, Any]) -> dict[str, Any]:
        # A copy: without include, every resource shares one relationships object.
        relationships = dict(self._relationships)
        for name, found in self.related.items():
            reference = REFERENCE_NAMED[name]
            related_id = row[reference.column]
            linkage = None
            if related_id in found:
                linkage = {"type": reference.type, "id": str(related_id)}
            relationships[name] = {"data": linkage}
        return relationships

    def included(self) -> list[dict[str, Any]] | None:
        """The `included` member: each related resource once, by kind then id; None when
        nothing was asked to include."""
        if not self.related:
            return None
        return [
            self._directory.resource(name, item)
            for name, found in self.related.items()
            for _, item in sorted(found.items())
        ]

    def collection(self, rows: Iterable[Mapping[Any, Any]]) -> dict[str, Any]:
        document: dict[str, Any] = {"data": [self.resource(row) for row in rows]}
        included = self.included()
        if included is not None:
            document["included"] = included
        document["meta"] = {}
        return document

    def encode_collection(self, rows: Sequence[Mapping[Any, Any]]) -> bytes:
        """The collection document, gzip-compressed (see CompressedCollection)."""
        collection = CompressedCollection(self)
        collection.add(rows)
        return collection.finish()


class CompressedCollection:
    """A collection document rendered and gzip-compressed as its rows come, RENDER_CHUNK
    resources at a time: a large batch never holds its resources, nor its JSON text, whole.

    The renderer's `related` must hold what each added row references before it is added;
    `included` is rendered last, from what it holds then.
    """

    def __init__(self, renderer: EntryRenderer) -> None:
        self.renderer = renderer
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        self._parts = [self._compressor.compress(b'{"data":[')]
        self._separator = b""

    def add(self, rows: Sequence[Mapping[Any, Any]]) -> None:
        resource = self.renderer.resource
        for start in range(0, len(rows), RENDER_CHUNK):
            text = orjson.dumps([resource(row) for row in rows[start : start + RENDER_CHUNK]])
            self._parts.append(self._compressor.compress(self._separator + text[1:-1]))
            self._separator = b","

    def finish(self) -> bytes:
        included = self.renderer.included()
        tail = b"" if included is None else b',"included":' + orjson.dumps(included)
        self._parts.append(self._compressor.compress(b"]" + tail + b',"meta":{}}'))
        self._parts.append(self._compressor.flush())
        return b"".join(self._parts)


GZIP_LEVEL = 1
RENDER_CHUNK = 1000
_ATTRIBUTE_VALUES = itemgetter(*ATTRIBUTES)
_FORMATTED_AT = tuple(
    n for n, name in enumerate(ATTRIBUTES) if name in TIMESTAMPS or name == "date"
)


def gzip_document(document: Any) -> bytes:
    return gzip.compress(orjson.dumps(document), compresslevel=GZIP_LEVEL)
