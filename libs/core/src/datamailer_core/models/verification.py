"""Double opt-in: one row per verification email. Only an HMAC of the token is kept
(`security.hash_token`); the token itself is in the email's link and nowhere else."""

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from datamailer_core.db.base import Base
from datamailer_core.models.columns import EagerDefaults, bigint_pk


class SubscriptionVerification(EagerDefaults, Base):
    """A link that confirms the (contact, audience, client) subscription once, before
    `expires_at`; `used_at` marks it spent."""

    __tablename__ = "subscription_verifications"
    __table_args__ = (Index(None, "contact_id"), Index(None, "client_id"))

    id: Mapped[int] = bigint_pk()
    contact_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("contacts.id", ondelete="CASCADE"))
    audience_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("audiences.id", ondelete="CASCADE"))
    client_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("clients.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(Text, unique=True)
    # The verification email that carried the link, when it was sent through the API.
    transactional_message_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("transactional_messages.id", ondelete="SET NULL")
    )
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
