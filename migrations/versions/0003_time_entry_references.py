"""Time entries: references checked set-based by the domain instead of per-row triggers.

A foreign key costs one trigger call per row and constraint; a 10,000-entry batch paid
~70 ms per constraint. The domain already looks every referenced person, service and task up
with one query per kind, inside the organization, and now takes FOR KEY SHARE on them: the
same guarantee a foreign key gives, for the whole batch at once.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REFERENCES = (
    ("organization_id", "organizations", None),
    ("person_id", "people", None),
    ("service_id", "services", None),
    ("task_id", "tasks", None),
    ("approver_id", "people", "SET NULL"),
    ("rejecter_id", "people", "SET NULL"),
    ("creator_id", "people", "SET NULL"),
    ("updater_id", "people", "SET NULL"),
    ("last_actor_id", "people", "SET NULL"),
)


def _name(column: str, table: str) -> str:
    return f"fk_time_entries_{column}_{table}"


def upgrade() -> None:
    for column, table, _ in REFERENCES:
        op.drop_constraint(_name(column, table), "time_entries", type_="foreignkey")


def downgrade() -> None:
    for column, table, ondelete in REFERENCES:
        op.create_foreign_key(
            _name(column, table), "time_entries", table, [column], ["id"], ondelete=ondelete
        )
