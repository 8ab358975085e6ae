"""The columns of `time_entries` that leave the database: what renders, in the spec's order,
and the references an entry holds to people, services and tasks.

Reads (lock, reload, list) select these, the renderer turns them into attributes and
relationships, and the bulk documents set them; one list keeps them all in step.
"""

from __future__ import annotations

from dataclasses import dataclass

# Money in cents, in the person's, the default and the reporting currency.
COST_COLUMNS = (
    "cost",
    "cost_default",
    "cost_normalized",
    "work_cost",
    "work_cost_default",
    "work_cost_normalized",
    "overhead_cost",
    "overhead_cost_default",
    "overhead_cost_normalized",
    "internal_overhead_cost",
    "internal_overhead_cost_default",
    "internal_overhead_cost_normalized",
    "facility_overhead_cost",
    "facility_overhead_cost_default",
    "facility_overhead_cost_normalized",
)
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
# Columns a renderer needs from the time_entries table.
COLUMNS = ("id", "organization_id", *ATTRIBUTES)


@dataclass(frozen=True)
class Reference:
    """A relationship a client sets on an entry: its member name, its target's resource type,
    the column holding the target's id, and whether it may be null."""

    name: str
    type: str
    column: str
    optional: bool = False


REFERENCES = (
    Reference("person", "people", "person_id"),
    Reference("service", "services", "service_id"),
    Reference("task", "tasks", "task_id", optional=True),
)
REFERENCE_NAMED = {reference.name: reference for reference in REFERENCES}
REFERENCE_IN = {reference.column: reference for reference in REFERENCES}
# What a read of entries selects: what renders, and the references that `include` follows.
READ_COLUMNS = (*COLUMNS, *(reference.column for reference in REFERENCES))
