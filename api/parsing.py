"""The full check of a bulk document that did not decode on the fast path.

shared/domain/documents.py defines the document and decodes the common valid body in one
pass. A body it refuses comes here, to be walked member by member, so that the client hears
of every problem at once, each with its status and its pointer. Member names, limits and
relationship types come from the structs, shared/domain/limits.py and the one table of
references, so the two checks cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import orjson
from msgspec.structs import fields

from shared.domain.documents import DOCUMENTS, WRITABLE, CreateAttributes, CreateRelationships
from shared.domain.limits import (
    MAX_DATE,
    MAX_MINUTES,
    MAX_NOTE,
    MIN_DATE,
    calendar_date,
    parse_id,
    whole,
)
from shared.jsonapi.errors import ApiError, Problem
from shared.store.columns import ATTRIBUTES, REFERENCE_NAMED
from shared.store.models import Operation

READ_ONLY = frozenset(ATTRIBUTES) - set(WRITABLE)
RESOURCE_MEMBERS = frozenset({"type", "id", "attributes", "relationships", "meta", "links"})
WITH_ATTRIBUTES = frozenset({Operation.CREATE, Operation.UPDATE})
REQUIRED_ATTRIBUTES = tuple(f.name for f in fields(CreateAttributes) if f.required)
REQUIRED_RELATIONSHIPS = tuple(f.name for f in fields(CreateRelationships) if f.required)
TOP_MEMBERS = {
    operation: frozenset(f.name for f in fields(kind)) for operation, kind in DOCUMENTS.items()
}


def escape(name: str) -> str:
    """A member name as a JSON pointer reference token (RFC 6901)."""
    return name.replace("~", "~0").replace("/", "~1")


def load_json(body: bytes) -> Any:
    if not body:
        raise ApiError.one(400, "Malformed document", "the request body is empty", pointer="")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError.one(
            400, "Malformed document", f"the body is not valid JSON: {exc.msg}", pointer=""
        ) from None


def _id(value: Any, where: str, problems: list[Problem]) -> int | None:
    found = parse_id(value)
    if found is None:
        problems.append(
            Problem(400, "Invalid id", "an id is a positive integer, as a number or string", where)
        )
    return found


def _attributes(attributes: Any, base: str, item: dict[str, Any], problems: list[Problem]) -> None:
    if not isinstance(attributes, dict):
        problems.append(Problem(400, "Invalid member", "attributes must be an object", base))
        return
    for name, value in attributes.items():
        where = f"{base}/{escape(name)}"
        if name in READ_ONLY:
            problems.append(
                Problem(400, "Read-only attribute", f"{name} is computed and cannot be set", where)
            )
        elif name == "date":
            parsed = calendar_date(value)
            if parsed is None or not MIN_DATE <= parsed <= MAX_DATE:
                problems.append(
                    Problem(
                        422,
                        "Invalid attribute",
                        "date must be a calendar date YYYY-MM-DD"
                        f" between {MIN_DATE.year} and {MAX_DATE.year}",
                        where,
                    )
                )
            else:
                item["date"] = value
        elif name == "time":
            minutes = whole(value)
            if minutes is not None and 0 <= minutes <= MAX_MINUTES:
                item["time"] = minutes
            else:
                problems.append(
                    Problem(
                        422,
                        "Invalid attribute",
                        f"time must be a whole number of minutes from 0 to {MAX_MINUTES}",
                        where,
                    )
                )
        elif name == "note":
            # PostgreSQL text cannot hold NUL; refuse it here rather than fail the job later.
            if value is None or (
                isinstance(value, str) and len(value) <= MAX_NOTE and "\x00" not in value
            ):
                item["note"] = value
            else:
                problems.append(
                    Problem(
                        422,
                        "Invalid attribute",
                        f"note must be a string of at most {MAX_NOTE} characters without NUL,"
                        " or null",
                        where,
                    )
                )
        else:
            problems.append(
                Problem(400, "Unknown attribute", f"time entries have no attribute {name!r}", where)
            )


def _relationships(
    relationships: Any, base: str, item: dict[str, Any], problems: list[Problem]
) -> None:
    if not isinstance(relationships, dict):
        problems.append(Problem(400, "Invalid member", "relationships must be an object", base))
        return
    for name, value in relationships.items():
        where = f"{base}/{escape(name)}"
        reference = REFERENCE_NAMED.get(name)
        if reference is None:
            problems.append(
                Problem(
                    400,
                    "Unknown relationship",
                    f"only person, service and task can be set, not {name!r}",
                    where,
                )
            )
            continue
        if not isinstance(value, dict) or "data" not in value:
            problems.append(
                Problem(400, "Invalid relationship", 'a relationship is {"data": ...}', where)
            )
            continue
        data = value["data"]
        if data is None and reference.optional:
            item[reference.column] = None
            continue
        if not isinstance(data, dict):
            problems.append(
                Problem(
                    400,
                    "Invalid relationship",
                    f"{name} data must be an object with type and id",
                    f"{where}/data",
                )
            )
            continue
        if data.get("type") != reference.type:
            problems.append(
                Problem(
                    409,
                    "Type mismatch",
                    f"{name} must be of type {reference.type!r}",
                    f"{where}/data/type",
                )
            )
            continue
        found = _id(data.get("id"), f"{where}/data/id", problems)
        if found is not None:
            item[reference.column] = found


def check_bulk(document: Any, operation: Operation, *, max_batch: int) -> None:
    """Check a bulk document; raise ApiError with every problem found."""
    if not isinstance(document, dict):
        raise ApiError.one(400, "Malformed document", "the document must be an object", pointer="")
    problems: list[Problem] = []
    for member in document:
        if member not in TOP_MEMBERS[operation]:
            problems.append(
                Problem(
                    400,
                    "Unknown member",
                    f"unexpected top-level member {member!r}",
                    f"/{escape(member)}",
                )
            )
    data = document.get("data")
    if not isinstance(data, list) or not data:
        problems.append(
            Problem(400, "Invalid document", "data must be a non-empty array of resources", "/data")
        )
        raise ApiError(problems)
    if len(data) > max_batch:
        raise ApiError.one(
            413,
            "Batch too large",
            f"a batch holds at most {max_batch} entries; this one has {len(data)}",
            pointer="/data",
        )
    seen: dict[int, int] = {}
    for index, resource in enumerate(data):
        base = f"/data/{index}"
        if not isinstance(resource, dict):
            problems.append(Problem(400, "Invalid resource", "each resource is an object", base))
            continue
        item: dict[str, Any] = {}
        for member in resource:
            if member not in RESOURCE_MEMBERS:
                problems.append(
                    Problem(
                        400,
                        "Unknown member",
                        f"unexpected member {member!r}",
                        f"{base}/{escape(member)}",
                    )
                )
        kind = resource.get("type")
        if kind is None:
            problems.append(
                Problem(400, "Missing type", "each resource needs a type", f"{base}/type")
            )
        elif kind != "time_entries":
            problems.append(
                Problem(
                    409, "Type mismatch", "resources must be of type 'time_entries'", f"{base}/type"
                )
            )
        if operation == Operation.CREATE:
            if "id" in resource:
                problems.append(
                    Problem(
                        403,
                        "Client-generated id",
                        "ids are assigned by the server; leave id out when creating",
                        f"{base}/id",
                    )
                )
        elif "id" not in resource:
            problems.append(
                Problem(400, "Missing id", f"{operation} needs the entry's id", f"{base}/id")
            )
        else:
            entry_id = _id(resource["id"], f"{base}/id", problems)
            if entry_id is not None:
                if entry_id in seen:
                    problems.append(
                        Problem(
                            422,
                            "Duplicate id",
                            f"time entry {entry_id} is also at /data/{seen[entry_id]}",
                            f"{base}/id",
                        )
                    )
                seen.setdefault(entry_id, index)
                item["id"] = entry_id
        if operation in WITH_ATTRIBUTES:
            if "attributes" in resource:
                _attributes(resource["attributes"], f"{base}/attributes", item, problems)
            if "relationships" in resource:
                _relationships(resource["relationships"], f"{base}/relationships", item, problems)
            if operation == Operation.CREATE:
                _require_for_create(resource, base, item, problems)
        else:
            for member in ("attributes", "relationships"):
                if member in resource:
                    problems.append(
                        Problem(
                            400,
                            "Unexpected member",
                            f"{operation} takes only type and id",
                            f"{base}/{escape(member)}",
                        )
                    )
    if problems:
        raise ApiError(problems)


def _require_for_create(
    resource: dict[str, Any], base: str, item: dict[str, Any], problems: list[Problem]
) -> None:
    attributes = resource.get("attributes")
    relationships = resource.get("relationships")
    for name in REQUIRED_ATTRIBUTES:
        if name not in item and not (isinstance(attributes, dict) and name in attributes):
            problems.append(
                Problem(
                    422, "Missing attribute", f"{name} is required", f"{base}/attributes/{name}"
                )
            )
    for name in REQUIRED_RELATIONSHIPS:
        if REFERENCE_NAMED[name].column not in item and not (
            isinstance(relationships, dict) and name in relationships
        ):
            problems.append(
                Problem(
                    422,
                    "Missing relationship",
                    f"{name} is required",
                    f"{base}/relationships/{name}",
                )
            )


# The query parameter's spellings, exactly as the OpenAPI document lists them.
FLAG_VALUES = {"true": True, "false": False, "1": True, "0": False}


def parse_flag(value: Any, where: str, *, parameter: bool = False) -> bool:
    if isinstance(value, bool):
        return value
    if parameter and value in FLAG_VALUES:
        return FLAG_VALUES[value]
    detail = "for_all_approvers must be true or false"
    if parameter:
        raise ApiError.one(400, "Invalid parameter", detail, parameter=where)
    raise ApiError.one(400, "Invalid member", detail, pointer=where)
