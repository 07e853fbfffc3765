"""Appending to the email event timeline (append-only)."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.models import EmailEvent

_EVENTS: Table = EmailEvent.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class NewEvent:
    event_type: str
    contact_id: int | None = None
    client_id: int | None = None
    audience_id: int | None = None
    campaign_id: int | None = None
    campaign_recipient_id: int | None = None
    transactional_message_id: int | None = None
    url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    provider_event_id: str | None = None


async def append_events(session: AsyncSession, events: Sequence[NewEvent]) -> None:
    """One INSERT for any number of events."""
    if not events:
        return
    rows = [
        {
            "event_type": e.event_type,
            "contact_id": e.contact_id,
            "client_id": e.client_id,
            "audience_id": e.audience_id,
            "campaign_id": e.campaign_id,
            "campaign_recipient_id": e.campaign_recipient_id,
            "transactional_message_id": e.transactional_message_id,
            "url": e.url,
            "metadata": e.metadata,
            "provider_event_id": e.provider_event_id,
        }
        for e in events
    ]
    # A multi-row VALUES on the table (not executemany, not the ORM's per-row bulk path):
    # one statement and one round trip.
    await session.execute(insert(_EVENTS).values(rows))


async def append_event(session: AsyncSession, event_type: str, **fields: Any) -> None:
    await append_events(session, [NewEvent(event_type, **fields)])
