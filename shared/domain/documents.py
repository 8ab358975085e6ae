"""The bulk document of each operation as typed msgspec structs: its one definition.

Decoding a request body with these checks its whole shape, every type and most formats in
one pass of compiled code. The API stores the body as it came once it decodes; the worker
decodes it again into the items it applies. A body that does not decode is handed to the
full checker (api/parsing.py), which reports every problem with a pointer; the OpenAPI
document's request schemas are generated from these structs (api/openapi.py).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

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
# A batch is decoded and applied this many resources at a time, so that neither the API nor
# the worker ever holds the typed form of a whole 100,000-entry batch.
CHUNK = 1000


def _outline_of(kind: type[_Document]) -> type[Struct]:
    """The document with `data` left as the raw text of each resource: decoding it checks
    every top-level member and finds where each resource starts and ends, nothing more."""
    members = [
        (f.name, list[Raw]) if f.name == "data" else (f.name, f.type, f.default)
        for f in msgspec.structs.fields(kind)
    ]
    return msgspec.defstruct(
        kind.__name__.replace("Document", "Outline"),
        members,
        bases=(_Document,),
        kw_only=True,
        forbid_unknown_fields=True,
        gc=False,
    )


def _resource_type(kind: type[_Document]) -> Any:
    (data,) = (f.type for f in msgspec.structs.fields(kind) if f.name == "data")
    (listed,) = get_args(get_args(data)[0])
    return listed


_outlines = {op: msgspec.json.Decoder(_outline_of(kind)) for op, kind in DOCUMENTS.items()}
_resources = {
    op: msgspec.json.Decoder(list[_resource_type(kind)])  # type: ignore[misc]
    for op, kind in DOCUMENTS.items()
}


class _Named(Struct, gc=False):
    """A resource's id alone; msgspec skips its other members."""

    id: Id


_named = msgspec.json.Decoder(list[_Named])
# Where msgspec says a problem is, in a chunk: "$[3]" is resource 3 of the chunk.
_WHERE = re.compile(r"`\$\[(\d+)\]")


def _number(decoded_id: int | float | str) -> int:
    """The entry an Id names. Leading zeros go first: int() refuses over 4300 digits."""
    return int(decoded_id.lstrip("0") if isinstance(decoded_id, str) else decoded_id)


class NotWellFormed(ValueError):
    """The body is not the common valid shape; the full checker says why."""


def _outline(operation: Operation, body: bytes | bytearray) -> Any:
    try:
        outline: Any = _outlines[operation].decode(body)
    # Skipping over each resource's raw text descends into all of it: a deeply nested one
    # ends in RecursionError rather than in the type error the typed decode would stop at.
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise NotWellFormed(str(exc)) from None
    if not outline.data:
        raise NotWellFormed("Expected `array` of length >= 1 - at `$.data`")
    return outline


def _in_batch(message: str, start: int) -> str:
    """msgspec's message about a chunk, pointing into the whole batch instead."""
    return _WHERE.sub(lambda found: f"`$.data[{start + int(found[1])}]", message)


def _decoded(decoder: msgspec.json.Decoder[Any], raw: list[Raw]) -> Iterator[tuple[int, Any]]:
    """Each CHUNK of an outline's raw resources decoded, with its offset in the batch."""
    for start in range(0, len(raw), CHUNK):
        try:
            yield start, decoder.decode(b"[" + b",".join(raw[start : start + CHUNK]) + b"]")
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise NotWellFormed(_in_batch(str(exc), start)) from None


def _typed(operation: Operation, outline: Any) -> Iterator[list[Any]]:
    """The resources of a checked outline, CHUNK at a time, each checked as a whole body's
    would be: shape, types, formats, dates in range, each entry named once."""
    seen: set[int] = set()
    for start, chunk in _decoded(_resources[operation], outline.data):
        if operation == Operation.CREATE:
            for resource in chunk:
                if not MIN_DATE <= resource.attributes.date <= MAX_DATE:
                    raise NotWellFormed("date out of range")
        else:
            seen.update(_number(resource.id) for resource in chunk)
            if len(seen) != start + len(chunk):
                raise NotWellFormed("duplicate ids")
            if operation == Operation.UPDATE:
                for resource in chunk:
                    attributes = resource.attributes
                    if (
                        attributes is not UNSET
                        and attributes.date is not UNSET
                        and not MIN_DATE <= attributes.date <= MAX_DATE
                    ):
                        raise NotWellFormed("date out of range")
        yield chunk


def decode(operation: Operation, body: bytes) -> Any:
    """The checked document, or NotWellFormed: everything that needs no database. Its `data`
    holds each resource's raw text (its length is the batch's); the resources are decoded a
    chunk at a time and let go."""
    outline = _outline(operation, body)
    for _ in _typed(operation, outline):
        pass
    return outline


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


class Batch:
    """The items a job applies, from its stored body, CHUNK at a time: one dict per resource,
    relationships flattened to person_id / service_id / task_id, dates as ISO strings.

    Each pass decodes them afresh: an operation that must see every entry the batch names
    before it writes passes over the batch twice rather than hold it whole.
    """

    def __init__(self, operation: Operation, body: bytes | bytearray) -> None:
        self.operation = operation
        self._outline = _outline(operation, body)

    def __iter__(self) -> Iterator[list[Item]]:
        with_id = self.operation != Operation.CREATE
        for chunk in _typed(self.operation, self._outline):
            yield [_item(resource, with_id) for resource in chunk]

    def ids(self) -> list[int]:
        """The entries the batch names, in batch order, of an operation that names them: a
        pass that builds no items. An update's pass over its items, which follows, checks
        each resource whole; this one reads only the ids, in half the time."""
        if self.operation == Operation.UPDATE:
            chunks: Iterator[list[Any]] = (
                chunk for _, chunk in _decoded(_named, self._outline.data)
            )
        else:
            chunks = _typed(self.operation, self._outline)
        return [_number(resource.id) for chunk in chunks for resource in chunk]
