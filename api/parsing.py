"""Bulk documents: shape, types and formats checked before any job exists.

The result is a compact list of items (one dict per resource, relationships flattened to
`person_id` / `service_id` / `task_id`) that the worker applies without parsing again.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import orjson

from shared.jsonapi import ApiError, Problem
from shared.render import ATTRIBUTES

WRITABLE = ("date", "time", "note")
READ_ONLY = frozenset(ATTRIBUTES) - set(WRITABLE)
RELATIONSHIP_TYPES = {"person": "people", "service": "services", "task": "tasks"}
RESOURCE_MEMBERS = frozenset({"type", "id", "attributes", "relationships", "meta", "links"})
TOP_MEMBERS = frozenset({"data", "meta", "jsonapi", "links"})
MAX_ID = 2**63 - 1
MAX_MINUTES = 24 * 60
MAX_NOTE = 10_000
MIN_DATE = dt.date(1900, 1, 1)
MAX_DATE = dt.date(2999, 12, 31)
WITH_ATTRIBUTES = frozenset({"create", "update"})


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
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID:
        return value
    problems.append(
        Problem(400, "Invalid id", "an id is a positive integer, as a number or string", where)
    )
    return None


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
            parsed = None
            if isinstance(value, str) and len(value) == 10:
                try:
                    parsed = dt.date.fromisoformat(value)
                except ValueError:
                    parsed = None
            if parsed is None or not MIN_DATE <= parsed <= MAX_DATE:
                problems.append(
                    Problem(
                        422,
                        "Invalid attribute",
                        "date must be a calendar date YYYY-MM-DD between 1900 and 2999",
                        where,
                    )
                )
            else:
                item["date"] = value
        elif name == "time":
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_MINUTES:
                item["time"] = value
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
        expected = RELATIONSHIP_TYPES.get(name)
        if expected is None:
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
        if data is None and name == "task":
            item["task_id"] = None
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
        if data.get("type") != expected:
            problems.append(
                Problem(
                    409,
                    "Type mismatch",
                    f"{name} must be of type {expected!r}",
                    f"{where}/data/type",
                )
            )
            continue
        found = _id(data.get("id"), f"{where}/data/id", problems)
        if found is not None:
            item[f"{name}_id"] = found


@functools.lru_cache(maxsize=4096)
def _valid_date(value: str) -> bool:
    try:
        return len(value) == 10 and MIN_DATE <= dt.date.fromisoformat(value) <= MAX_DATE
    except ValueError:
        return False


def _plain_id(value: Any) -> int | None:
    if type(value) is int:
        return value if 0 < value <= MAX_ID else None
    if type(value) is str and value.isascii() and value.isdigit() and len(value) < 20:
        number = int(value)
        return number if number > 0 else None
    return None


_FAST_MEMBERS = {
    "create": frozenset({"type", "attributes", "relationships"}),
    "update": frozenset({"type", "id", "attributes", "relationships"}),
}
_ID_ONLY = frozenset({"type", "id"})


def _well_formed(resource: Any, operation: str) -> dict[str, Any] | None:
    """The common case, checked without building any pointer: a resource that is valid as it
    stands. Anything else (None) goes through the full check, which reports every problem."""
    if type(resource) is not dict or resource.get("type") != "time_entries":
        return None
    if not resource.keys() <= _FAST_MEMBERS.get(operation, _ID_ONLY):
        return None
    item: dict[str, Any] = {}
    if operation != "create":
        entry_id = _plain_id(resource.get("id"))
        if entry_id is None:
            return None
        item["id"] = entry_id
    if operation not in WITH_ATTRIBUTES:
        return item
    attributes = resource.get("attributes", {})
    if type(attributes) is not dict:
        return None
    for name, value in attributes.items():
        if name == "date":
            if type(value) is not str or not _valid_date(value):
                return None
        elif name == "time":
            if type(value) is not int or not 0 <= value <= MAX_MINUTES:
                return None
        elif name == "note":
            if value is not None and (
                type(value) is not str or len(value) > MAX_NOTE or "\x00" in value
            ):
                return None
        else:
            return None
        item[name] = value
    relationships = resource.get("relationships", {})
    if type(relationships) is not dict:
        return None
    for name, value in relationships.items():
        expected = RELATIONSHIP_TYPES.get(name)
        if expected is None or type(value) is not dict or value.keys() != {"data"}:
            return None
        data = value["data"]
        if data is None and name == "task":
            item["task_id"] = None
            continue
        if type(data) is not dict or data.get("type") != expected:
            return None
        found = _plain_id(data.get("id"))
        if found is None:
            return None
        item[f"{name}_id"] = found
    if operation == "create" and not (
        "date" in item and "person_id" in item and "service_id" in item
    ):
        return None
    return item


def parse_bulk(
    document: Any, operation: str, *, max_batch: int, extra_members: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """Check a bulk document; return its items or raise ApiError with every problem found."""
    if not isinstance(document, dict):
        raise ApiError.one(400, "Malformed document", "the document must be an object", pointer="")
    problems: list[Problem] = []
    for member in document:
        if member not in TOP_MEMBERS and member not in extra_members:
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
    items: list[dict[str, Any]] = []
    seen: dict[int, int] = {}
    for index, resource in enumerate(data):
        fast = _well_formed(resource, operation)
        if fast is not None and fast.get("id") not in seen:
            if "id" in fast:
                seen[fast["id"]] = index
            items.append(fast)
            continue
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
        if operation == "create":
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
            if operation == "create":
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
        items.append(item)
    if problems:
        raise ApiError(problems)
    return items


def _require_for_create(
    resource: dict[str, Any], base: str, item: dict[str, Any], problems: list[Problem]
) -> None:
    attributes = resource.get("attributes")
    relationships = resource.get("relationships")
    if "date" not in item and not (isinstance(attributes, dict) and "date" in attributes):
        problems.append(
            Problem(422, "Missing attribute", "date is required", f"{base}/attributes/date")
        )
    for name in ("person", "service"):
        if f"{name}_id" not in item and not (
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


def parse_flag(value: Any, where: str, *, parameter: bool = False) -> bool:
    if isinstance(value, bool):
        return value
    if parameter and isinstance(value, str) and value.lower() in {"true", "false", "1", "0"}:
        return value.lower() in {"true", "1"}
    detail = "for_all_approvers must be true or false"
    if parameter:
        raise ApiError.one(400, "Invalid parameter", detail, parameter=where)
    raise ApiError.one(400, "Invalid member", detail, pointer=where)
