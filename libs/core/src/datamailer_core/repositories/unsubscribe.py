"""The recipient's side of unsubscribing: find what an unsubscribe token was sent with
(a campaign recipient row or a transactional message with a category), read the state
the page shows, and apply a choice through the audience engine (`audience.apply_contacts`,
which records the `unsubscribe` events) and `set_category_preferences`.

Every write is idempotent: choosing the same thing twice changes nothing, and a campaign
recipient counts in the campaign's `unsubscribe_count` once."""

import re
from dataclasses import dataclass
from typing import Final, Literal

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core import policy
from datamailer_core.models import Audience, CampaignRecipient, Client, Contact, TransactionalMessage
from datamailer_core.models import Campaign as CampaignModel
from datamailer_core.repositories import audience_queries
from datamailer_core.repositories.audience import ContactInput, apply_contacts
from datamailer_core.repositories.events import NewEvent, append_events
from datamailer_core.security import hash_token

Scope = Literal["client", "audience", "global"]
SCOPES: Final = ("client", "audience", "global")
# Tokens are `secrets.token_urlsafe(32)`; anything else is not worth a query.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


@dataclass(frozen=True)
class Target:
    """Who a token was sent to, from which client and audience, for what."""

    kind: Literal["campaign", "transactional"]
    row_id: int
    campaign_id: int | None
    contact_id: int
    email: str
    audience_id: int
    audience_name: str
    client_id: int
    client_name: str
    category_tag: str | None


@dataclass(frozen=True)
class Category:
    tag: str
    label: str
    enabled: bool


@dataclass(frozen=True)
class PageState:
    client_unsubscribed: bool
    audience_unsubscribed: bool
    global_unsubscribed: bool
    categories: list[Category]


def _hash(secret_key: str, token: str) -> str | None:
    return hash_token(secret_key, token) if _TOKEN_RE.match(token) else None


async def find_target(session: AsyncSession, secret_key: str, token: str) -> Target | None:
    """The recipient row or message the token was sent with; None for an unknown token
    or an erased contact (nothing left to change)."""
    hashed = _hash(secret_key, token)
    if hashed is None:
        return None
    r, c, m = CampaignRecipient, CampaignModel, TransactionalMessage
    contact_id: int | None
    audience_id: int | None
    found = (
        await session.execute(
            select(r.id, r.campaign_id, r.contact_id, c.audience_id, c.client_id, c.category_tag)
            .join(c, c.id == r.campaign_id)
            .where(r.unsubscribe_token_hash == hashed)
        )
    ).one_or_none()
    if found is not None:
        kind: Literal["campaign", "transactional"] = "campaign"
        row_id, campaign_id, contact_id, audience_id, client_id, category_tag = found
    else:
        message = (
            await session.execute(
                select(m.id, m.contact_id, m.audience_id, m.client_id, m.category_tag).where(
                    m.unsubscribe_token_hash == hashed
                )
            )
        ).one_or_none()
        if message is None:
            return None
        kind, campaign_id = "transactional", None
        row_id, contact_id, audience_id, client_id, category_tag = message
    if contact_id is None or audience_id is None:
        return None  # erased since, or a message without an audience: nothing to change
    names = (
        await session.execute(
            select(
                select(Contact.email).where(Contact.id == contact_id).scalar_subquery(),
                select(Audience.name).where(Audience.id == audience_id).scalar_subquery(),
                select(Client.name).where(Client.id == client_id).scalar_subquery(),
            )
        )
    ).one()
    return Target(
        kind=kind,
        row_id=row_id,
        campaign_id=campaign_id,
        contact_id=contact_id,
        email=names[0],
        audience_id=audience_id,
        audience_name=names[1],
        client_id=client_id,
        client_name=names[2],
        category_tag=category_tag,
    )


async def page_state(session: AsyncSession, target: Target) -> PageState:
    """What the page shows: the current subscription state and the categories (those the
    contact has a preference for in this audience and client, plus the message's own)."""
    contact = await session.get(Contact, target.contact_id, populate_existing=True)
    assert contact is not None
    view = await audience_queries.view_contact(
        session, audience_id=target.audience_id, client_id=target.client_id, contact_id=target.contact_id
    )
    stored = await audience_queries.category_preferences(
        session, target.contact_id, target.audience_id, target.client_id
    )
    tags = sorted(set(stored) | ({target.category_tag} if target.category_tag else set()))
    categories = [
        Category(
            tag=tag,
            label=(stored[tag].label if tag in stored else None) or tag,
            enabled=stored[tag].enabled if tag in stored else True,
        )
        for tag in tags
    ]
    client_sub = view.client_sub if view else None
    audience_sub = view.audience_sub if view else None
    return PageState(
        client_unsubscribed=client_sub is not None and client_sub.status == "unsubscribed",
        audience_unsubscribed=audience_sub is not None and audience_sub.status == "unsubscribed",
        global_unsubscribed=contact.global_unsubscribed_at is not None,
        categories=categories,
    )


async def apply_choice(
    session: AsyncSession,
    target: Target,
    *,
    scope: Scope | None,
    categories: dict[str, bool],
    source: str,
) -> None:
    """Unsubscribe at `scope` (through the audience engine) and set the categories; the
    caller commits. A suppressed contact cannot switch a category back on (as in the API),
    so enabling is ignored for one."""
    contact = await session.get(Contact, target.contact_id, populate_existing=True)
    assert contact is not None
    reason = f"{source}_unsubscribe"
    if scope is not None:
        item = ContactInput(
            email=contact.email, normalized=contact.normalized_email, reason=reason, source=source
        )
        if scope == "client":
            item.status = "unsubscribed"
        elif scope == "audience":
            item.audience_status = "unsubscribed"
        else:
            item.global_unsubscribed = True
        await apply_contacts(
            session, audience_id=target.audience_id, client_id=target.client_id, items=[item]
        )
    suppressed = scope == "global" or policy.marketing_suppressed(
        contact.global_unsubscribed_at, contact.hard_bounced_at, contact.complained_at
    )
    wanted = {tag: on for tag, on in categories.items() if not (on and suppressed)}
    turned_off = await _set_categories(session, target, wanted, reason)
    if turned_off:
        await append_events(
            session,
            [
                NewEvent(
                    "unsubscribe",
                    contact_id=target.contact_id,
                    client_id=target.client_id,
                    audience_id=target.audience_id,
                    campaign_id=target.campaign_id,
                    campaign_recipient_id=target.row_id if target.kind == "campaign" else None,
                    transactional_message_id=target.row_id if target.kind == "transactional" else None,
                    metadata={"source": source, "scope": "category", "tag": tag, "reason": reason},
                )
                for tag in turned_off
            ],
        )
    left_campaign = scope is not None or (
        target.category_tag is not None and target.category_tag in turned_off
    )
    if target.kind == "campaign" and left_campaign:
        await _record_recipient_unsubscribe(session, target.row_id)


async def _set_categories(
    session: AsyncSession, target: Target, wanted: dict[str, bool], reason: str
) -> list[str]:
    """Store the changed categories; returns the tags that were switched off now."""
    if not wanted:
        return []
    stored = await audience_queries.category_preferences(
        session, target.contact_id, target.audience_id, target.client_id
    )
    changed = {
        tag: on for tag, on in wanted.items() if (stored[tag].enabled if tag in stored else True) != on
    }
    if not changed:
        return []
    await audience_queries.set_category_preferences(
        session,
        contact_id=target.contact_id,
        audience_id=target.audience_id,
        client_id=target.client_id,
        categories=[(tag, on, None) for tag, on in sorted(changed.items())],
        reason=reason,
    )
    return sorted(tag for tag, on in changed.items() if not on)


_RECIPIENT_UNSUBSCRIBED = text(
    """
    WITH r AS (
        UPDATE campaign_recipients
        SET status = CASE WHEN status = 'sent' THEN 'unsubscribed' ELSE status END,
            unsubscribed_at = now(), updated_at = now()
        WHERE id = :id AND unsubscribed_at IS NULL AND status <> 'unsubscribed'
        RETURNING campaign_id
    )
    UPDATE campaigns SET unsubscribe_count = unsubscribe_count + 1, updated_at = now()
    FROM r WHERE campaigns.id = r.campaign_id
    """
)


async def _record_recipient_unsubscribe(session: AsyncSession, recipient_id: int) -> None:
    """The recipient row becomes `unsubscribed` (a delivered row keeps its bounce or
    complaint status) and counts once on its campaign."""
    await session.execute(_RECIPIENT_UNSUBSCRIBED, {"id": recipient_id})


async def one_click(session: AsyncSession, target: Target) -> None:
    """RFC 8058: a campaign leaves the sender (the client); a transactional message turns
    its category off for that client."""
    if target.kind == "campaign":
        await apply_choice(session, target, scope="client", categories={}, source="one_click")
    elif target.category_tag is not None:
        await apply_choice(
            session, target, scope=None, categories={target.category_tag: False}, source="one_click"
        )


async def set_message_token(session: AsyncSession, message_id: int, owner: str, token_hash: str) -> bool:
    """Give a claimed transactional message with a category (and so an audience) its
    unsubscribe token hash; False for a message without one (it gets no link). A resend
    replaces the hash: only the message actually sent last carries a live link."""
    m = TransactionalMessage
    found = await session.scalar(
        update(m)
        .where(
            m.id == message_id,
            m.lease_owner == owner,
            m.category_tag.is_not(None),
            m.audience_id.is_not(None),
        )
        .values(unsubscribe_token_hash=token_hash)
        .returning(m.id)
    )
    return found is not None
