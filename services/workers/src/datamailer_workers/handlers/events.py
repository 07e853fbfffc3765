"""The `email-events` handler: first-party opens and clicks from the tracking service.

The tracking service answers the pixel and the redirect without touching the database
and publishes the raw token; here it is hashed (only hashes are stored) and resolved to
its campaign recipient, and the event is applied once (`repositories.tracking`): the
event's `idempotency_key` is its deduplication key, so a redelivered message changes
nothing. An unknown token is acknowledged with no change. `unsubscribe` events are
applied synchronously by the tracking service's unsubscribe pages; here they are
acknowledged only.
"""

import logging
from typing import Any, Final, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.campaigns.opens import machine_reason
from datamailer_core.contracts import EmailEventV1
from datamailer_core.repositories import tracking, webhooks
from datamailer_core.security import hash_token
from datamailer_workers.deps import WorkerDeps
from datamailer_workers.handlers.shared import in_transaction

logger = logging.getLogger("datamailer.workers.events")

STREAM: Final = "email-events"
USER_AGENT_CHARS: Final = 512

Outcome = Literal["recorded", "duplicate", "unknown_token", "ignored"]


def _text(metadata: dict[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    return value if isinstance(value, str) else None


async def handle_email_event(msg: EmailEventV1, deps: WorkerDeps) -> None:
    outcome = await apply_email_event(msg, deps)
    if outcome != "recorded":
        deps.metrics.idempotency_skips.labels(STREAM).inc()
    logger.debug("email event", extra={"event_type": msg.event_type, "outcome": outcome})


async def apply_email_event(msg: EmailEventV1, deps: WorkerDeps) -> Outcome:
    if msg.event_type == "unsubscribe" or msg.tracking_token is None:
        return "ignored"
    if msg.event_type == "click" and msg.url is None:
        return "ignored"
    token_hash = hash_token(deps.settings.security.secret_key.get_secret_value(), msg.tracking_token)
    user_agent = _text(msg.metadata, "user_agent")
    # The client IP decides whether an open was a proxy's; it is not kept on the event.
    kept: dict[str, Any] = {"user_agent": user_agent[:USER_AGENT_CHARS]} if user_agent else {}

    async def work(session: AsyncSession) -> Outcome:
        recipient = await tracking.lock_recipient(session, token_hash)
        if recipient is None:
            return "unknown_token"
        if msg.event_type == "open":
            reason = machine_reason(user_agent, _text(msg.metadata, "ip"), msg.occurred_at, recipient.sent_at)
            recorded = await tracking.record_open(
                session,
                recipient,
                dedupe_key=msg.idempotency_key,
                occurred_at=msg.occurred_at,
                machine=reason is not None,
                metadata={**kept, "machine_reason": reason} if reason else kept,
            )
        else:
            assert msg.url is not None
            recorded = await tracking.record_click(
                session,
                recipient,
                dedupe_key=msg.idempotency_key,
                occurred_at=msg.occurred_at,
                url=msg.url,
                metadata=kept,
            )
        if recorded:
            data: dict[str, Any] = {
                "campaign_id": recipient.campaign_id,
                "contact_id": recipient.contact_id,
                "occurred_at": msg.occurred_at,
            }
            if msg.event_type == "open":
                kind, data["machine"] = "message.opened", reason is not None
            else:
                kind, data["url"] = "message.clicked", msg.url
            await webhooks.record_event(session, client_id=recipient.client_id, event_type=kind, data=data)
        return "recorded" if recorded else "duplicate"

    return await in_transaction(deps, work)
