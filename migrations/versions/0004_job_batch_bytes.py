"""Jobs keep the bulk document's body as received (bytes) instead of a JSONB copy of it.

Storing the checked body as it came costs a plain byte copy; parsing it into JSONB cost the
submitting request more than parsing the JSON itself.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE jobs ALTER COLUMN batch TYPE bytea"
        " USING convert_to(jsonb_build_object('data', batch)::text, 'UTF8')"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE jobs ALTER COLUMN batch TYPE jsonb"
        " USING (convert_from(batch, 'UTF8')::jsonb -> 'data')"
    )
