"""A campaign may target a recipient list (`recipient_list_key`): its snapshot then takes
only the active members of that list's subtree (`<all>`: every list of the scope).

Revision ID: a9d4e2f7c3b1
Revises: f3c8d1e5b7a2
Create Date: 2026-12-03 17:50:00.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a9d4e2f7c3b1"
down_revision: str | Sequence[str] | None = "f3c8d1e5b7a2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("recipient_list_key", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("campaigns", "recipient_list_key")
