"""job retention: purged_at, and the index of the purge's scan

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNPURGED = "purged_at IS NULL AND status IN ('succeeded', 'failed', 'canceled')"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_jobs_finished_at_unpurged",
        "jobs",
        ["finished_at"],
        unique=False,
        postgresql_where=sa.text(UNPURGED),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_jobs_finished_at_unpurged", table_name="jobs", postgresql_where=sa.text(UNPURGED)
    )
    op.drop_column("jobs", "purged_at")
