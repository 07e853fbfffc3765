"""Outbound webhooks: the outbox write. An event for a client becomes one pending
delivery per active endpoint of that client that takes its type, in the caller's
transaction, so the event exists exactly when the change it reports was committed. The
dispatcher (scheduler) delivers the pending rows."""

import json
from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# The events of queues.md ("Outbound webhooks to client applications"), and beyond.
EVENT_TYPES: Final = (
    "contact.hard_bounced",
    "contact.complained",
    "subscription.unsubscribed",
    "subscription.resubscribed",
    "message.delivered",
    "message.opened",
    "message.clicked",
    "transactional.skipped",
    "transactional.failed",
    "campaign.paused",
)

_RECORD = text(
    """
    INSERT INTO webhook_deliveries (endpoint_id, client_id, event_type, payload)
    SELECT e.id, e.client_id, CAST(:event_type AS text), CAST(:payload AS jsonb)
    FROM webhook_endpoints e
    WHERE e.client_id = :client_id AND e.status = 'active'
      AND (e.event_types IS NULL OR CAST(:event_type AS text) = ANY(e.event_types))
    """
)


async def record_event(
    session: AsyncSession, *, client_id: int, event_type: str, data: Mapping[str, Any]
) -> None:
    """Queue `event_type` with `data` (JSON-serializable) for the client's endpoints."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    await session.execute(
        _RECORD,
        {"client_id": client_id, "event_type": event_type, "payload": json.dumps(dict(data), default=str)},
    )
