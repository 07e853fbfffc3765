"""Contacts as a client sees them: scope resolution, the status payload, and the mapping
from API payloads to the audience engine's inputs."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_api.audience.schemas import (
    ContactOut,
    ContactStatus,
    ImportCounts,
    ImportError_,
    ImportItem,
    SubscriptionOut,
    ValidationOut,
)
from datamailer_api.deps import AuthContext
from datamailer_core import policy
from datamailer_core.errors import NotFound, ValidationFailed
from datamailer_core.models import Audience, Contact, Subscription
from datamailer_core.repositories import audience_queries as queries
from datamailer_core.repositories.audience import ContactInput, apply_contacts
from datamailer_core.repositories.contacts import clean_email, normalize_email
from datamailer_web.errors import validation_fields

MAX_REPORTED_ERRORS = 1000


@dataclass(frozen=True)
class ContactScope:
    audience: Audience
    client_id: int
    client_slug: str


async def resolve_scope(
    session: AsyncSession, auth: AuthContext, audience: str, client: str | None
) -> ContactScope:
    auth.require_client(client)
    found = await session.scalar(
        select(Audience).where(Audience.organization_id == auth.organization.id, Audience.slug == audience)
    )
    if found is None:
        raise ValidationFailed("unknown audience", fields={"audience": "not_found"})
    return ContactScope(found, auth.client.id, auth.client.slug)


async def scope_for_contact(
    session: AsyncSession, auth: AuthContext, contact_id: int, audience: str | None, client: str | None
) -> ContactScope:
    """The scope of an id route: the named audience, else the one where this client
    first subscribed the contact. A contact the client cannot see is 404."""
    auth.require_client(client)
    if audience is not None:
        scope = await resolve_scope(session, auth, audience, client)
        if await queries.view_contact(
            session, audience_id=scope.audience.id, client_id=auth.client.id, contact_id=contact_id
        ):
            return scope
        raise NotFound("contact not found", fields={"contact_id": "not_found"})
    found = await session.scalar(
        select(Audience)
        .join(Subscription, Subscription.audience_id == Audience.id)
        .where(Subscription.contact_id == contact_id, Subscription.client_id == auth.client.id)
        .order_by(Subscription.id)
        .limit(1)
    )
    if found is None:
        raise NotFound("contact not found", fields={"contact_id": "not_found"})
    return ContactScope(found, auth.client.id, auth.client.slug)


def require_email(raw: str, field_name: str = "email") -> str:
    email = clean_email(raw)
    if email is None:
        raise ValidationFailed("invalid email address", fields={field_name: "invalid"})
    return email


def _subscription(slug: str, sub: Any | None) -> SubscriptionOut:
    return SubscriptionOut(
        slug=slug,
        subscribed=sub is not None and sub.status == "subscribed",
        status=sub.status if sub is not None else None,
        verified=sub is not None and sub.verified_at is not None,
        verified_at=sub.verified_at if sub is not None else None,
        unsubscribed_at=sub.unsubscribed_at if sub is not None else None,
        unsubscribe_reason=sub.unsubscribe_reason if sub is not None else None,
    )


def status_payload(
    scope: ContactScope, email: str, contact: Contact | None, client_sub: Any | None, audience_sub: Any | None
) -> ContactStatus:
    """The documented status payload; a contact outside the caller's scope reads as
    `exists: false` with everything false."""
    if contact is None or client_sub is None:
        return ContactStatus(
            contact_id=None,
            email=email,
            exists=False,
            verified=False,
            verified_at=None,
            email_validation=ValidationOut(status="unknown", reason=None, validated_at=None),
            global_unsubscribed=False,
            hard_bounced=False,
            complained=False,
            audience=_subscription(scope.audience.slug, None),
            client=_subscription(scope.client_slug, None),
            can_send_marketing=False,
            can_send_transactional=False,
        )
    verified_at = (
        contact.verified_at or client_sub.verified_at or (audience_sub.verified_at if audience_sub else None)
    )
    return ContactStatus(
        contact_id=contact.id,
        email=contact.email,
        exists=True,
        verified=verified_at is not None,
        verified_at=verified_at,
        email_validation=ValidationOut(
            status=contact.validation_status,
            reason=contact.validation_reason,
            validated_at=contact.validated_at,
        ),
        global_unsubscribed=contact.global_unsubscribed_at is not None,
        hard_bounced=contact.hard_bounced_at is not None,
        complained=contact.complained_at is not None,
        audience=_subscription(scope.audience.slug, audience_sub),
        client=_subscription(scope.client_slug, client_sub),
        can_send_marketing=policy.can_send_marketing(
            verified=verified_at is not None,
            global_unsubscribed_at=contact.global_unsubscribed_at,
            hard_bounced_at=contact.hard_bounced_at,
            complained_at=contact.complained_at,
            validation_status=contact.validation_status,
            client_status=client_sub.status,
            audience_status=audience_sub.status if audience_sub is not None else None,
        ),
        can_send_transactional=policy.can_send_transactional(contact.hard_bounced_at, contact.complained_at),
    )


async def contact_out(
    session: AsyncSession, scope: ContactScope, *, email: str = "", contact_id: int | None = None
) -> ContactOut:
    view = await queries.view_contact(
        session,
        audience_id=scope.audience.id,
        client_id=scope.client_id,
        contact_id=contact_id,
        email=normalize_email(email) if contact_id is None else None,
    )
    if view is None:
        return ContactOut(**status_payload(scope, email, None, None, None).model_dump(), tags=[])
    payload = status_payload(scope, email, view.contact, view.client_sub, view.audience_sub)
    return ContactOut(**payload.model_dump(), tags=view.tags)


def to_input(email: str, item: ImportItem, source: str = "api") -> ContactInput:
    validation = item.email_validation
    suppression = item.suppression
    return ContactInput(
        email=email,
        normalized=normalize_email(email),
        status=item.status,
        verified=item.verified,
        validation_status=validation.status if validation else None,
        validation_reason=validation.reason if validation else None,
        validated_at=validation.validated_at if validation else None,
        global_unsubscribed=suppression.global_unsubscribed if suppression else None,
        hard_bounced=suppression.hard_bounced if suppression else None,
        complained=suppression.complained if suppression else None,
        tags=sorted(set(item.tags)),
        source=source,
    )


@dataclass
class ImportRun:
    """Counts and the first errors of an import, fed batch by batch."""

    scope: ContactScope
    dry_run: bool
    counts: ImportCounts = field(default_factory=ImportCounts)
    errors: list[ImportError_] = field(default_factory=list)
    errors_truncated: bool = False
    seen: set[str] = field(default_factory=set)

    def error(self, position: dict[str, int], code: str, email: str | None, fields: dict[str, str]) -> None:
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(ImportError_(**position, email=email, code=code, fields=fields))
        else:
            self.errors_truncated = True

    def accept(self, position: dict[str, int], raw: dict[str, Any], source: str) -> ContactInput | None:
        """Validate one item; invalid and duplicate ones are counted and reported."""
        self.counts.total += 1
        try:
            item = ImportItem.model_validate(raw)
        except ValidationError as exc:
            self.counts.invalid += 1
            email = raw.get("email") if isinstance(raw.get("email"), str) else None
            self.error(position, "invalid", email, validation_fields(exc.errors()))
            return None
        email = clean_email(item.email)
        if email is None:
            self.counts.invalid += 1
            self.error(position, "invalid", item.email, {"email": "invalid"})
            return None
        normalized = normalize_email(email)
        if normalized in self.seen:
            self.counts.skipped += 1
            self.error(position, "duplicate_input", email, {"email": "duplicate_input"})
            return None
        self.seen.add(normalized)
        return to_input(email, item, source)

    async def apply(self, session: AsyncSession, batch: Iterable[ContactInput]) -> None:
        items = list(batch)
        if not items:
            return
        async with session.begin_nested() as savepoint:
            result = await apply_contacts(
                session, audience_id=self.scope.audience.id, client_id=self.scope.client_id, items=items
            )
            if self.dry_run:
                await savepoint.rollback()
        for outcome in result.outcomes:
            setattr(self.counts, outcome, getattr(self.counts, outcome) + 1)
        if not self.dry_run:
            await session.commit()
