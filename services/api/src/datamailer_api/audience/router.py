"""Contacts, subscriptions, tags, category preferences, erase and history."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from datamailer_api.audience import service
from datamailer_api.audience.schemas import (
    NO_CONTROL,
    CategoryOut,
    ContactId,
    ContactOut,
    ContactStatus,
    ContactUpsertIn,
    CursorQuery,
    EmailQuery,
    EraseIn,
    EraseOut,
    HistoryItem,
    HistoryOut,
    ImportItem,
    OptionalScopeQuery,
    PreferencesIn,
    PreferencesOut,
    ScopeQuery,
    Slug,
    SubscribeIn,
    SuppressionPatchIn,
    TagsIn,
    UnsubscribeIn,
    ValidationPatchIn,
    VerificationIn,
    slug_list,
)
from datamailer_api.deps import CurrentClient
from datamailer_core import policy
from datamailer_core.errors import Conflict, NotFound
from datamailer_core.models import Contact
from datamailer_core.repositories import audience_queries as queries
from datamailer_core.repositories import mailchimp
from datamailer_core.repositories.audience import ContactInput, apply_contacts
from datamailer_core.repositories.contacts import normalize_email
from datamailer_web.app import SessionDep
from datamailer_web.errors import error_responses

router = APIRouter(prefix="/api", tags=["contacts"], responses=error_responses(400, 401, 403, 413, 415))
NOT_FOUND = error_responses(404)


async def _apply_one(session: SessionDep, scope: service.ContactScope, item: ContactInput) -> None:
    await apply_contacts(session, audience_id=scope.audience.id, client_id=scope.client_id, items=[item])
    await session.commit()


@router.post("/contacts", response_model=ContactOut)
async def upsert_contact(body: ContactUpsertIn, auth: CurrentClient, session: SessionDep) -> ContactOut:
    """Create or update a contact and its subscription to this client; tags are additive."""
    scope = await service.resolve_scope(session, auth, body.audience, body.client)
    email = service.require_email(body.email)
    await _apply_one(
        session, scope, service.to_input(email, ImportItem(**body.model_dump(exclude={"audience", "client"})))
    )
    return await service.contact_out(session, scope, email=email)


@router.get("/contacts/status", response_model=ContactStatus)
async def contact_status(
    email: EmailQuery,
    audience: ScopeQuery,
    auth: CurrentClient,
    session: SessionDep,
    client: OptionalScopeQuery = None,
) -> ContactStatus:
    """What this client may send to an address; `exists: false` outside its scope."""
    scope = await service.resolve_scope(session, auth, audience, client)
    out = await service.contact_out(session, scope, email=service.require_email(email))
    return ContactStatus(**out.model_dump(exclude={"tags"}))


async def _patch(
    session: SessionDep,
    auth: CurrentClient,
    contact_id: ContactId,
    audience: str | None,
    client: str | None,
    **changes: object,
) -> ContactOut:
    scope = await service.scope_for_contact(session, auth, contact_id, audience, client)
    contact = await session.get(Contact, contact_id)
    assert contact is not None
    await _apply_one(
        session,
        scope,
        ContactInput(email=contact.email, normalized=contact.normalized_email, **changes),  # type: ignore[arg-type]
    )
    return await service.contact_out(session, scope, contact_id=contact_id)


@router.patch("/contacts/{contact_id}/verification", response_model=ContactOut, responses=NOT_FOUND)
async def patch_verification(
    contact_id: ContactId, body: VerificationIn, auth: CurrentClient, session: SessionDep
) -> ContactOut:
    """Mark the address verified (or not) for every client."""
    return await _patch(
        session,
        auth,
        contact_id,
        body.audience,
        body.client,
        contact_verified=body.verified,
        verified_at=body.verified_at,
    )


@router.patch("/contacts/{contact_id}/validation", response_model=ContactOut, responses=NOT_FOUND)
async def patch_validation(
    contact_id: ContactId, body: ValidationPatchIn, auth: CurrentClient, session: SessionDep
) -> ContactOut:
    """Record the result of an email validation."""
    return await _patch(
        session,
        auth,
        contact_id,
        body.audience,
        body.client,
        validation_status=body.status,
        validation_reason=body.reason,
        validated_at=body.validated_at,
    )


@router.patch("/contacts/{contact_id}/suppression", response_model=ContactOut, responses=NOT_FOUND)
async def patch_suppression(
    contact_id: ContactId, body: SuppressionPatchIn, auth: CurrentClient, session: SessionDep
) -> ContactOut:
    """Set or clear suppression; setting appends its event once, repeating changes nothing."""
    return await _patch(
        session,
        auth,
        contact_id,
        body.audience,
        body.client,
        global_unsubscribed=body.global_unsubscribed,
        hard_bounced=body.hard_bounced,
        complained=body.complained,
        reason=body.reason,
        source="manual",
    )


async def _sync_tags(
    session: SessionDep, scope: service.ContactScope, contact_id: int, before: list[str]
) -> None:
    """Queue the Mailchimp tag operations of a tag change, in its transaction."""
    after = await queries.contact_tags(session, contact_id, scope.audience.id)
    added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    if added or removed:
        change = mailchimp.MemberChange(contact_id, added, removed, after)
        await mailchimp.record_changes(
            session,
            client_id=scope.client_id,
            audience_id=scope.audience.id,
            changes=[change],
            tags_only=True,
        )


@router.put("/contacts/{contact_id}/tags", response_model=ContactOut, responses=NOT_FOUND)
async def replace_tags(
    contact_id: ContactId, body: TagsIn, auth: CurrentClient, session: SessionDep
) -> ContactOut:
    """Replace the contact's tags in the audience."""
    scope = await service.scope_for_contact(session, auth, contact_id, body.audience, body.client)
    before = await queries.contact_tags(session, contact_id, scope.audience.id)
    await queries.replace_tags(session, contact_id, scope.audience.id, sorted(set(body.tags)))
    await _sync_tags(session, scope, contact_id, before)
    await session.commit()
    return await service.contact_out(session, scope, contact_id=contact_id)


async def query_scope(
    contact_id: ContactId,
    auth: CurrentClient,
    session: SessionDep,
    audience: OptionalScopeQuery = None,
    client: OptionalScopeQuery = None,
) -> service.ContactScope:
    """The scope of an id route whose audience and client come in the query string."""
    return await service.scope_for_contact(session, auth, contact_id, audience, client)


QueryScope = Annotated[service.ContactScope, Depends(query_scope)]


@router.post("/contacts/{contact_id}/tags/{slug}", response_model=ContactOut, responses=NOT_FOUND)
async def add_tag(contact_id: ContactId, slug: Slug, scope: QueryScope, session: SessionDep) -> ContactOut:
    """Add one tag (idempotent)."""
    before = await queries.contact_tags(session, contact_id, scope.audience.id)
    await queries.add_tags(session, contact_id, scope.audience.id, [slug])
    await _sync_tags(session, scope, contact_id, before)
    await session.commit()
    return await service.contact_out(session, scope, contact_id=contact_id)


@router.delete("/contacts/{contact_id}/tags/{slug}", response_model=ContactOut, responses=NOT_FOUND)
async def remove_tag(contact_id: ContactId, slug: Slug, scope: QueryScope, session: SessionDep) -> ContactOut:
    """Remove one tag (idempotent)."""
    before = await queries.contact_tags(session, contact_id, scope.audience.id)
    await queries.remove_tag(session, contact_id, scope.audience.id, slug)
    await _sync_tags(session, scope, contact_id, before)
    await session.commit()
    return await service.contact_out(session, scope, contact_id=contact_id)


@router.post("/subscriptions/subscribe", response_model=ContactOut, tags=["subscriptions"])
async def subscribe(body: SubscribeIn, auth: CurrentClient, session: SessionDep) -> ContactOut:
    """Create the contact if needed and mark this client's subscription subscribed and verified."""
    scope = await service.resolve_scope(session, auth, body.audience, body.client)
    email = service.require_email(body.email)
    item = ImportItem(**body.model_dump(exclude={"audience", "client", "status", "verified"}))
    item.status, item.verified = "subscribed", True
    await _apply_one(session, scope, service.to_input(email, item))
    return await service.contact_out(session, scope, email=email)


@router.post("/subscriptions/unsubscribe", response_model=ContactOut, tags=["subscriptions"])
async def unsubscribe(body: UnsubscribeIn, auth: CurrentClient, session: SessionDep) -> ContactOut:
    """Unsubscribe from this client, the whole audience, or everything (idempotent)."""
    scope = await service.resolve_scope(session, auth, body.audience, body.client)
    email = service.require_email(body.email)
    item = ContactInput(email=email, normalized=normalize_email(email), reason=body.reason)
    if body.scope == "client":
        item.status = "unsubscribed"
    elif body.scope == "audience":
        item.audience_status = "unsubscribed"
    else:
        item.global_unsubscribed = True
    await _apply_one(session, scope, item)
    return await service.contact_out(session, scope, email=email)


@router.get("/contacts/preferences", response_model=PreferencesOut, tags=["preferences"])
async def get_preferences(
    email: EmailQuery,
    audience: ScopeQuery,
    auth: CurrentClient,
    session: SessionDep,
    client: OptionalScopeQuery = None,
    category_tags: Annotated[str | None, Query(max_length=2000, pattern=NO_CONTROL)] = None,
) -> PreferencesOut:
    """Category preferences; a category with no stored choice reads enabled."""
    scope = await service.resolve_scope(session, auth, audience, client)
    email = service.require_email(email)
    view = await queries.view_contact(
        session, audience_id=scope.audience.id, client_id=scope.client_id, email=normalize_email(email)
    )
    stored = (
        await queries.category_preferences(session, view.contact.id, scope.audience.id, scope.client_id)
        if view
        else {}
    )
    tags = slug_list(category_tags, "category_tags") or sorted(stored)
    categories = [
        CategoryOut(
            tag=t,
            enabled=stored[t].enabled if t in stored else True,
            label=stored[t].label if t in stored else None,
        )
        for t in tags
    ]
    return PreferencesOut(email=email, exists=view is not None, categories=categories)


@router.put(
    "/contacts/preferences",
    response_model=PreferencesOut,
    tags=["preferences"],
    responses=error_responses(404, 409),
)
async def put_preferences(body: PreferencesIn, auth: CurrentClient, session: SessionDep) -> PreferencesOut:
    """Enable or disable categories; a suppressed contact cannot enable one (409)."""
    scope = await service.resolve_scope(session, auth, body.audience, body.client)
    email = service.require_email(body.email)
    view = await queries.view_contact(
        session, audience_id=scope.audience.id, client_id=scope.client_id, email=normalize_email(email)
    )
    if view is None:
        raise NotFound("contact not found", fields={"email": "not_found"})
    c = view.contact
    if any(cat.enabled for cat in body.categories) and policy.marketing_suppressed(
        c.global_unsubscribed_at, c.hard_bounced_at, c.complained_at
    ):
        raise Conflict(
            "a suppressed contact cannot enable a category", code="suppressed_contact_cannot_be_enabled"
        )
    await queries.set_category_preferences(
        session,
        contact_id=c.id,
        audience_id=scope.audience.id,
        client_id=scope.client_id,
        # one row per slug (`Weekly News` and `weekly-news` are one category): the last wins
        categories=list({cat.tag: (cat.tag, cat.enabled, cat.label) for cat in body.categories}.values()),
        reason=body.reason,
    )
    await session.commit()
    stored = await queries.category_preferences(session, c.id, scope.audience.id, scope.client_id)
    return PreferencesOut(
        email=c.email,
        exists=True,
        categories=[CategoryOut(tag=t, enabled=p.enabled, label=p.label) for t, p in sorted(stored.items())],
    )


@router.post("/contacts/erase", response_model=EraseOut, responses=NOT_FOUND)
async def erase(body: EraseIn, auth: CurrentClient, session: SessionDep) -> EraseOut:
    """Delete the contact's live state and anonymize its history; a bounced, complained or
    globally unsubscribed address stays suppressed."""
    scope = await service.resolve_scope(session, auth, body.audience, body.client)
    email = service.require_email(body.email)
    view = await queries.view_contact(
        session, audience_id=scope.audience.id, client_id=scope.client_id, email=normalize_email(email)
    )
    if view is None:
        raise NotFound("contact not found", fields={"email": "not_found"})
    c = view.contact
    suppressed = policy.marketing_suppressed(c.global_unsubscribed_at, c.hard_bounced_at, c.complained_at)
    await mailchimp.record_erase(session, organization_id=c.organization_id, contact_id=c.id, email=c.email)
    await queries.erase_contact(session, c)
    await session.commit()
    return EraseOut(erased=True, suppressed=suppressed)


@router.get("/contacts/{contact_id}/history", response_model=HistoryOut, responses=NOT_FOUND)
async def history(
    contact_id: ContactId,
    scope: QueryScope,
    auth: CurrentClient,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: CursorQuery = None,
) -> HistoryOut:
    """Campaign recipients, transactional messages and events, newest first."""
    items, next_cursor = await queries.contact_history(
        session, contact_id=contact_id, client_id=auth.client.id, limit=limit, cursor=cursor
    )
    return HistoryOut(items=[HistoryItem(**i) for i in items], next_cursor=next_cursor)
