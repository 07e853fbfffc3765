"""Campaign progress: snapshot start, cursor and target, enqueue cursor, floor and batch count; the
recipients' (campaign, status) index gains `id` for keyset paging and the enqueue feed; a
partial index finds recipients whose sending lease expired.

Revision ID: 5c1e7a9d3f20
Revises: 0b6d8e1f2a31
Create Date: 2026-11-23 15:00:00.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5c1e7a9d3f20"
down_revision: str | Sequence[str] | None = "0b6d8e1f2a31"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("snapshot_start", sa.BigInteger(), nullable=True))
    op.add_column("campaigns", sa.Column("snapshot_cursor", sa.BigInteger(), nullable=True))
    op.add_column("campaigns", sa.Column("snapshot_target", sa.BigInteger(), nullable=True))
    op.add_column("campaigns", sa.Column("snapshot_completed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "campaigns",
        sa.Column("enqueue_cursor", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "campaigns",
        sa.Column("enqueue_floor", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "campaigns", sa.Column("batch_count", sa.Integer(), server_default=sa.text("0"), nullable=False)
    )
    op.add_column("campaigns", sa.Column("last_enqueued_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        op.f("ix_campaign_recipients_campaign_id_status_id"),
        "campaign_recipients",
        ["campaign_id", "status", "id"],
        unique=False,
    )
    op.drop_index(op.f("ix_campaign_recipients_campaign_id_status"), table_name="campaign_recipients")
    op.create_index(
        "ix_campaign_recipients_sending_lease",
        "campaign_recipients",
        ["lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'sending'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_campaign_recipients_sending_lease",
        table_name="campaign_recipients",
        postgresql_where=sa.text("status = 'sending'"),
    )
    op.create_index(
        op.f("ix_campaign_recipients_campaign_id_status"),
        "campaign_recipients",
        ["campaign_id", "status"],
        unique=False,
    )
    op.drop_index(op.f("ix_campaign_recipients_campaign_id_status_id"), table_name="campaign_recipients")
    op.drop_column("campaigns", "last_enqueued_at")
    op.drop_column("campaigns", "batch_count")
    op.drop_column("campaigns", "enqueue_floor")
    op.drop_column("campaigns", "enqueue_cursor")
    op.drop_column("campaigns", "snapshot_completed_at")
    op.drop_column("campaigns", "snapshot_target")
    op.drop_column("campaigns", "snapshot_cursor")
    op.drop_column("campaigns", "snapshot_start")
