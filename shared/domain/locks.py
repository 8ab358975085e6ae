"""The one place that says whether an entry may still be changed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.domain.problems import pointer
from shared.jsonapi.errors import Problem


def edit_refusal(entry: Mapping[str, Any], index: int) -> Problem | None:
    """Why an entry (its row: id, invoiced, approved), resource `index` of its batch, may not
    be updated or deleted, or None when it may."""
    if entry["invoiced"]:
        return Problem(
            409,
            "Entry locked",
            f"time entry {entry['id']} is invoiced and cannot change",
            pointer=pointer(index, "id"),
        )
    if entry["approved"]:
        return Problem(
            409,
            "Entry locked",
            f"time entry {entry['id']} is approved: unapprove first",
            pointer=pointer(index, "id"),
        )
    return None
