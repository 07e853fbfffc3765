"""First-party tracking: opens are told apart from privacy-proxy and scanner fetches. A
recipient's first human open (`first_human_opened_at`) and the campaign's unique human
opens (`unique_human_open_count`) sit next to the totals that count every open.

Revision ID: 7a3c9e1d5b42
Revises: 5c1e7a9d3f20
Create Date: 2026-12-03 13:00:00.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7a3c9e1d5b42"
down_revision: str | Sequence[str] | None = "5c1e7a9d3f20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "campaign_recipients", sa.Column("first_human_opened_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "campaigns",
        sa.Column("unique_human_open_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("campaigns", "unique_human_open_count")
    op.drop_column("campaign_recipients", "first_human_opened_at")
