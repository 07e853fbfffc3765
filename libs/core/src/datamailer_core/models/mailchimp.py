"""One-way Mailchimp sync per client: the account (write-only API key), tag mappings of
recipient-list subtrees, and an outbox of syncs written in the same transaction as the
contact change they push."""

from datetime import datetime
from typing import Any, Final

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, Text, UniqueConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column

from datamailer_core.db.base import Base, TimestampMixin
from datamailer_core.models.columns import EagerDefaults, LeaseMixin, bigint_pk, jsonb_array, one_of

SYNC_STATUSES: Final = ("pending", "sending", "delivered", "failed", "skipped")
SYNC_ACTIONS: Final = ("upsert", "delete")


class MailchimpAccount(EagerDefaults, TimestampMixin, Base):
    """The client's Mailchimp audience. The API key is never returned by any route."""

    __tablename__ = "mailchimp_accounts"

    client_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("clients.id", ondelete="CASCADE"), primary_key=True
    )
    api_key: Mapped[str] = mapped_column(Text, server_default=text("''"))
    list_id: Mapped[str] = mapped_column(Text, server_default=text("''"))
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))


class MailchimpTagMapping(EagerDefaults, TimestampMixin, Base):
    """`list_key` names a recipient-list subtree (`course:2025` covers
    `course:2025:cohort-a`; `<all>` covers every key)."""

    __tablename__ = "mailchimp_tag_mappings"
    __table_args__ = (UniqueConstraint("client_id", "audience_id", "list_key", "tag"),)

    id: Mapped[int] = bigint_pk()
    client_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("clients.id", ondelete="CASCADE"))
    audience_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("audiences.id", ondelete="CASCADE"))
    list_key: Mapped[str] = mapped_column(Text)
    tag: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))


class MailchimpSync(EagerDefaults, LeaseMixin, TimestampMixin, Base):
    """`upsert` puts the member as the contact is at dispatch time, then applies `tags`
    (`[{"name", "status": "active"|"inactive"}]`); `delete` permanently deletes the
    member by `subscriber_hash` (the contact is gone by then)."""

    __tablename__ = "mailchimp_syncs"
    __table_args__ = (
        one_of("status", SYNC_STATUSES),
        one_of("action", SYNC_ACTIONS),
        Index(None, "status", "next_attempt_at"),
        Index(None, "client_id", "id"),
        Index(None, "contact_id"),
    )

    id: Mapped[int] = bigint_pk()
    client_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("clients.id", ondelete="CASCADE"))
    audience_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("audiences.id", ondelete="SET NULL")
    )
    contact_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("contacts.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(Text)
    subscriber_hash: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[dict[str, Any]]] = jsonb_array()
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    delivered_at: Mapped[datetime | None]
