"""Jobs remember the last internal error of their runs and how many runs in a row met it.

A job fails for an internal error only once the same error has come back on every run up to
the attempts limit: a deterministic bug, not a fault of the moment (shared/jobs/faults.py).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("last_error", sa.Text(), nullable=True))
    op.add_column(
        "jobs", sa.Column("error_streak", sa.Integer(), server_default="0", nullable=False)
    )


def downgrade() -> None:
    op.drop_column("jobs", "error_streak")
    op.drop_column("jobs", "last_error")
