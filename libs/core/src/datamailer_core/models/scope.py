"""Organizations own audiences (who receives) and clients (who sends, with API keys)."""

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, String, Text, UniqueConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column

from datamailer_core.db.base import Base, TimestampMixin
from datamailer_core.models.columns import EagerDefaults, bigint_pk, jsonb_array


class Organization(EagerDefaults, TimestampMixin, Base):
    __tablename__ = "organizations"

    id: Mapped[int] = bigint_pk()
    slug: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str] = mapped_column(Text)


class Audience(EagerDefaults, TimestampMixin, Base):
    __tablename__ = "audiences"
    __table_args__ = (UniqueConstraint("organization_id", "slug"),)

    id: Mapped[int] = bigint_pk()
    organization_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    slug: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)


class Client(EagerDefaults, TimestampMixin, Base):
    __tablename__ = "clients"
    __table_args__ = (UniqueConstraint("organization_id", "slug"), Index(None, "slug"))

    id: Mapped[int] = bigint_pk()
    organization_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    slug: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    default_sender_id: Mapped[str | None] = mapped_column(Text)
    # [{"id": "support", "email": "Support <support@example.com>"}, ...]
    sender_emails: Mapped[list[dict[str, Any]]] = jsonb_array()
    # Outbound webhook settings, Datamailer-compatible (one URL per client).
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_secret: Mapped[str | None] = mapped_column(Text)
    webhook_bearer_token: Mapped[str | None] = mapped_column(Text)


class ClientApiKey(EagerDefaults, Base):
    """Only a keyed hash of the raw key is stored; lookup is by `public_id`."""

    __tablename__ = "client_api_keys"
    __table_args__ = (
        Index(None, "client_id"),
        Index(
            "uq_client_api_keys_client_id_name_active",
            "client_id",
            "name",
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[int] = bigint_pk()
    client_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("clients.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    public_id: Mapped[str] = mapped_column(String(12), unique=True)
    key_hash: Mapped[str] = mapped_column(Text)
    notes: Mapped[str | None] = mapped_column(Text)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
