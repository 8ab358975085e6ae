"""Calling a domain function the way the job runner does, for tests that look at its rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy.orm import Session

from shared.domain.context import BatchContext, Progress
from shared.domain.documents import WRITABLE, Batch, Item
from shared.jobs.runner import APPLY, Apply
from shared.store.columns import REFERENCES
from shared.store.models import Operation


def decoded_items(operation: Operation, body: bytes) -> list[Item]:
    """Every item a job decodes from `body`, at once."""
    return [item for chunk in Batch(operation, body) for item in chunk]


def resource_of(item: Mapping[str, Any]) -> dict[str, Any]:
    """The resource a job decodes into `item` (see documents.Batch)."""
    resource: dict[str, Any] = {"type": "time_entries"}
    if "id" in item:
        resource["id"] = str(item["id"])
    attributes = {name: item[name] for name in WRITABLE if name in item}
    if attributes:
        resource["attributes"] = attributes
    relationships = {
        reference.name: {
            "data": None
            if item[reference.column] is None
            else {"type": reference.type, "id": str(item[reference.column])}
        }
        for reference in REFERENCES
        if reference.column in item
    }
    if relationships:
        resource["relationships"] = relationships
    return resource


def applied(
    apply: Apply,
    session: Session,
    ctx: BatchContext,
    items: Sequence[Mapping[str, Any]],
    progress: Progress,
) -> list[dict[str, Any]]:
    """Apply `items` as the batch of a job would be; the rows it wrote, in batch order."""
    (operation,) = (operation for operation, (function, _) in APPLY.items() if function is apply)
    body = orjson.dumps({"data": [resource_of(item) for item in items]})
    rows = _Rows()
    apply(session, ctx, Batch(operation, body), progress, rows)
    return rows


class _Rows(list[dict[str, Any]]):
    """What a domain function wrote, as plain dicts (see context.Written)."""

    def relate(self, rows: Sequence[Mapping[Any, Any]]) -> None:
        pass

    def add(self, rows: Sequence[Mapping[Any, Any]]) -> None:
        self.extend(map(dict, rows))
