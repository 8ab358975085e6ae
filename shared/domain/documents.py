"""The bulk document of each operation as typed msgspec structs: its one definition.

Decoding a request body with these checks its whole shape, every type and most formats in
one pass of compiled code. The API stores the body as it came once it decodes; the worker
decodes it again into the items it applies. A body that does not decode is handed to the
full checker (api/parsing.py), which reports every problem with a pointer; the OpenAPI
document's request schemas are generated from these structs (api/openapi.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from shared.domain.limits import (
    DATE_PATTERN,
    ID_PATTERN,
    MAX_DATE,
    MAX_ID,
    MAX_MINUTES,
    MAX_NOTE,
    MIN_DATE,
)
from shared.store.columns import REFERENCES
from shared.store.models import Operation

# One resource of a batch as a job applies it: attributes by name, references by column
# (person_id, service_id, task_id), an id where the operation names entries.
Item = Mapping[str, Any]

# A whole number may come as 7 or 7.0 (limits.whole); the items hold ints.
Id = (
    Annotated[int, Meta(gt=0, le=MAX_ID)]
    | Annotated[float, Meta(gt=0, lt=MAX_ID + 1, multiple_of=1)]
    | Annotated[str, Meta(pattern=f"^{ID_PATTERN}$")]
)
Minutes = (
    Annotated[int, Meta(ge=0, le=MAX_MINUTES, description="minutes")]
    | Annotated[float, Meta(ge=0, le=MAX_MINUTES, multiple_of=1, description="minutes")]
)
# msgspec checks the calendar date; decode() checks the range, which the pattern declares.
Date = Annotated[
    dt.date,
    Meta(
        description=f"YYYY-MM-DD, {MIN_DATE.year} to {MAX_DATE.year}",
        extra_json_schema={"pattern": DATE_PATTERN},
    ),
]
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


class UpdateAttributes(_Closed, kw_only=True):
    date: Date | UnsetType = UNSET
    time: Minutes | UnsetType = UNSET
    note: Note | UnsetType | None = UNSET


class CreateAttributes(_Closed, kw_only=True):
    date: Date
    time: Minutes | UnsetType = UNSET
    note: Note | UnsetType | None = UNSET


class UpdateRelationships(_Closed, kw_only=True):
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
    attributes: UpdateAttributes | UnsetType = UNSET
    relationships: UpdateRelationships | UnsetType = UNSET


class EntryReference(_Resource, kw_only=True):
    id: Id


class _Document(_Closed, kw_only=True):
    meta: Members | UnsetType = UNSET
    jsonapi: Members | UnsetType = UNSET
    links: Members | UnsetType = UNSET


# The largest batch is a setting (TIMEBATCH_MAX_BATCH_SIZE), checked after decoding.
BATCH = Meta(min_length=1, description="at most TIMEBATCH_MAX_BATCH_SIZE resources")


class CreateDocument(_Document, kw_only=True):
    data: Annotated[list[CreateResource], BATCH]


# Each entry once (decode() compares the ids as numbers; the schema can say no more than this).
NAMED_BATCH = Meta(
    min_length=1,
    description="at most TIMEBATCH_MAX_BATCH_SIZE resources, each entry once",
    extra_json_schema={"uniqueItems": True},
)


class UpdateDocument(_Document, kw_only=True):
    data: Annotated[list[UpdateResource], NAMED_BATCH]


class ReferenceDocument(_Document, kw_only=True):
    data: Annotated[list[EntryReference], NAMED_BATCH]


class ApproveDocument(ReferenceDocument, kw_only=True):
    for_all_approvers: (
        Annotated[
            bool, Meta(description="approve for every required approver (approve-all permission)")
        ]
        | UnsetType
    ) = UNSET


DOCUMENTS: dict[Operation, type[_Document]] = {
    Operation.CREATE: CreateDocument,
    Operation.UPDATE: UpdateDocument,
    Operation.DELETE: ReferenceDocument,
    Operation.APPROVE: ApproveDocument,
    Operation.UNAPPROVE: ReferenceDocument,
}
WRITABLE = UpdateAttributes.__struct_fields__
_decoders = {op: msgspec.json.Decoder(kind) for op, kind in DOCUMENTS.items()}


def _number(decoded_id: int | float | str) -> int:
    """The entry an Id names. Leading zeros go first: int() refuses over 4300 digits."""
    return int(decoded_id.lstrip("0") if isinstance(decoded_id, str) else decoded_id)


class NotWellFormed(ValueError):
    """The body is not the common valid shape; the full checker says why."""


def decode(operation: Operation, body: bytes) -> Any:
    """The typed document, or NotWellFormed. Checks everything that needs no database."""
    try:
        document: Any = _decoders[operation].decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise NotWellFormed(str(exc)) from None
    data = document.data
    if operation == Operation.CREATE:
        for resource in data:
            if not MIN_DATE <= resource.attributes.date <= MAX_DATE:
                raise NotWellFormed("date out of range")
    else:
        ids = {_number(resource.id) for resource in data}
        if len(ids) != len(data):
            raise NotWellFormed("duplicate ids")
        if operation == Operation.UPDATE:
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
    item: dict[str, Any] = {"id": _number(resource.id)} if with_id else {}
    attributes = getattr(resource, "attributes", UNSET)
    if attributes is not UNSET:
        for name in WRITABLE:
            value = getattr(attributes, name)
            if value is not UNSET:
                if name == "date":
                    value = value.isoformat()
                elif name == "time":
                    value = int(value)
                item[name] = value
    relationships = getattr(resource, "relationships", UNSET)
    if relationships is not UNSET:
        for reference in REFERENCES:
            relationship = getattr(relationships, reference.name)
            if relationship is not UNSET:
                data = relationship.data
                item[reference.column] = None if data is None else _number(data.id)
    return item


def items(operation: Operation, body: bytes) -> list[dict[str, Any]]:
    """The items a job applies, from its stored body: one dict per resource, relationships
    flattened to person_id / service_id / task_id, dates as ISO strings."""
    document = decode(operation, body)
    with_id = operation != Operation.CREATE
    return [_item(resource, with_id) for resource in document.data]
