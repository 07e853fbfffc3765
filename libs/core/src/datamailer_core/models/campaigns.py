"""Campaigns and their recipient rows: one row per intended recipient is the audit
trail of who was (or was not, and why) sent a campaign."""

from datetime import datetime
from typing import Any, Final

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from datamailer_core.db.base import Base, TimestampMixin
from datamailer_core.models.columns import EagerDefaults, LeaseMixin, bigint_pk, counter, jsonb_object, one_of

CAMPAIGN_STATUSES: Final = (
    "draft",
    "scheduled",
    "snapshotting",
    "sending",
    "paused",
    "sent",
    "cancelled",
    "failed",
)
RECIPIENT_STATUSES: Final = (
    "pending",
    "sending",
    "sent",
    "skipped",
    "failed",
    "bounced",
    "complained",
    "unsubscribed",
)
# Snapshot eligibility, in order: the first matching reason is recorded.
SKIP_REASONS: Final = (
    "hard_bounce",
    "complaint",
    "global_unsubscribe",
    "invalid_email",
    "unverified",
    "audience_unsubscribe",
    "client_unsubscribe",
    "suppressed",
    "category_unsubscribe",
)
# The bounce / complaint guard (repositories/campaigns.py, `pause_if_rates_exceeded`).
PAUSE_REASONS: Final = ("bounce_rate_exceeded", "complaint_rate_exceeded")
COUNTERS: Final = (
    "recipient_count",
    "sent_count",
    "skipped_count",
    "failed_count",
    "delivered_count",
    "open_count",
    "unique_open_count",
    "unique_human_open_count",
    "click_count",
    "unique_click_count",
    "unsubscribe_count",
    "bounce_count",
    "complaint_count",
)

_EMPTY_TEXT_ARRAY = text("'{}'::text[]")


class Campaign(EagerDefaults, TimestampMixin, Base):
    __tablename__ = "campaigns"
    __table_args__ = (
        one_of("status", CAMPAIGN_STATUSES),
        UniqueConstraint("client_id", "external_key"),
        Index(None, "audience_id"),
        Index(None, "status", "scheduled_at"),
    )

    id: Mapped[int] = bigint_pk()
    client_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("clients.id", ondelete="CASCADE"))
    audience_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("audiences.id", ondelete="CASCADE"))
    external_key: Mapped[str] = mapped_column(String(180))
    subject: Mapped[str] = mapped_column(String(255))
    preview_text: Mapped[str | None] = mapped_column(Text)
    html_body: Mapped[str | None] = mapped_column(Text)
    text_body: Mapped[str | None] = mapped_column(Text)
    # A sender id of the client (`from_email` in the API); NULL means the client default.
    sender_id: Mapped[str | None] = mapped_column(Text)
    # Sorted, de-duplicated tag slugs of the campaign's audience.
    include_tags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=_EMPTY_TEXT_ARRAY)
    exclude_tags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=_EMPTY_TEXT_ARRAY)
    category_tag: Mapped[str | None] = mapped_column(Text)
    # A recipient list of the campaign's client and audience (`<all>`: every list): only
    # the active members of its subtree are intended recipients. NULL: the whole audience.
    recipient_list_key: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = jsonb_object("metadata")
    scheduled_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(Text, server_default=text("'draft'"))
    queued_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # Why the campaign paused itself (PAUSE_REASONS); NULL for an operator's pause and
    # cleared on resume.
    paused_reason: Mapped[str | None] = mapped_column(Text)
    # Snapshot progress: contacts are snapshotted in id ranges from `snapshot_start` up to
    # `snapshot_target` (the client's subscribers' id range when it started);
    # `snapshot_cursor` is the last id done.
    snapshot_start: Mapped[int | None] = mapped_column(BigInteger)
    snapshot_cursor: Mapped[int | None] = mapped_column(BigInteger)
    snapshot_target: Mapped[int | None] = mapped_column(BigInteger)
    snapshot_completed_at: Mapped[datetime | None]
    # Progressive enqueue: recipients with an id up to `enqueue_cursor` were handed to the
    # queue; `batch_count` batches were published, the last at `last_enqueued_at`.
    enqueue_cursor: Mapped[int] = counter(big=True)
    # No recipient at or below this id is still in flight: the in-flight count scans the
    # index from here, never over the (dead) entries of everything already sent.
    enqueue_floor: Mapped[int] = counter(big=True)
    batch_count: Mapped[int] = counter()
    last_enqueued_at: Mapped[datetime | None]

    recipient_count: Mapped[int] = counter(big=True)
    sent_count: Mapped[int] = counter(big=True)
    skipped_count: Mapped[int] = counter(big=True)
    failed_count: Mapped[int] = counter(big=True)
    delivered_count: Mapped[int] = counter(big=True)
    open_count: Mapped[int] = counter(big=True)
    unique_open_count: Mapped[int] = counter(big=True)
    # Recipients with at least one open that no privacy proxy or scanner made
    # (`datamailer_core.campaigns.opens`); `unique_open_count` counts every opener.
    unique_human_open_count: Mapped[int] = counter(big=True)
    click_count: Mapped[int] = counter(big=True)
    unique_click_count: Mapped[int] = counter(big=True)
    unsubscribe_count: Mapped[int] = counter(big=True)
    bounce_count: Mapped[int] = counter(big=True)
    complaint_count: Mapped[int] = counter(big=True)


class CampaignRecipient(EagerDefaults, LeaseMixin, TimestampMixin, Base):
    """`contact_id` is SET NULL on erasure (the row is anonymized, not deleted), so the
    unique `(campaign_id, contact_id)` only binds live contacts. Token columns hold hex
    hashes of the tokens in the message, never the tokens."""

    __tablename__ = "campaign_recipients"
    __table_args__ = (
        one_of("status", RECIPIENT_STATUSES),
        UniqueConstraint("campaign_id", "contact_id"),
        # Also orders by id within a status: keyset paging and the enqueue feed.
        Index(None, "campaign_id", "status", "id"),
        # The sweeper's look for leases left behind by dead workers.
        Index(
            "ix_campaign_recipients_sending_lease",
            "lease_expires_at",
            postgresql_where=text("status = 'sending'"),
        ),
        Index(None, "contact_id"),
        Index(None, "ses_message_id"),
    )

    id: Mapped[int] = bigint_pk()
    campaign_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("campaigns.id", ondelete="CASCADE"))
    contact_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("contacts.id", ondelete="SET NULL"))
    email: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    # One of SKIP_REASONS, `campaign_cancelled`, or for `failed` rows a failure reason
    # such as `send_outcome_unknown`.
    skip_reason: Mapped[str | None] = mapped_column(Text)
    tracking_token_hash: Mapped[str | None] = mapped_column(Text, unique=True)
    unsubscribe_token_hash: Mapped[str | None] = mapped_column(Text, unique=True)
    ses_message_id: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    first_opened_at: Mapped[datetime | None]
    # The first open not made by a privacy proxy, scanner or prefetch.
    first_human_opened_at: Mapped[datetime | None]
    first_clicked_at: Mapped[datetime | None]
    bounced_at: Mapped[datetime | None]
    complained_at: Mapped[datetime | None]
    unsubscribed_at: Mapped[datetime | None]
    open_count: Mapped[int] = counter()
    click_count: Mapped[int] = counter()
    last_error: Mapped[str | None] = mapped_column(Text)
