"""A transactional send to a recipient list, set-based: the subtree's members with their
suppression read in one statement, every member's message inserted in one statement
(idempotent per member key), their events in one more, the outcome read back in one."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.repositories import webhooks
from datamailer_core.repositories.recipient_lists import SUBTREE_CONTACTS, ListScope, subtree_params

# The subtree's active members (SUBTREE_CONTACTS) with what a single send reads of each
# contact: its suppression columns and, with a category, a stored opt-out of it.
_TARGETS = text(
    f"""
    WITH members AS ({SUBTREE_CONTACTS.text})
    SELECT c.id, c.email, c.hard_bounced_at IS NOT NULL, c.complained_at IS NOT NULL,
           c.global_unsubscribed_at IS NOT NULL,
           CAST(:tag AS text) IS NOT NULL AND EXISTS (
               SELECT 1 FROM category_preferences p
               WHERE p.contact_id = c.id AND p.audience_id = :audience_id AND p.tag = :tag
                 AND p.enabled IS false AND (p.client_id = :client_id OR p.client_id IS NULL)
           ) AS category_off
    FROM members JOIN contacts c ON c.id = members.contact_id
    ORDER BY c.id
    LIMIT :limit
    """
)

_INSERT = text(
    """
    INSERT INTO transactional_messages (client_id, contact_id, audience_id, template_id, template_key, email,
        sender_id, from_address, category_tag, subject, html_body, text_body, status, status_reason,
        idempotency_key, metadata)
    SELECT :client_id, v.contact_id, :audience_id, :template_id, :template_key, v.email, :sender_id,
           :from_address, :category_tag, :subject, :html_body, :text_body, v.status, v.reason, v.key,
           CAST(:metadata AS jsonb)
    FROM unnest(CAST(:contact_ids AS bigint[]), CAST(:emails AS text[]), CAST(:statuses AS text[]),
                CAST(:reasons AS text[]), CAST(:keys AS text[])) AS v(contact_id, email, status, reason, key)
    ON CONFLICT (client_id, idempotency_key) DO NOTHING
    RETURNING id, contact_id, status, status_reason
    """
)

# The events a single send appends: `queued` with the template key, `skipped` with the reason.
_EVENTS = text(
    """
    INSERT INTO email_events (event_type, transactional_message_id, contact_id, client_id, audience_id, metadata)
    SELECT v.status, v.id, v.contact_id, :client_id, :audience_id,
           CASE WHEN v.status = 'skipped' THEN jsonb_build_object('reason', v.reason)
                ELSE jsonb_build_object('template_key', CAST(:template_key AS text)) END
    FROM unnest(CAST(:ids AS bigint[]), CAST(:contact_ids AS bigint[]), CAST(:statuses AS text[]),
                CAST(:reasons AS text[])) AS v(id, contact_id, status, reason)
    """
)

_OUTCOME = text(
    """
    SELECT id, contact_id, email, status, status_reason, idempotency_key, template_id, template_key
    FROM transactional_messages
    WHERE client_id = :client_id AND idempotency_key = ANY(CAST(:keys AS text[]))
    ORDER BY contact_id, id
    """
)

_MARK_ENQUEUED = text(
    """
    UPDATE transactional_messages SET enqueued_at = now()
    WHERE id = ANY(CAST(:ids AS bigint[])) AND enqueued_at IS NULL
    """
)


@dataclass(frozen=True)
class Target:
    contact_id: int
    email: str
    hard_bounced: bool
    complained: bool
    global_unsubscribed: bool
    category_off: bool


@dataclass(frozen=True)
class Planned:
    contact_id: int
    email: str
    idempotency_key: str
    reason: str | None


@dataclass(frozen=True)
class Outcome:
    """A member's message as stored (whichever request created it); Queueable."""

    id: int
    client_id: int
    contact_id: int | None
    email: str
    status: str
    status_reason: str | None
    idempotency_key: str
    template_id: int | None
    template_key: str


async def targets(
    session: AsyncSession, scope: ListScope, list_key: str, category_tag: str | None, limit: int
) -> list[Target]:
    rows = await session.execute(
        _TARGETS, {**subtree_params(scope, list_key), "tag": category_tag, "limit": limit}
    )
    return [Target(*row) for row in rows]


async def create_messages(
    session: AsyncSession, scope: ListScope, planned: Sequence[Planned], message: dict[str, Any]
) -> list[int]:
    """Insert every planned message not already there (one statement) and its event (one
    more, plus one webhook statement per skip reason); the ids created are returned."""
    if not planned:
        return []
    params = {"client_id": scope.client_id, "audience_id": scope.audience_id}
    rows = (
        await session.execute(
            _INSERT,
            {
                **params,
                **message,
                "metadata": json.dumps(message["metadata"]),
                "contact_ids": [p.contact_id for p in planned],
                "emails": [p.email for p in planned],
                "statuses": ["skipped" if p.reason else "queued" for p in planned],
                "reasons": [p.reason for p in planned],
                "keys": [p.idempotency_key for p in planned],
            },
        )
    ).all()
    if not rows:
        return []
    await session.execute(
        _EVENTS,
        {
            **params,
            "template_key": message["template_key"],
            "ids": [r[0] for r in rows],
            "contact_ids": [r[1] for r in rows],
            "statuses": [r[2] for r in rows],
            "reasons": [r[3] for r in rows],
        },
    )
    by_reason: dict[str, list[int]] = {}
    for row in rows:
        if row[2] == "skipped":
            by_reason.setdefault(row[3], []).append(row[0])
    for reason, ids in by_reason.items():
        await webhooks.record_transactional_events(session, ids, "skipped", {"reason": reason})
    return [r[0] for r in rows]


async def outcomes(session: AsyncSession, client_id: int, keys: Sequence[str]) -> list[Outcome]:
    rows = await session.execute(_OUTCOME, {"client_id": client_id, "keys": list(keys)})
    return [Outcome(r[0], client_id, *r[1:]) for r in rows]


async def mark_enqueued(session: AsyncSession, ids: Sequence[int]) -> None:
    """`updated_at` is left alone, as in a single send (the sweeper reads it)."""
    if ids:
        await session.execute(_MARK_ENQUEUED, {"ids": list(ids)})
