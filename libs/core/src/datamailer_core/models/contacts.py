"""One contact per normalized email in each organization (the tenant); subscription,
tag and category state is scoped to an audience and optionally a client.

What is global about an address is only what the mailbox itself reported through SES: a
hard bounce or a complaint. Those are written to every organization's contact for the
address and kept as an organization-less `suppressions` row, so a contact created later
in any organization starts suppressed. Everything a client writes (verification,
validation verdicts and notes, manual suppression, unsubscribes) stays in its own
organization's row; another organization never reads or changes it, and erasure removes
one organization's data."""

from datetime import datetime
from typing import Final

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Text, UniqueConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column

from datamailer_core.db.base import Base, TimestampMixin
from datamailer_core.models.columns import EagerDefaults, bigint_pk, one_of

VALIDATION_STATUSES: Final = (
    "unknown",
    "valid",
    "invalid_syntax",
    "no_mx",
    "disposable",
    "risky",
    "manually_invalid",
    "externally_validated",
)
# The statuses that block marketing mail.
BAD_VALIDATION_STATUSES: Final = ("invalid_syntax", "no_mx", "disposable", "risky", "manually_invalid")
SUBSCRIPTION_STATUSES: Final = ("pending", "subscribed", "unsubscribed")
SUPPRESSION_REASONS: Final = ("hard_bounce", "complaint", "global_unsubscribe", "manual")

_CLIENT_LEVEL = text("client_id IS NOT NULL")
_AUDIENCE_LEVEL = text("client_id IS NULL")


class Contact(EagerDefaults, TimestampMixin, Base):
    __tablename__ = "contacts"
    __table_args__ = (
        one_of("validation_status", VALIDATION_STATUSES),
        UniqueConstraint("organization_id", "normalized_email"),
        Index(None, "normalized_email"),
    )

    id: Mapped[int] = bigint_pk()
    organization_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    email: Mapped[str] = mapped_column(Text)
    normalized_email: Mapped[str] = mapped_column(Text)
    verified_at: Mapped[datetime | None]
    global_unsubscribed_at: Mapped[datetime | None]
    hard_bounced_at: Mapped[datetime | None]
    complained_at: Mapped[datetime | None]
    validation_status: Mapped[str] = mapped_column(Text, server_default=text("'unknown'"))
    validation_reason: Mapped[str | None] = mapped_column(Text)
    validated_at: Mapped[datetime | None]


class Subscription(EagerDefaults, TimestampMixin, Base):
    """A row with `client_id` NULL is the audience-level subscription. Uniqueness is two
    partial indexes, so an upsert names the matching one: `on_conflict_do_update(
    index_elements=[...], index_where=Subscription.client_id.is_(None))` (or `is_not`)."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        one_of("status", SUBSCRIPTION_STATUSES),
        Index(
            "uq_subscriptions_contact_id_audience_id_client_id",
            "contact_id",
            "audience_id",
            "client_id",
            unique=True,
            postgresql_where=_CLIENT_LEVEL,
        ),
        Index(
            "uq_subscriptions_contact_id_audience_id_audience_level",
            "contact_id",
            "audience_id",
            unique=True,
            postgresql_where=_AUDIENCE_LEVEL,
        ),
        Index(None, "audience_id", "client_id", "status"),
        Index(None, "client_id"),
    )

    id: Mapped[int] = bigint_pk()
    contact_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("contacts.id", ondelete="CASCADE"))
    audience_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("audiences.id", ondelete="CASCADE"))
    client_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("clients.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    verified_at: Mapped[datetime | None]
    unsubscribed_at: Mapped[datetime | None]
    unsubscribe_reason: Mapped[str | None] = mapped_column(Text)


class Tag(EagerDefaults, Base):
    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("audience_id", "slug"),)

    id: Mapped[int] = bigint_pk()
    audience_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("audiences.id", ondelete="CASCADE"))
    slug: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)


class ContactTag(EagerDefaults, Base):
    __tablename__ = "contact_tags"
    __table_args__ = (UniqueConstraint("contact_id", "tag_id"), Index(None, "tag_id", "contact_id"))

    id: Mapped[int] = bigint_pk()
    contact_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("contacts.id", ondelete="CASCADE"))
    tag_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tags.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class CategoryPreference(EagerDefaults, Base):
    """Per contact, audience, optional client and category tag (a tag slug). No row
    means enabled. Uniqueness works like subscriptions (two partial indexes)."""

    __tablename__ = "category_preferences"
    __table_args__ = (
        Index(
            "uq_category_preferences_contact_id_audience_id_client_id_tag",
            "contact_id",
            "audience_id",
            "client_id",
            "tag",
            unique=True,
            postgresql_where=_CLIENT_LEVEL,
        ),
        Index(
            "uq_category_preferences_contact_id_audience_id_tag_aud_level",
            "contact_id",
            "audience_id",
            "tag",
            unique=True,
            postgresql_where=_AUDIENCE_LEVEL,
        ),
        Index(None, "client_id"),
    )

    id: Mapped[int] = bigint_pk()
    contact_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("contacts.id", ondelete="CASCADE"))
    audience_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("audiences.id", ondelete="CASCADE"))
    client_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("clients.id", ondelete="CASCADE"))
    tag: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    label: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class Suppression(EagerDefaults, Base):
    """Addresses that stay blocked after erasure: only a hash of the normalized address
    (hex text) is kept, never the address itself. A row with `organization_id` NULL is a
    fact about the mailbox (SES reported a hard bounce or complaint) and holds in every
    organization; any other row holds in its organization only."""

    __tablename__ = "suppressions"
    __table_args__ = (
        one_of("reason", SUPPRESSION_REASONS),
        Index(
            "uq_suppressions_organization_id_address_hash_reason",
            "organization_id",
            "address_hash",
            "reason",
            unique=True,
            postgresql_where=text("organization_id IS NOT NULL"),
        ),
        Index(
            "uq_suppressions_address_hash_reason_mailbox",
            "address_hash",
            "reason",
            unique=True,
            postgresql_where=text("organization_id IS NULL"),
        ),
    )

    id: Mapped[int] = bigint_pk()
    organization_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    address_hash: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
