"""Shared state of the account-wide SES send rate, one row per key (e.g. `ses`), so all
worker processes draw from one token bucket."""

from datetime import datetime

from sqlalchemy import Double, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from datamailer_core.db.base import Base


class SendRateState(Base):
    __tablename__ = "send_rate_state"
    __mapper_args__ = {"eager_defaults": True}

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    # Current (adaptive) messages per second and tokens left in the bucket.
    rate: Mapped[float] = mapped_column(Double)
    tokens: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
