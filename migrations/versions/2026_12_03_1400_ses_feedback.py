"""SES feedback: a campaign paused by the bounce or complaint guard records why
(`paused_reason`: `bounce_rate_exceeded` / `complaint_rate_exceeded`; NULL for an
operator's pause, cleared on resume).

Revision ID: c5f9a3b7d2e8
Revises: b4e8f2a6c1d7
Create Date: 2026-12-03 14:00:00.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c5f9a3b7d2e8"
down_revision: str | Sequence[str] | None = "b4e8f2a6c1d7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("paused_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("campaigns", "paused_reason")
