"""Outbound webhooks: an index for a client's deliveries, newest first
(`GET /api/client/webhooks/deliveries` pages them by id within the client).

Revision ID: d6a1b4c8e3f9
Revises: c5f9a3b7d2e8
Create Date: 2026-12-03 14:10:00.000000+00:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "d6a1b4c8e3f9"
down_revision: str | Sequence[str] | None = "c5f9a3b7d2e8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_webhook_deliveries_client_id_id"), "webhook_deliveries", ["client_id", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_webhook_deliveries_client_id_id"), table_name="webhook_deliveries")
