"""The bulk document of each operation as typed msgspec structs.

Decoding a request body with these checks its whole shape, every type and most formats in
one pass of compiled code: the fast path for the common, valid batch. The API stores the
body as it came once it decodes; the worker decodes it again into the items it applies.
A body that does not decode is handed to the full checker (api/parsing.py), which reports
every problem with a pointer.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

MAX_ID = 2**63 - 1
MAX_MINUTES = 24 * 60
MAX_NOTE = 10_000
MIN_DATE = dt.date(1900, 1, 1)
MAX_DATE = dt.date(2999, 12, 31)

Id = (
    Annotated[int, Meta(gt=0, le=MAX_ID)]
    | Annotated[str, Meta(pattern=r"^(?=[0-9]{1,19}$)0*[1-9][0-9]*$")]
)
Minutes = Annotated[int, Meta(ge=0, le=MAX_MINUTES)]
# PostgreSQL text cannot hold NUL.
Note = Annotated[str, Meta(max_length=MAX_NOTE, pattern=r"^[^\x00]*$")]
Members = dict[str, Any]


class _Closed(Struct, forbid_unknown_fields=True, kw_only=True, gc=False):
    """Closed to unknown members. gc=False: a batch decodes into ~10 structs per entry and
    none of them can form a cycle; tracking them made the garbage collector scan the whole
    heap several times per decode."""


class PersonLinkage(_Closed, kw_only=True):
    type: Literal["people"]
    id: Id


class ServiceLinkage(_Closed, kw_only=True):
    type: Literal["services"]
    id: Id


class TaskLinkage(_Closed, kw_only=True):
    type: Literal["tasks"]
    id: Id


class PersonRelationship(_Closed, kw_only=True):
    data: PersonLinkage


class ServiceRelationship(_Closed, kw_only=True):
    data: ServiceLinkage


class TaskRelationship(_Closed, kw_only=True):
    data: TaskLinkage | None


class Attributes(_Closed, kw_only=True):
    date: dt.date | UnsetType = UNSET
    time: Minutes | UnsetType = UNSET
    note: Note | UnsetType | None = UNSET


class CreateAttributes(_Closed, kw_only=True):
    date: dt.date
    time: Minutes | UnsetType = UNSET
    note: Note | UnsetType | None = UNSET


class Relationships(_Closed, kw_only=True):
    person: PersonRelationship | UnsetType = UNSET
    service: ServiceRelationship | UnsetType = UNSET
    task: TaskRelationship | UnsetType = UNSET


class CreateRelationships(_Closed, kw_only=True):
    person: PersonRelationship
    service: ServiceRelationship
    task: TaskRelationship | UnsetType = UNSET


class _Resource(_Closed, kw_only=True):
    type: Literal["time_entries"]
    meta: Members | UnsetType = UNSET
    links: Members | UnsetType = UNSET


class CreateResource(_Resource, kw_only=True):
    attributes: CreateAttributes
    relationships: CreateRelationships


class UpdateResource(_Resource, kw_only=True):
    id: Id
    attributes: Attributes | UnsetType = UNSET
    relationships: Relationships | UnsetType = UNSET


class Reference(_Resource, kw_only=True):
    id: Id


class _Document(_Closed, kw_only=True):
    meta: Members | UnsetType = UNSET
    jsonapi: Members | UnsetType = UNSET
    links: Members | UnsetType = UNSET


class CreateDocument(_Document, kw_only=True):
    data: list[CreateResource]


class UpdateDocument(_Document, kw_only=True):
    data: list[UpdateResource]


class ReferenceDocument(_Document, kw_only=True):
    data: list[Reference]


class ApproveDocument(ReferenceDocument, kw_only=True):
    for_all_approvers: bool | UnsetType = UNSET


DOCUMENTS: dict[str, type[_Document]] = {
    "create": CreateDocument,
    "update": UpdateDocument,
    "delete": ReferenceDocument,
    "approve": ApproveDocument,
    "unapprove": ReferenceDocument,
}
_decoders = {op: msgspec.json.Decoder(kind) for op, kind in DOCUMENTS.items()}


class NotWellFormed(ValueError):
    """The body is not the common valid shape; the full checker says why."""


def decode(operation: str, body: bytes) -> Any:
    """The typed document, or NotWellFormed. Checks everything that needs no database."""
    try:
        document: Any = _decoders[operation].decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise NotWellFormed(str(exc)) from None
    data = document.data
    if not data:
        raise NotWellFormed("data is empty")
    if operation == "create":
        for resource in data:
            if not MIN_DATE <= resource.attributes.date <= MAX_DATE:
                raise NotWellFormed("date out of range")
    else:
        ids = {int(resource.id) for resource in data}
        if len(ids) != len(data):
            raise NotWellFormed("duplicate ids")
        if operation == "update":
            for resource in data:
                attributes = resource.attributes
                if (
                    attributes is not UNSET
                    and attributes.date is not UNSET
                    and not MIN_DATE <= attributes.date <= MAX_DATE
                ):
                    raise NotWellFormed("date out of range")
    return document


def _item(resource: Any, with_id: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"id": int(resource.id)} if with_id else {}
    attributes = getattr(resource, "attributes", UNSET)
    if attributes is not UNSET:
        for name in ("date", "time", "note"):
            value = getattr(attributes, name)
            if value is not UNSET:
                item[name] = value.isoformat() if name == "date" else value
    relationships = getattr(resource, "relationships", UNSET)
    if relationships is not UNSET:
        for name in ("person", "service", "task"):
            relationship = getattr(relationships, name)
            if relationship is not UNSET:
                data = relationship.data
                item[f"{name}_id"] = None if data is None else int(data.id)
    return item


def items(operation: str, body: bytes) -> list[dict[str, Any]]:
    """The items a job applies, from its stored body: one dict per resource, relationships
    flattened to person_id / service_id / task_id, dates as ISO strings."""
    document = decode(operation, body)
    with_id = operation != "create"
    return [_item(resource, with_id) for resource in document.data]


def encode_items(operation: str, batch: list[dict[str, Any]]) -> bytes:
    """The bulk document for items (the reverse of `items`), for callers that hold items."""
    resources = []
    for item in batch:
        resource: dict[str, Any] = {"type": "time_entries"}
        if operation != "create":
            resource["id"] = str(item["id"])
        attributes = {name: item[name] for name in ("date", "time", "note") if name in item}
        relationships = {
            name: {"data": None if item[key] is None else {"type": kind, "id": str(item[key])}}
            for name, kind, key in (
                ("person", "people", "person_id"),
                ("service", "services", "service_id"),
                ("task", "tasks", "task_id"),
            )
            if key in item
        }
        if attributes:
            resource["attributes"] = attributes
        if relationships:
            resource["relationships"] = relationships
        resources.append(resource)
    return msgspec.json.encode({"data": resources})
