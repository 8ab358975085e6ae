"""Jobs carry their rank, their place in their organization's line when they were submitted.

The rank orders dispatch across organizations (shared/jobs/fairness.py): an organization's
first unfinished job goes before another organization's tenth. A partial index makes the
per-organization count of unfinished jobs, taken at every submission, cheap.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("rank", sa.SmallInteger(), server_default="0", nullable=False))
    op.create_index(
        "ix_jobs_organization_id_unfinished",
        "jobs",
        ["organization_id"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_organization_id_unfinished", table_name="jobs")
    op.drop_column("jobs", "rank")
