"""Transactional messages: creation (idempotent per `(client_id, idempotency_key)`), lookup
within a client, and the message's event timeline."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.models import (
    Audience,
    CategoryPreference,
    EmailEvent,
    TransactionalMessage,
)
from datamailer_core.repositories import webhooks
from datamailer_core.repositories.contacts import address_hash, applicable_suppressions, normalize_email


async def get_message(session: AsyncSession, client_id: int, message_id: int) -> TransactionalMessage | None:
    """The message, only when it belongs to the client (anything else reads as absent)."""
    return await session.scalar(
        select(TransactionalMessage).where(
            TransactionalMessage.id == message_id, TransactionalMessage.client_id == client_id
        )
    )


async def get_message_by_idempotency_key(
    session: AsyncSession, client_id: int, idempotency_key: str
) -> TransactionalMessage | None:
    return await session.scalar(
        select(TransactionalMessage)
        .where(
            TransactionalMessage.client_id == client_id,
            TransactionalMessage.idempotency_key == idempotency_key,
        )
        .execution_options(populate_existing=True)
    )


async def create_message(session: AsyncSession, **values: Any) -> TransactionalMessage | None:
    """Insert the message, or nothing when the client already has one with this
    idempotency key (returns None then). A concurrent insert of the same key waits for
    the first to commit and then finds the conflict, so one key makes one message."""
    message_id = await session.scalar(
        insert(TransactionalMessage)
        .values(**values)
        .on_conflict_do_nothing(
            index_elements=[TransactionalMessage.client_id, TransactionalMessage.idempotency_key]
        )
        .returning(TransactionalMessage.id)
    )
    if message_id is None:
        return None
    return await session.scalar(
        select(TransactionalMessage)
        .where(TransactionalMessage.id == message_id)
        .execution_options(populate_existing=True)
    )


async def mark_enqueued(session: AsyncSession, message_id: int) -> None:
    """Record that the queue accepted the message; `updated_at` is left alone, as it is
    what the sweeper and the worker's lease logic read."""
    await session.execute(
        update(TransactionalMessage)
        .where(TransactionalMessage.id == message_id, TransactionalMessage.enqueued_at.is_(None))
        .values(enqueued_at=func.now(), updated_at=TransactionalMessage.updated_at)
    )


async def message_events(session: AsyncSession, message_id: int) -> Sequence[EmailEvent]:
    """The message's events, oldest first."""
    return (
        await session.scalars(
            select(EmailEvent)
            .where(EmailEvent.transactional_message_id == message_id)
            .order_by(EmailEvent.created_at, EmailEvent.id)
        )
    ).all()


async def append_message_event(
    session: AsyncSession, message: TransactionalMessage, event_type: str, metadata: dict[str, Any]
) -> None:
    # Stand-in until repositories/events.py offers `append_event`.
    session.add(
        EmailEvent(
            event_type=event_type,
            transactional_message_id=message.id,
            contact_id=message.contact_id,
            client_id=message.client_id,
            audience_id=message.audience_id,
            metadata_=metadata,
        )
    )
    await session.flush()
    if event_type in ("skipped", "failed"):
        await webhooks.record_transactional_events(session, [message.id], event_type, metadata)


async def find_audience(session: AsyncSession, organization_id: int, slug: str) -> Audience | None:
    return await session.scalar(
        select(Audience).where(Audience.organization_id == organization_id, Audience.slug == slug)
    )


async def category_disabled(
    session: AsyncSession, contact_id: int, audience_id: int, client_id: int, tag: str
) -> bool:
    """A stored `enabled = false` for the tag, at client or audience level (no row: enabled)."""
    found = await session.scalar(
        select(CategoryPreference.id)
        .where(
            CategoryPreference.contact_id == contact_id,
            CategoryPreference.audience_id == audience_id,
            CategoryPreference.tag == tag,
            CategoryPreference.enabled.is_(False),
            or_(CategoryPreference.client_id == client_id, CategoryPreference.client_id.is_(None)),
        )
        .limit(1)
    )
    return found is not None


async def suppression_reasons(session: AsyncSession, organization_id: int, email: str) -> list[str]:
    """Reasons a new contact for the address would inherit in this organization."""
    hashed = address_hash(normalize_email(email))
    rows = await session.execute(applicable_suppressions(organization_id, [hashed]))
    return [reason for _, reason in rows]
