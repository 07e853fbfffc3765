"""Double opt-in links: issue one for a (contact, audience, client) subscription and
confirm it once. A token carries 256 random bits (`security.new_token`); only its HMAC
is stored, with an expiry. Confirming goes through the audience engine, which moves the
subscription to `subscribed`, sets `verified_at` and records the `subscribe` event."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.models import Audience, Client, Contact, Subscription, SubscriptionVerification
from datamailer_core.repositories.audience import ContactInput, apply_contacts
from datamailer_core.security import hash_token, new_token

DEFAULT_TTL: Final = timedelta(days=3)
MAX_TOKEN_LENGTH: Final = 128

Outcome = Literal["confirmed", "already_confirmed", "expired", "used", "unsubscribed", "unknown"]


def verify_url(public_base_url: str, token: str) -> str:
    """The link a verification email carries (`{{ verify_url }}` in its template)."""
    return f"{public_base_url.rstrip('/')}/verify/{token}"


@dataclass(frozen=True)
class Issued:
    id: int
    token: str
    expires_at: datetime


@dataclass(frozen=True)
class Confirmation:
    outcome: Outcome
    client_name: str | None = None
    audience_name: str | None = None
    email: str | None = None


async def issue(
    session: AsyncSession,
    secret_key: str,
    *,
    contact_id: int,
    audience_id: int,
    client_id: int,
    ttl: timedelta = DEFAULT_TTL,
) -> Issued:
    token = new_token()
    row = SubscriptionVerification(
        contact_id=contact_id,
        audience_id=audience_id,
        client_id=client_id,
        token_hash=hash_token(secret_key, token),
        expires_at=datetime.now(UTC) + ttl,
    )
    session.add(row)
    await session.flush()
    return Issued(row.id, token, row.expires_at)


async def link_message(session: AsyncSession, verification_id: int, message_id: int) -> None:
    await session.execute(
        update(SubscriptionVerification)
        .where(SubscriptionVerification.id == verification_id)
        .values(transactional_message_id=message_id)
    )


async def confirm(session: AsyncSession, secret_key: str, token: str) -> Confirmation:
    """Confirm the subscription the token was issued for, once; the caller commits. An
    unknown, expired or used token, or a subscription unsubscribed since, changes nothing."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return Confirmation("unknown")
    v = SubscriptionVerification
    row = (
        await session.execute(
            select(v, Contact, Client.name, Audience.name)
            .join(Contact, Contact.id == v.contact_id)
            .join(Client, Client.id == v.client_id)
            .join(Audience, Audience.id == v.audience_id)
            .where(v.token_hash == hash_token(secret_key, token))
            .with_for_update(of=v)
        )
    ).one_or_none()
    if row is None:
        return Confirmation("unknown")
    verification, contact, client_name, audience_name = row
    found = Confirmation("unknown", client_name, audience_name, contact.email)
    if verification.used_at is not None:
        return Confirmation("used", *_names(found))
    if verification.expires_at <= datetime.now(UTC):
        return Confirmation("expired", *_names(found))
    subscription = await session.scalar(
        select(Subscription).where(
            Subscription.contact_id == contact.id,
            Subscription.audience_id == verification.audience_id,
            Subscription.client_id == verification.client_id,
        )
    )
    if subscription is not None and subscription.status == "unsubscribed":
        return Confirmation("unsubscribed", *_names(found))
    outcome: Outcome = "confirmed"
    if subscription is not None and subscription.status == "subscribed" and subscription.verified_at:
        outcome = "already_confirmed"
    else:
        item = ContactInput(
            email=contact.email,
            normalized=contact.normalized_email,
            status="subscribed",
            verified=True,
            source="verification",
        )
        await apply_contacts(
            session, audience_id=verification.audience_id, client_id=verification.client_id, items=[item]
        )
    verification.used_at = datetime.now(UTC)
    await session.flush()
    return Confirmation(outcome, *_names(found))


def _names(found: Confirmation) -> tuple[str | None, str | None, str | None]:
    return found.client_name, found.audience_name, found.email
