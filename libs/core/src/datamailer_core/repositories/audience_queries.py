"""Audience state reads: a contact as one client sees it, listings, exports, history.
Contacts are per organization (see `models.contacts`), so nothing read here can carry
another organization's values or ids.

A client sees a contact only through its own subscription rows: the audience-level row
is shared by the organization's clients, so it never makes a contact visible."""

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, delete, exists, func, literal, select, text, update
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.errors import ValidationFailed
from datamailer_core.models import (
    CampaignRecipient,
    CategoryPreference,
    Contact,
    ContactTag,
    EmailEvent,
    Subscription,
    Suppression,
    Tag,
    TransactionalMessage,
)
from datamailer_core.repositories.contacts import address_hash


@dataclass
class ContactView:
    contact: Contact
    client_sub: Subscription | None
    audience_sub: Subscription | None
    tags: list[str]


# Identity columns are bigint: a larger id from a client is invalid input, not a DB error.
MAX_ID = 2**63 - 1
HISTORY_KINDS = ("campaign_recipient", "event", "transactional_message")


def encode_cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, default=str).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed("invalid cursor", fields={"cursor": "invalid"}) from None
    if not isinstance(values, list) or len(values) != arity:
        raise ValidationFailed("invalid cursor", fields={"cursor": "invalid"})
    return values


def cursor_id(value: Any) -> int:
    """An id taken from a decoded cursor, checked like any other client input."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise ValidationFailed("invalid cursor", fields={"cursor": "invalid"})
    return value


def _history_after(cursor: str | None) -> tuple[datetime | None, str | None, int | None]:
    if not cursor:
        return None, None, None
    at, kind, last_id = decode_cursor(cursor, 3)
    try:
        after_at = datetime.fromisoformat(at)
        valid = after_at.tzinfo is not None and kind in HISTORY_KINDS
        after_at = after_at.astimezone(UTC)  # OverflowError outside the database's range
    except (TypeError, ValueError, OverflowError):
        valid = False
    if not valid:
        raise ValidationFailed("invalid cursor", fields={"cursor": "invalid"})
    return after_at, kind, cursor_id(last_id)


def _client_sub(audience_id: int, client_id: int) -> Any:
    return and_(
        Subscription.contact_id == Contact.id,
        Subscription.audience_id == audience_id,
        Subscription.client_id == client_id,
    )


async def view_contact(
    session: AsyncSession,
    *,
    audience_id: int,
    client_id: int,
    contact_id: int | None = None,
    email: str | None = None,
) -> ContactView | None:
    """The contact as this client sees it in this audience, or None when it has no
    subscription there."""
    stmt = select(Contact, Subscription).join(Subscription, _client_sub(audience_id, client_id))
    stmt = (
        stmt.where(Contact.id == contact_id)
        if contact_id is not None
        else stmt.where(Contact.normalized_email == email)
    )
    # populate_existing: the engine writes with plain SQL, so objects already in the
    # session would otherwise show the state from before the write.
    row = (await session.execute(stmt.execution_options(populate_existing=True))).one_or_none()
    if row is None:
        return None
    contact, client_sub = row
    audience_sub = await session.scalar(
        select(Subscription)
        .where(
            Subscription.contact_id == contact.id,
            Subscription.audience_id == audience_id,
            Subscription.client_id.is_(None),
        )
        .execution_options(populate_existing=True)
    )
    return ContactView(
        contact, client_sub, audience_sub, await contact_tags(session, contact.id, audience_id)
    )


async def client_can_see(session: AsyncSession, contact_id: int, client_id: int) -> bool:
    return bool(
        await session.scalar(
            select(exists().where(Subscription.contact_id == contact_id, Subscription.client_id == client_id))
        )
    )


async def contact_tags(session: AsyncSession, contact_id: int, audience_id: int) -> list[str]:
    rows = await session.scalars(
        select(Tag.slug)
        .join(ContactTag, ContactTag.tag_id == Tag.id)
        .where(ContactTag.contact_id == contact_id, Tag.audience_id == audience_id)
        .order_by(Tag.slug)
    )
    return list(rows)


async def replace_tags(session: AsyncSession, contact_id: int, audience_id: int, slugs: list[str]) -> None:
    await session.execute(
        delete(ContactTag).where(
            ContactTag.contact_id == contact_id,
            ContactTag.tag_id.in_(
                select(Tag.id).where(Tag.audience_id == audience_id, Tag.slug.not_in(slugs))
            ),
        )
    )
    if slugs:
        await add_tags(session, contact_id, audience_id, slugs)


async def add_tags(session: AsyncSession, contact_id: int, audience_id: int, slugs: list[str]) -> None:
    await session.execute(
        text(
            "INSERT INTO tags (audience_id, slug, name) "
            "SELECT CAST(:audience_id AS bigint), s, s FROM unnest(CAST(:slugs AS text[])) s "
            "ON CONFLICT (audience_id, slug) DO NOTHING"
        ),
        {"audience_id": audience_id, "slugs": slugs},
    )
    await session.execute(
        text(
            "INSERT INTO contact_tags (contact_id, tag_id) SELECT CAST(:contact_id AS bigint), id FROM tags "
            "WHERE audience_id = :audience_id AND slug = ANY(CAST(:slugs AS text[])) "
            "ON CONFLICT (contact_id, tag_id) DO NOTHING"
        ),
        {"contact_id": contact_id, "audience_id": audience_id, "slugs": slugs},
    )


async def remove_tag(session: AsyncSession, contact_id: int, audience_id: int, slug: str) -> None:
    await session.execute(
        delete(ContactTag).where(
            ContactTag.contact_id == contact_id,
            ContactTag.tag_id.in_(select(Tag.id).where(Tag.audience_id == audience_id, Tag.slug == slug)),
        )
    )


async def category_preferences(
    session: AsyncSession, contact_id: int, audience_id: int, client_id: int
) -> dict[str, CategoryPreference]:
    rows = await session.scalars(
        select(CategoryPreference)
        .where(
            CategoryPreference.contact_id == contact_id,
            CategoryPreference.audience_id == audience_id,
            CategoryPreference.client_id == client_id,
        )
        .execution_options(populate_existing=True)
    )
    return {row.tag: row for row in rows}


async def set_category_preferences(
    session: AsyncSession,
    *,
    contact_id: int,
    audience_id: int,
    client_id: int,
    categories: list[tuple[str, bool, str | None]],
    reason: str | None,
) -> None:
    await session.execute(
        text(
            """
            INSERT INTO category_preferences (contact_id, audience_id, client_id, tag, enabled, label, reason)
            SELECT CAST(:contact_id AS bigint), CAST(:audience_id AS bigint), CAST(:client_id AS bigint), t, e, l,
                   CAST(:reason AS text)
            FROM unnest(CAST(:tags AS text[]), CAST(:enabled AS boolean[]), CAST(:labels AS text[])) AS v(t, e, l)
            ON CONFLICT (contact_id, audience_id, client_id, tag) WHERE client_id IS NOT NULL
            DO UPDATE SET enabled = excluded.enabled, label = COALESCE(excluded.label, category_preferences.label),
                reason = excluded.reason, updated_at = now()
            WHERE category_preferences.enabled IS DISTINCT FROM excluded.enabled
               OR excluded.label IS DISTINCT FROM category_preferences.label
            """
        ),
        {
            "contact_id": contact_id,
            "audience_id": audience_id,
            "client_id": client_id,
            "tags": [c[0] for c in categories],
            "enabled": [c[1] for c in categories],
            "labels": [c[2] for c in categories],
            "reason": reason,
        },
    )


async def erase_contact(session: AsyncSession, contact: Contact) -> None:
    """Delete the organization's live state for the address, anonymize its history, and
    keep its suppression as an address hash. Other organizations' contacts for the same
    address are separate rows and stay untouched."""
    reasons = [
        reason
        for reason, at in (
            ("hard_bounce", contact.hard_bounced_at),
            ("complaint", contact.complained_at),
            ("global_unsubscribe", contact.global_unsubscribed_at),
        )
        if at is not None
    ]
    if reasons:
        hashed = address_hash(contact.normalized_email)
        await session.execute(
            pg_insert(Suppression)
            .values(
                [
                    {"organization_id": contact.organization_id, "address_hash": hashed, "reason": r}
                    for r in reasons
                ]
            )
            .on_conflict_do_nothing(
                index_elements=["organization_id", "address_hash", "reason"],
                index_where=Suppression.organization_id.is_not(None),
            )
        )
    erased = f"erased-{contact.id}@invalid"
    await session.execute(
        update(EmailEvent).where(EmailEvent.contact_id == contact.id).values(metadata_={}, url=None)
    )
    await session.execute(
        update(CampaignRecipient).where(CampaignRecipient.contact_id == contact.id).values(email=erased)
    )
    await session.execute(
        update(TransactionalMessage)
        .where(TransactionalMessage.contact_id == contact.id)
        .values(
            email=erased,
            subject="[erased]",
            html_body=None,
            text_body=None,
            reply_to=None,
            cc=[],
            bcc=[],
            headers={},
            metadata_={},
        )
    )
    await session.execute(delete(Contact).where(Contact.id == contact.id))


@dataclass(frozen=True)
class ContactFilters:
    audience_id: int
    client_id: int
    tags: tuple[str, ...] = ()
    subscription_status: str | None = None
    verified: bool | None = None
    suppression: str | None = None
    updated_since: datetime | None = None


SUPPRESSION_FILTERS = ("none", "any", "global_unsubscribed", "hard_bounced", "complained")


def contacts_query(f: ContactFilters) -> Select[Any]:
    """Contacts of one client in one audience with their subscription rows, by id."""
    aud = Subscription.__table__.alias("aud")
    tag_list = (
        select(func.coalesce(func.string_agg(Tag.slug, aggregate_order_by(literal(","), Tag.slug)), ""))
        .join(ContactTag, ContactTag.tag_id == Tag.id)
        .where(ContactTag.contact_id == Contact.id, Tag.audience_id == f.audience_id)
        .scalar_subquery()
    )
    stmt = (
        select(
            Contact,
            Subscription,
            aud.c.status.label("audience_status"),
            aud.c.verified_at.label("audience_verified_at"),
            tag_list.label("tags"),
        )
        .join(Subscription, _client_sub(f.audience_id, f.client_id))
        .outerjoin(
            aud,
            and_(
                aud.c.contact_id == Contact.id, aud.c.audience_id == f.audience_id, aud.c.client_id.is_(None)
            ),
        )
        .order_by(Contact.id)
    )
    for slug in f.tags:
        stmt = stmt.where(
            exists().where(
                ContactTag.contact_id == Contact.id,
                ContactTag.tag_id == Tag.id,
                Tag.audience_id == f.audience_id,
                Tag.slug == slug,
            )
        )
    if f.subscription_status:
        stmt = stmt.where(Subscription.status == f.subscription_status)
    if f.verified is not None:
        verified = (
            (Contact.verified_at.is_not(None))
            | (Subscription.verified_at.is_not(None))
            | (aud.c.verified_at.is_not(None))
        )
        stmt = stmt.where(verified if f.verified else ~verified)
    columns = {
        "global_unsubscribed": Contact.global_unsubscribed_at,
        "hard_bounced": Contact.hard_bounced_at,
        "complained": Contact.complained_at,
    }
    any_suppression = (
        columns["global_unsubscribed"].is_not(None)
        | columns["hard_bounced"].is_not(None)
        | (columns["complained"].is_not(None))
    )
    if f.suppression == "none":
        stmt = stmt.where(~any_suppression)
    elif f.suppression == "any":
        stmt = stmt.where(any_suppression)
    elif f.suppression in columns:
        stmt = stmt.where(columns[f.suppression].is_not(None))
    if f.updated_since is not None:
        stmt = stmt.where(func.greatest(Contact.updated_at, Subscription.updated_at) >= f.updated_since)
    return stmt


async def stream_contacts(session: AsyncSession, f: ContactFilters) -> AsyncIterator[Any]:
    """Every matching row, streamed from a server-side cursor."""
    result = await session.stream(contacts_query(f).execution_options(yield_per=2000))
    async for row in result:
        yield row


HISTORY_SQL = text(
    """
    SELECT * FROM (
        SELECT 'event' AS kind, e.id, e.created_at, e.event_type AS type, e.campaign_id,
               e.transactional_message_id, e.url, e.metadata::text AS metadata, NULL AS status, NULL AS subject
        FROM email_events e
        WHERE e.contact_id = :contact_id AND (e.client_id = :client_id OR e.client_id IS NULL)
        UNION ALL
        SELECT 'campaign_recipient', r.id, r.created_at, 'campaign', r.campaign_id, NULL, NULL, NULL,
               r.status, c.subject
        FROM campaign_recipients r JOIN campaigns c ON c.id = r.campaign_id
        WHERE r.contact_id = :contact_id AND c.client_id = :client_id
        UNION ALL
        SELECT 'transactional_message', m.id, m.created_at, 'transactional', NULL, m.id, NULL, NULL,
               m.status, m.subject
        FROM transactional_messages m
        WHERE m.contact_id = :contact_id AND m.client_id = :client_id
    ) h
    WHERE (CAST(:after_at AS timestamptz) IS NULL
           OR (h.created_at, h.kind, h.id) < (CAST(:after_at AS timestamptz), CAST(:after_kind AS text), :after_id))
    ORDER BY h.created_at DESC, h.kind DESC, h.id DESC
    LIMIT :limit
    """
)


async def contact_history(
    session: AsyncSession, *, contact_id: int, client_id: int, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    after_at, after_kind, after_id = _history_after(cursor)
    rows = (
        (
            await session.execute(
                HISTORY_SQL,
                {
                    "contact_id": contact_id,
                    "client_id": client_id,
                    "after_at": after_at,
                    "after_kind": after_kind,
                    "after_id": after_id,
                    "limit": limit + 1,
                },
            )
        )
        .mappings()
        .all()
    )
    items = [dict(r) for r in rows[:limit]]
    for item in items:
        item["metadata"] = json.loads(item["metadata"]) if item["metadata"] else None
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor(last["created_at"].isoformat(), last["kind"], last["id"])
    return items, next_cursor
