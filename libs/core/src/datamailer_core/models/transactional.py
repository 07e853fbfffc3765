"""Transactional templates and messages. A message row is committed before its queue
message is sent; a sweeper re-enqueues `queued` rows whose `updated_at` is too old."""

from datetime import datetime
from typing import Any, Final

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from datamailer_core.db.base import Base, TimestampMixin
from datamailer_core.models.columns import (
    EagerDefaults,
    LeaseMixin,
    bigint_pk,
    counter,
    jsonb_array,
    jsonb_object,
    one_of,
)

MESSAGE_STATUSES: Final = ("queued", "sending", "sent", "failed", "skipped", "bounced", "complained")
UNFINISHED_MESSAGE_STATUSES: Final = ("queued", "sending")


class EmailTemplate(EagerDefaults, TimestampMixin, Base):
    __tablename__ = "email_templates"
    __table_args__ = (UniqueConstraint("client_id", "key"),)

    id: Mapped[int] = bigint_pk()
    client_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("clients.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    html_body: Mapped[str | None] = mapped_column(Text)
    text_body: Mapped[str | None] = mapped_column(Text)
    # [{"name": ..., "description": ...}, ...]
    required_context: Mapped[list[dict[str, Any]]] = jsonb_array()
    example_context: Mapped[dict[str, Any]] = jsonb_object()
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    is_transactional: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    default_sender_id: Mapped[str | None] = mapped_column(Text)


class TransactionalMessage(EagerDefaults, LeaseMixin, TimestampMixin, Base):
    """`contact_id` and `template_id` are SET NULL on delete/erasure; `template_key` and
    the rendered content stay as sent."""

    __tablename__ = "transactional_messages"
    __table_args__ = (
        one_of("status", MESSAGE_STATUSES),
        UniqueConstraint("client_id", "idempotency_key"),
        Index(None, "ses_message_id"),
        Index(None, "contact_id"),
        Index(None, "template_id"),
        Index(
            "ix_transactional_messages_unfinished_updated_at",
            "status",
            "updated_at",
            postgresql_where=text("status IN ('queued', 'sending')"),
        ),
    )

    id: Mapped[int] = bigint_pk()
    client_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("clients.id", ondelete="CASCADE"))
    contact_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("contacts.id", ondelete="SET NULL"))
    # Set with `category_tag` (the category check is per audience).
    audience_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("audiences.id", ondelete="SET NULL")
    )
    template_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("email_templates.id", ondelete="SET NULL")
    )
    template_key: Mapped[str] = mapped_column(Text)
    email: Mapped[str] = mapped_column(Text)
    # The client's sender id (`from_email` in the API) and the address it resolved to.
    sender_id: Mapped[str] = mapped_column(Text)
    from_address: Mapped[str] = mapped_column(Text)
    reply_to: Mapped[str | None] = mapped_column(Text)
    cc: Mapped[list[str]] = jsonb_array()
    bcc: Mapped[list[str]] = jsonb_array()
    headers: Mapped[dict[str, str]] = jsonb_object()
    category_tag: Mapped[str | None] = mapped_column(Text)
    # Hash of the unsubscribe token in the sent message's List-Unsubscribe header and
    # link; set at claim time for a message with a category (the token is never stored).
    unsubscribe_token_hash: Mapped[str | None] = mapped_column(Text, unique=True)
    subject: Mapped[str] = mapped_column(Text)
    html_body: Mapped[str | None] = mapped_column(Text)
    text_body: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'queued'"))
    # Why a message was skipped or failed (`hard_bounce`, `queue_payload_mismatch`, ...).
    status_reason: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str] = mapped_column(Text)
    ses_message_id: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = jsonb_object("metadata")
    enqueued_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    bounced_at: Mapped[datetime | None]
    complained_at: Mapped[datetime | None]
    first_opened_at: Mapped[datetime | None]
    first_clicked_at: Mapped[datetime | None]
    open_count: Mapped[int] = counter()
    click_count: Mapped[int] = counter()
    last_error: Mapped[str | None] = mapped_column(Text)
