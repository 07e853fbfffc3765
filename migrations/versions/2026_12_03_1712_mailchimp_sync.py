"""Mailchimp one-way sync per client: the account (write-only key), tag mappings of
recipient-list subtrees, and the `mailchimp_syncs` outbox.

Revision ID: f3c8d1e5b7a2
Revises: e7b2c4d9a1f3
Create Date: 2026-12-03 17:12:53.474430+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "f3c8d1e5b7a2"
down_revision: str | Sequence[str] | None = "e7b2c4d9a1f3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mailchimp_accounts",
        sa.Column("client_id", sa.BigInteger(), nullable=False),
        sa.Column("api_key", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("list_id", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["clients.id"],
            name=op.f("fk_mailchimp_accounts_client_id_clients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_mailchimp_accounts")),
    )
    op.create_table(
        "mailchimp_syncs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("client_id", sa.BigInteger(), nullable=False),
        sa.Column("audience_id", sa.BigInteger(), nullable=True),
        sa.Column("contact_id", sa.BigInteger(), nullable=True),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("subscriber_hash", sa.Text(), nullable=True),
        sa.Column(
            "tags",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("status", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column(
            "next_attempt_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempt_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("action IN ('upsert', 'delete')", name=op.f("ck_mailchimp_syncs_action")),
        sa.CheckConstraint(
            "status IN ('pending', 'sending', 'delivered', 'failed', 'skipped')",
            name=op.f("ck_mailchimp_syncs_status"),
        ),
        sa.ForeignKeyConstraint(
            ["audience_id"],
            ["audiences.id"],
            name=op.f("fk_mailchimp_syncs_audience_id_audiences"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["clients.id"],
            name=op.f("fk_mailchimp_syncs_client_id_clients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_mailchimp_syncs_contact_id_contacts"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mailchimp_syncs")),
    )
    op.create_index(
        op.f("ix_mailchimp_syncs_client_id_id"), "mailchimp_syncs", ["client_id", "id"], unique=False
    )
    op.create_index(op.f("ix_mailchimp_syncs_contact_id"), "mailchimp_syncs", ["contact_id"], unique=False)
    op.create_index(
        op.f("ix_mailchimp_syncs_status_next_attempt_at"),
        "mailchimp_syncs",
        ["status", "next_attempt_at"],
        unique=False,
    )
    op.create_table(
        "mailchimp_tag_mappings",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("client_id", sa.BigInteger(), nullable=False),
        sa.Column("audience_id", sa.BigInteger(), nullable=False),
        sa.Column("list_key", sa.Text(), nullable=False),
        sa.Column("tag", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["audience_id"],
            ["audiences.id"],
            name=op.f("fk_mailchimp_tag_mappings_audience_id_audiences"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["clients.id"],
            name=op.f("fk_mailchimp_tag_mappings_client_id_clients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mailchimp_tag_mappings")),
        sa.UniqueConstraint(
            "client_id",
            "audience_id",
            "list_key",
            "tag",
            name=op.f("uq_mailchimp_tag_mappings_client_id_audience_id_list_key_tag"),
        ),
    )


def downgrade() -> None:
    op.drop_table("mailchimp_tag_mappings")
    op.drop_index(op.f("ix_mailchimp_syncs_status_next_attempt_at"), table_name="mailchimp_syncs")
    op.drop_index(op.f("ix_mailchimp_syncs_contact_id"), table_name="mailchimp_syncs")
    op.drop_index(op.f("ix_mailchimp_syncs_client_id_id"), table_name="mailchimp_syncs")
    op.drop_table("mailchimp_syncs")
    op.drop_table("mailchimp_accounts")
