"""Time entries as JSON:API resources, attribute for attribute as in the spec's examples."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any
from zoneinfo import ZoneInfo

from shared.costs import COST_COLUMNS

# Attribute order is part of the contract: it is the spec's.
ATTRIBUTES = (
    "date",
    "created_at",
    "time",
    "billable_time",
    "recognized_time",
    "note",
    "track_method_id",
    "started_at",
    "timer_started_at",
    "timer_stopped_at",
    "approved",
    "approved_at",
    "updated_at",
    "calendar_event_id",
    "invoice_attribution_id",
    "invoiced",
    "overhead",
    "rejected",
    "rejected_reason",
    "rejected_at",
    "last_activity_at",
    "submitted",
    "currency",
    "currency_default",
    "currency_normalized",
    *COST_COLUMNS,
)
TIMESTAMPS = frozenset(
    {
        "created_at",
        "started_at",
        "timer_started_at",
        "timer_stopped_at",
        "approved_at",
        "updated_at",
        "rejected_at",
        "last_activity_at",
    }
)
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
# Columns a renderer needs from the time_entries table.
COLUMNS = ("id", "organization_id", *ATTRIBUTES)

_NOT_INCLUDED = {"meta": {"included": False}}


def format_timestamp(value: dt.datetime, zone: dt.tzinfo) -> str:
    local = value.astimezone(zone)
    return local.isoformat(timespec="milliseconds")


class EntryRenderer:
    """Renders entries of one organization; the zone and relationship blocks are built once."""

    def __init__(self, organization_id: int, time_zone: str) -> None:
        self.zone = ZoneInfo(time_zone)
        self.organization = {"data": {"type": "organizations", "id": str(organization_id)}}

    def resource(self, row: Mapping[Any, Any]) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        zone = self.zone
        for name in ATTRIBUTES:
            value = row[name]
            if value is not None:
                if name in TIMESTAMPS:
                    value = format_timestamp(value, zone)
                elif name == "date":
                    value = value.isoformat()
            attributes[name] = value
        relationships: dict[str, Any] = {"organization": self.organization}
        for name in RELATIONSHIPS[1:]:
            relationships[name] = _NOT_INCLUDED
        return {
            "id": str(row["id"]),
            "type": "time_entries",
            "attributes": attributes,
            "relationships": relationships,
        }

    def collection(self, rows: Iterable[Mapping[Any, Any]]) -> dict[str, Any]:
        return {"data": [self.resource(row) for row in rows], "meta": {}}
