"""The append-only email event timeline."""

from datetime import datetime
from typing import Any, Final

from sqlalchemy import BigInteger, ForeignKey, Index, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from datamailer_core.db.base import Base
from datamailer_core.models.columns import EagerDefaults, bigint_pk, jsonb_object

# Known event types; not a CHECK constraint, as new provider notifications add types.
EVENT_TYPES: Final = (
    "queued",
    "skipped",
    "sent",
    "delivered",
    "delivery_delay",
    "open",
    "click",
    "unsubscribe",
    "subscribe",
    "bounce",
    "complaint",
    "reject",
    "rendering_failure",
    "failed",
    # SES's own send, open, click and subscription events (repositories/ses_feedback.py):
    # recorded for diagnosis, never counted (first-party tracking counts opens and clicks).
    "ses_send",
    "ses_open",
    "ses_click",
    "ses_subscription",
)


def _set_null(target: str) -> ForeignKey:
    return ForeignKey(target, ondelete="SET NULL")


class EmailEvent(EagerDefaults, Base):
    """One row per thing that happened to a message or contact; rows are only ever
    inserted (erasure sets `contact_id` NULL and scrubs `metadata`/`url`).

    Designed so it can become a table partitioned by month on `created_at`: no other
    table references it, every lookup index leads with a scope column and ends with
    `created_at`, and nothing relies on `id` ordering across months. Converting means a
    primary key of `(id, created_at)` and moving `provider_event_id` deduplication to a
    unique index that includes `created_at` or to a small side table, since PostgreSQL
    requires the partition key in every unique constraint of a partitioned table.
    """

    __tablename__ = "email_events"
    __table_args__ = (
        Index(
            "uq_email_events_provider_event_id",
            "provider_event_id",
            unique=True,
            postgresql_where=text("provider_event_id IS NOT NULL"),
        ),
        Index(None, "contact_id", "created_at"),
        Index(None, "campaign_id", "event_type", "created_at"),
        Index(None, "campaign_recipient_id", "event_type"),
        Index(None, "client_id", "created_at"),
        Index(None, "transactional_message_id"),
    )

    id: Mapped[int] = bigint_pk()
    event_type: Mapped[str] = mapped_column(Text)
    campaign_id: Mapped[int | None] = mapped_column(BigInteger, _set_null("campaigns.id"))
    campaign_recipient_id: Mapped[int | None] = mapped_column(BigInteger, _set_null("campaign_recipients.id"))
    transactional_message_id: Mapped[int | None] = mapped_column(
        BigInteger, _set_null("transactional_messages.id")
    )
    contact_id: Mapped[int | None] = mapped_column(BigInteger, _set_null("contacts.id"))
    client_id: Mapped[int | None] = mapped_column(BigInteger, _set_null("clients.id"))
    audience_id: Mapped[int | None] = mapped_column(BigInteger, _set_null("audiences.id"))
    url: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = jsonb_object("metadata")
    # `ses` for provider notifications; NULL for first-party events.
    provider: Mapped[str | None] = mapped_column(Text)
    # SNS MessageId for SES notifications: the deduplication key.
    provider_event_id: Mapped[str | None] = mapped_column(Text)
    ses_message_id: Mapped[str | None] = mapped_column(Text)
    # When it happened (provider timestamp); `created_at` is when it was recorded.
    occurred_at: Mapped[datetime] = mapped_column(server_default=func.now())
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
