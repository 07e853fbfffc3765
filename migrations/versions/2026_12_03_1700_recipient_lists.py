"""Recipient lists and their direct members (ancestor membership is computed).

Revision ID: e7b2c4d9a1f3
Revises: d6a1b4c8e3f9
Create Date: 2026-12-03 17:00:00.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "e7b2c4d9a1f3"
down_revision: str | Sequence[str] | None = "d6a1b4c8e3f9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "recipient_lists",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("client_id", sa.BigInteger(), nullable=False),
        sa.Column("audience_id", sa.BigInteger(), nullable=False),
        sa.Column("list_key", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["audience_id"],
            ["audiences.id"],
            name=op.f("fk_recipient_lists_audience_id_audiences"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["clients.id"],
            name=op.f("fk_recipient_lists_client_id_clients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recipient_lists")),
        sa.UniqueConstraint(
            "client_id",
            "audience_id",
            "list_key",
            name=op.f("uq_recipient_lists_client_id_audience_id_list_key"),
        ),
    )
    op.create_table(
        "recipient_list_members",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("list_id", sa.BigInteger(), nullable=False),
        sa.Column("contact_id", sa.BigInteger(), nullable=False),
        sa.Column("source_object_key", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'active'"), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        *_timestamps(),
        sa.CheckConstraint("status IN ('active', 'removed')", name=op.f("ck_recipient_list_members_status")),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_recipient_list_members_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["list_id"],
            ["recipient_lists.id"],
            name=op.f("fk_recipient_list_members_list_id_recipient_lists"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recipient_list_members")),
        sa.UniqueConstraint(
            "list_id", "source_object_key", name=op.f("uq_recipient_list_members_list_id_source_object_key")
        ),
    )
    op.create_index(
        op.f("ix_recipient_list_members_list_id_status_contact_id"),
        "recipient_list_members",
        ["list_id", "status", "contact_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_recipient_list_members_contact_id"), "recipient_list_members", ["contact_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_recipient_list_members_contact_id"), table_name="recipient_list_members")
    op.drop_index(
        op.f("ix_recipient_list_members_list_id_status_contact_id"), table_name="recipient_list_members"
    )
    op.drop_table("recipient_list_members")
    op.drop_table("recipient_lists")
