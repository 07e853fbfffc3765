"""Unsubscribe and double opt-in: transactional messages with a category keep the hash of
their unsubscribe token, and `subscription_verifications` holds the hashes of the
verification links (with their expiry and when they were used).

Revision ID: 9d2f4b6a8c13
Revises: 7a3c9e1d5b42
Create Date: 2026-12-03 13:10:00.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9d2f4b6a8c13"
down_revision: str | Sequence[str] | None = "7a3c9e1d5b42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("transactional_messages", sa.Column("unsubscribe_token_hash", sa.Text(), nullable=True))
    op.create_unique_constraint(
        op.f("uq_transactional_messages_unsubscribe_token_hash"),
        "transactional_messages",
        ["unsubscribe_token_hash"],
    )
    op.create_table(
        "subscription_verifications",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("contact_id", sa.BigInteger(), nullable=False),
        sa.Column("audience_id", sa.BigInteger(), nullable=False),
        sa.Column("client_id", sa.BigInteger(), nullable=False),
        sa.Column("token_hash", sa.Text(), nullable=False),
        sa.Column("transactional_message_id", sa.BigInteger(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["audience_id"],
            ["audiences.id"],
            name=op.f("fk_subscription_verifications_audience_id_audiences"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["clients.id"],
            name=op.f("fk_subscription_verifications_client_id_clients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_subscription_verifications_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["transactional_message_id"],
            ["transactional_messages.id"],
            name=op.f("fk_subscription_verifications_transactional_message_id_transactional_messages"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_verifications")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_subscription_verifications_token_hash")),
    )
    op.create_index(
        op.f("ix_subscription_verifications_client_id"), "subscription_verifications", ["client_id"]
    )
    op.create_index(
        op.f("ix_subscription_verifications_contact_id"), "subscription_verifications", ["contact_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_subscription_verifications_contact_id"), table_name="subscription_verifications")
    op.drop_index(op.f("ix_subscription_verifications_client_id"), table_name="subscription_verifications")
    op.drop_table("subscription_verifications")
    op.drop_constraint(
        op.f("uq_transactional_messages_unsubscribe_token_hash"), "transactional_messages", type_="unique"
    )
    op.drop_column("transactional_messages", "unsubscribe_token_hash")
