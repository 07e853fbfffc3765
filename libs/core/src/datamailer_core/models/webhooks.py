"""Outbound webhooks to client applications: endpoints and an outbox of deliveries,
written in the same transaction as the change they report."""

import uuid
from datetime import datetime
from typing import Any, Final

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, Text, UniqueConstraint, Uuid, func, text
from sqlalchemy.dialects.postgresql import ARRAY
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

ENDPOINT_STATUSES: Final = ("active", "disabled")
DELIVERY_STATUSES: Final = ("pending", "delivering", "delivered", "failed")


class WebhookEndpoint(EagerDefaults, TimestampMixin, Base):
    """`failure_count` counts consecutive failures; at the threshold the endpoint is
    `disabled` until an operator re-enables it."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (one_of("status", ENDPOINT_STATUSES), UniqueConstraint("client_id", "url"))

    id: Mapped[int] = bigint_pk()
    client_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("clients.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(Text)
    bearer_token: Mapped[str | None] = mapped_column(Text)
    # Event types delivered to this endpoint; NULL means all.
    event_types: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    status: Mapped[str] = mapped_column(Text, server_default=text("'active'"))
    failure_count: Mapped[int] = counter()
    last_error: Mapped[str | None] = mapped_column(Text)
    last_success_at: Mapped[datetime | None]
    last_failure_at: Mapped[datetime | None]
    disabled_at: Mapped[datetime | None]


class WebhookDelivery(EagerDefaults, LeaseMixin, TimestampMixin, Base):
    """One event for one endpoint. `attempts` records every try as
    `{"at", "status_code", "error", "duration_ms"}`; `attempt_count` (from LeaseMixin)
    drives the backoff."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        one_of("status", DELIVERY_STATUSES),
        Index(None, "status", "next_attempt_at"),
        Index(None, "endpoint_id", "created_at"),
        # A client's deliveries, newest first (the client API pages them by id).
        Index(None, "client_id", "id"),
    )

    id: Mapped[int] = bigint_pk()
    endpoint_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    client_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("clients.id", ondelete="CASCADE"))
    # Stable id sent to the receiver so it can deduplicate retries.
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True, server_default=func.gen_random_uuid())
    event_type: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = jsonb_object()
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[list[dict[str, Any]]] = jsonb_array()
    delivered_at: Mapped[datetime | None]
