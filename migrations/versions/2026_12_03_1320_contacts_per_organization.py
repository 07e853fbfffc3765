"""Contacts per organization: a contact row belongs to one organization (unique
`(organization_id, normalized_email)`), so what one organization writes about an address
(verification, validation, manual suppression, unsubscribes) and its erasure never reach
another. Suppressions gain `organization_id`: NULL rows are mailbox facts reported by SES
(hard bounce, complaint) that hold in every organization.

Existing contacts shared by several organizations are split: the lowest organization id
keeps the row, every other organization gets a copy of it and its rows are re-pointed.
Contacts that no organization references carry no client data; their suppression is kept
as mailbox facts and the rows are removed.

Revision ID: b4e8f2a6c1d7
Revises: 9d2f4b6a8c13
Create Date: 2026-12-03 13:20:00.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b4e8f2a6c1d7"
down_revision: str | Sequence[str] | None = "9d2f4b6a8c13"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, how a row of it names its organization) for every table that references a contact.
_REFERENCES = (
    ("subscriptions", "JOIN audiences a ON a.id = x.audience_id", "a.organization_id"),
    (
        "contact_tags",
        "JOIN tags t ON t.id = x.tag_id JOIN audiences a ON a.id = t.audience_id",
        "a.organization_id",
    ),
    ("category_preferences", "JOIN audiences a ON a.id = x.audience_id", "a.organization_id"),
    ("subscription_verifications", "JOIN audiences a ON a.id = x.audience_id", "a.organization_id"),
    (
        "campaign_recipients",
        "JOIN campaigns c ON c.id = x.campaign_id JOIN clients cl ON cl.id = c.client_id",
        "cl.organization_id",
    ),
    ("transactional_messages", "JOIN clients cl ON cl.id = x.client_id", "cl.organization_id"),
    (
        "email_events",
        "LEFT JOIN clients cl ON cl.id = x.client_id LEFT JOIN audiences a ON a.id = x.audience_id",
        "COALESCE(cl.organization_id, a.organization_id)",
    ),
)


def _repoint(table: str, join: str, organization: str, mapping: str) -> str:
    """Move `table`'s rows from the old contact id to the one of their organization."""
    return f"""
        UPDATE {table} u SET contact_id = m.new_id
        FROM {table} x {join}, {mapping} m
        WHERE u.id = x.id AND x.contact_id = m.old_id AND {organization} = m.organization_id
    """


def upgrade() -> None:
    op.add_column("contacts", sa.Column("organization_id", sa.BigInteger(), nullable=True))
    op.drop_constraint(op.f("uq_contacts_normalized_email"), "contacts", type_="unique")
    references = " UNION ".join(
        f"SELECT x.contact_id, {org} AS organization_id FROM {table} x {join} WHERE x.contact_id IS NOT NULL"
        for table, join, org in _REFERENCES
    )
    op.execute(
        f"CREATE TEMPORARY TABLE contact_orgs ON COMMIT DROP AS "
        f"SELECT DISTINCT contact_id, organization_id FROM ({references}) r WHERE organization_id IS NOT NULL"
    )
    op.execute(
        "UPDATE contacts c SET organization_id = f.organization_id "
        "FROM (SELECT contact_id, min(organization_id) AS organization_id FROM contact_orgs "
        "GROUP BY contact_id) f WHERE c.id = f.contact_id"
    )
    op.execute(
        """
        INSERT INTO contacts (organization_id, email, normalized_email, verified_at, global_unsubscribed_at,
                              hard_bounced_at, complained_at, validation_status, validation_reason,
                              validated_at, created_at, updated_at)
        SELECT co.organization_id, c.email, c.normalized_email, c.verified_at, c.global_unsubscribed_at,
               c.hard_bounced_at, c.complained_at, c.validation_status, c.validation_reason, c.validated_at,
               c.created_at, c.updated_at
        FROM contact_orgs co JOIN contacts c ON c.id = co.contact_id
        WHERE co.organization_id <> c.organization_id
        """
    )
    op.execute(
        """
        CREATE TEMPORARY TABLE contact_moves ON COMMIT DROP AS
        SELECT co.contact_id AS old_id, n.id AS new_id, co.organization_id
        FROM contact_orgs co
        JOIN contacts o ON o.id = co.contact_id
        JOIN contacts n ON n.normalized_email = o.normalized_email AND n.organization_id = co.organization_id
        WHERE co.organization_id <> o.organization_id
        """
    )
    for table, join, org in _REFERENCES:
        op.execute(_repoint(table, join, org, "contact_moves"))

    op.add_column("suppressions", sa.Column("organization_id", sa.BigInteger(), nullable=True))
    op.drop_constraint(op.f("uq_suppressions_address_hash"), "suppressions", type_="unique")
    op.create_foreign_key(
        op.f("fk_suppressions_organization_id_organizations"),
        "suppressions",
        "organizations",
        ["organization_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_index(
        "uq_suppressions_organization_id_address_hash_reason",
        "suppressions",
        ["organization_id", "address_hash", "reason"],
        unique=True,
        postgresql_where=sa.text("organization_id IS NOT NULL"),
    )
    op.create_index(
        "uq_suppressions_address_hash_reason_mailbox",
        "suppressions",
        ["address_hash", "reason"],
        unique=True,
        postgresql_where=sa.text("organization_id IS NULL"),
    )
    # Unreferenced contacts: keep what blocks mail, as mailbox facts, then drop them.
    op.execute(
        """
        INSERT INTO suppressions (address_hash, reason)
        SELECT encode(sha256(convert_to(c.normalized_email, 'UTF8')), 'hex'), r.reason
        FROM contacts c
        CROSS JOIN LATERAL (VALUES ('hard_bounce', c.hard_bounced_at), ('complaint', c.complained_at),
                                   ('global_unsubscribe', c.global_unsubscribed_at)) AS r(reason, at)
        WHERE c.organization_id IS NULL AND r.at IS NOT NULL
        ON CONFLICT DO NOTHING
        """
    )
    op.execute("DELETE FROM contacts WHERE organization_id IS NULL")

    op.alter_column("contacts", "organization_id", nullable=False)
    op.create_foreign_key(
        op.f("fk_contacts_organization_id_organizations"),
        "contacts",
        "organizations",
        ["organization_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_unique_constraint(
        op.f("uq_contacts_organization_id_normalized_email"),
        "contacts",
        ["organization_id", "normalized_email"],
    )
    op.create_index(op.f("ix_contacts_normalized_email"), "contacts", ["normalized_email"], unique=False)


def downgrade() -> None:
    # One row per address again: the lowest id keeps it; the others' rows move to it.
    op.execute(
        """
        CREATE TEMPORARY TABLE contact_merges ON COMMIT DROP AS
        SELECT c.id AS old_id, k.keep_id AS new_id
        FROM contacts c
        JOIN (SELECT normalized_email, min(id) AS keep_id FROM contacts GROUP BY normalized_email) k
          ON k.normalized_email = c.normalized_email
        WHERE c.id <> k.keep_id
        """
    )
    for table, _, _ in _REFERENCES:
        op.execute(
            f"UPDATE {table} x SET contact_id = m.new_id FROM contact_merges m WHERE x.contact_id = m.old_id"
        )
    op.execute("DELETE FROM contacts c USING contact_merges m WHERE c.id = m.old_id")
    op.drop_index(op.f("ix_contacts_normalized_email"), table_name="contacts")
    op.drop_constraint(op.f("uq_contacts_organization_id_normalized_email"), "contacts", type_="unique")
    op.drop_constraint(op.f("fk_contacts_organization_id_organizations"), "contacts", type_="foreignkey")
    op.drop_column("contacts", "organization_id")
    op.create_unique_constraint(op.f("uq_contacts_normalized_email"), "contacts", ["normalized_email"])

    op.execute(
        "DELETE FROM suppressions s USING suppressions t "
        "WHERE s.address_hash = t.address_hash AND s.id > t.id"
    )
    op.drop_index(
        "uq_suppressions_address_hash_reason_mailbox",
        table_name="suppressions",
        postgresql_where=sa.text("organization_id IS NULL"),
    )
    op.drop_index(
        "uq_suppressions_organization_id_address_hash_reason",
        table_name="suppressions",
        postgresql_where=sa.text("organization_id IS NOT NULL"),
    )
    op.drop_constraint(
        op.f("fk_suppressions_organization_id_organizations"), "suppressions", type_="foreignkey"
    )
    op.drop_column("suppressions", "organization_id")
    op.create_unique_constraint(op.f("uq_suppressions_address_hash"), "suppressions", ["address_hash"])
