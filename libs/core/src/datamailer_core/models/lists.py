"""Recipient lists: client-scoped batches of contacts keyed by a tree path
(`course:2025:cohort-a`), unique per client and audience as Datamailer documents.

Only direct memberships are stored. Membership of an ancestor (`course:2025`, `course`)
and of the audience root `<all>` is computed at read time from the descendants' rows
(`list_key = :key OR list_key LIKE :key || ':%'`), so removing a member from a child
needs no bookkeeping: the contact stays in an ancestor exactly while another active
row in its subtree (or a direct row) holds it."""

from datetime import datetime
from typing import Any, Final

from sqlalchemy import BigInteger, ForeignKey, Index, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from datamailer_core.db.base import Base, TimestampMixin
from datamailer_core.models.columns import EagerDefaults, bigint_pk, jsonb_object, one_of

MEMBER_STATUSES: Final = ("active", "removed")
ROOT_KEY: Final = "<all>"


class RecipientList(EagerDefaults, TimestampMixin, Base):
    __tablename__ = "recipient_lists"
    __table_args__ = (UniqueConstraint("client_id", "audience_id", "list_key"),)

    id: Mapped[int] = bigint_pk()
    client_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("clients.id", ondelete="CASCADE"))
    audience_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("audiences.id", ondelete="CASCADE"))
    list_key: Mapped[str] = mapped_column(Text)
    list_type: Mapped[str | None] = mapped_column("type", Text)
    name: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = jsonb_object("metadata")


class RecipientListMember(EagerDefaults, TimestampMixin, Base):
    __tablename__ = "recipient_list_members"
    __table_args__ = (
        one_of("status", MEMBER_STATUSES),
        UniqueConstraint("list_id", "source_object_key"),
        # The set-based reads (ancestor counts, a campaign snapshot's join) walk a
        # subtree's lists and take their active contacts from this index alone.
        Index(None, "list_id", "status", "contact_id"),
        Index(None, "contact_id"),
    )

    id: Mapped[int] = bigint_pk()
    list_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("recipient_lists.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("contacts.id", ondelete="CASCADE"))
    source_object_key: Mapped[str] = mapped_column(Text)
    email: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'active'"))
    metadata_: Mapped[dict[str, Any]] = jsonb_object("metadata")
    removed_at: Mapped[datetime | None]
