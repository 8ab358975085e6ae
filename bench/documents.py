"""Request bodies of the measured operations, built in memory, encoded once before the clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

MEMBER = 7781  # Demo Agency member, 20.00 EUR/h: creates, updates and deletes
ADMIN = 7783  # Demo Agency admin: approves and unapproves
ORGANIZATION = 2110
SERVICE = 1213
TASK = 302


def create_body(n: int) -> bytes:
    document: dict[str, Any] = {
        "data": [
            {
                "type": "time_entries",
                "attributes": {"date": "2026-02-03", "time": 30 + i % 90, "note": f"n{i}"},
                "relationships": {
                    "person": {"data": {"type": "people", "id": str(MEMBER)}},
                    "service": {"data": {"type": "services", "id": str(SERVICE)}},
                    "task": {"data": {"type": "tasks", "id": str(TASK)}},
                },
            }
            for i in range(n)
        ]
    }
    return orjson.dumps(document)


def update_body(ids: Sequence[str]) -> bytes:
    return orjson.dumps(
        {
            "data": [
                {"id": id_, "type": "time_entries", "attributes": {"note": f"changed {i}"}}
                for i, id_ in enumerate(ids)
            ]
        }
    )


def refs_body(ids: Sequence[str]) -> bytes:
    """Approve, unapprove and delete name the entries only."""
    return orjson.dumps({"data": [{"id": id_, "type": "time_entries"} for id_ in ids]})
