"""Problems a batch entry can have, pointing at the member of the request that caused them."""

from __future__ import annotations

from shared.jsonapi.errors import Problem
from shared.store.columns import REFERENCE_IN


def pointer(index: int, field: str | None = None) -> str:
    if field is None:
        return f"/data/{index}"
    if field == "id":
        return f"/data/{index}/id"
    if field in REFERENCE_IN:
        return f"/data/{index}/relationships/{REFERENCE_IN[field].name}"
    return f"/data/{index}/attributes/{field}"


def not_found(index: int, field: str, kind: str, value: int) -> Problem:
    return Problem(
        404, "Not found", f"{kind} {value} does not exist", pointer=pointer(index, field)
    )


def forbidden_for(index: int, field: str, person_id: int) -> Problem:
    return Problem(
        403,
        "Forbidden",
        f"you may not edit time of person {person_id}: it needs the manage-time permission",
        pointer=pointer(index, field),
    )
