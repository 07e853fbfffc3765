"""Recipient lists (Datamailer's "Recipient List APIs"): create or update a list, read it
with its counts, and write members one at a time, in bulk, or as a reconciled set."""

from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy import select

from datamailer_api.audience import service as contacts
from datamailer_api.audience.schemas import OptionalScopeQuery, ScopeQuery
from datamailer_api.deps import CurrentClient
from datamailer_api.lists import send as list_send
from datamailer_api.lists import service
from datamailer_api.lists.schemas import (
    BulkIn,
    BulkOut,
    ListOut,
    ListPutIn,
    ListSendCounts,
    ListSendIn,
    ListSendOut,
    ListSendSkipped,
    MemberOut,
    MemberPutIn,
    MemberPutOut,
    ReconcileIn,
)
from datamailer_api.rendering import RenderPoolDep
from datamailer_core.models import RecipientListMember
from datamailer_core.repositories import recipient_lists as repo
from datamailer_web.app import PublisherDep, SessionDep
from datamailer_web.errors import error_responses

router = APIRouter(
    prefix="/api/recipient-lists", tags=["recipient lists"], responses=error_responses(400, 401, 403, 413)
)
NOT_FOUND = error_responses(404)
# A 100,000-member body is about 10 MB of JSON.
BULK_BODY_LIMIT = 48 * 1024 * 1024
BODY_LIMIT_SUFFIXES = {"/members/bulk-upsert": BULK_BODY_LIMIT, "/members/reconcile": BULK_BODY_LIMIT}
# Checked by the service for precise reasons (`empty_segment`, `reserved`, ...).
ListKey = Annotated[str, Path(description="`:`-separated segments, e.g. `course:2025:cohort-a`.")]
SourceObjectKey = Annotated[str, Path(description="The caller's id for the member, e.g. `registration:42`.")]


@router.put("/{list_key}", response_model=ListOut)
async def put_list(list_key: ListKey, body: ListPutIn, auth: CurrentClient, session: SessionDep) -> ListOut:
    """Create the list (and any missing ancestor) or update the attributes given."""
    key = service.check_list_key(list_key)
    scope = await contacts.resolve_scope(session, auth, body.audience, body.client)
    found, created = await service.ensure_list(session, scope, key, body)
    await session.commit()
    return await service.list_out(session, scope, key, found, created)


@router.get("/{list_key}", response_model=ListOut, responses=NOT_FOUND)
async def get_list(
    list_key: ListKey,
    audience: ScopeQuery,
    auth: CurrentClient,
    session: SessionDep,
    client: OptionalScopeQuery = None,
) -> ListOut:
    """A list with its counts; `member_count` includes every list under it. `<all>` is
    the audience root: every member of this client's lists."""
    key = service.check_list_key(list_key, writable=False)
    scope = await contacts.resolve_scope(session, auth, audience, client)
    return await service.read_list(session, scope, key)


@router.put("/{list_key}/members/{source_object_key}", response_model=MemberPutOut)
async def put_member(
    list_key: ListKey,
    source_object_key: SourceObjectKey,
    body: MemberPutIn,
    auth: CurrentClient,
    session: SessionDep,
) -> MemberPutOut:
    """Upsert one member (and its contact); the list is created when missing."""
    key = service.check_list_key(list_key)
    source_key = service.check_source_key(source_object_key)
    scope = await contacts.resolve_scope(session, auth, body.audience, body.client)
    member = body.the_member()
    checked = service.single(source_key, member.email, member.status, member.metadata)
    found, created = await service.ensure_list(session, scope, key, body.list)
    counts = await service.write_members(session, scope, found.id, [checked])
    row = await session.scalar(
        select(RecipientListMember).where(
            RecipientListMember.list_id == found.id, RecipientListMember.source_object_key == source_key
        )
    )
    assert row is not None
    await session.refresh(row)
    outcome = "created" if counts.created else "updated" if counts.updated else "unchanged"
    return MemberPutOut(
        list=await service.list_out(session, scope, key, found, created),
        member=MemberOut(
            source_object_key=row.source_object_key,
            contact_id=row.contact_id,
            email=row.email,
            status=row.status,
            metadata=row.metadata_,
            removed_at=row.removed_at,
            created_at=row.created_at,
            updated_at=row.updated_at,
        ),
        outcome=outcome,
    )


@router.post("/{list_key}/members/bulk-upsert", response_model=BulkOut)
async def bulk_upsert(list_key: ListKey, body: BulkIn, auth: CurrentClient, session: SessionDep) -> BulkOut:
    """Upsert up to 100,000 members, set-based in chunks; members not sent are untouched.
    Any invalid member rejects the request and nothing is written."""
    key = service.check_list_key(list_key)
    scope = await contacts.resolve_scope(session, auth, body.audience, body.client)
    members = service.check_members(body.members)
    found, created = await service.ensure_list(session, scope, key, body.list)
    counts = await service.write_members(session, scope, found.id, members)
    await session.commit()
    return BulkOut(list=await service.list_out(session, scope, key, found, created), counts=counts)


@router.post("/{list_key}/members/reconcile", response_model=BulkOut)
async def reconcile(
    list_key: ListKey, body: ReconcileIn, auth: CurrentClient, session: SessionDep
) -> BulkOut:
    """The members sent become the list's active direct members: each is upserted, and
    with `remove_absent` every other active member is marked `removed` (kept, not
    deleted). Repeating the request changes nothing."""
    key = service.check_list_key(list_key)
    scope = await contacts.resolve_scope(session, auth, body.audience, body.client)
    members = service.check_members(body.members)
    found, created = await service.ensure_list(session, scope, key, body.list)
    counts = await service.write_members(session, scope, found.id, members)
    if body.remove_absent:
        counts.removed = await repo.remove_absent(session, found.id, [m.source_object_key for m in members])
    await session.commit()
    return BulkOut(list=await service.list_out(session, scope, key, found, created), counts=counts)


@router.post("/{list_key}/transactional-send", response_model=ListSendOut, responses=NOT_FOUND)
async def transactional_send(
    list_key: ListKey,
    body: ListSendIn,
    auth: CurrentClient,
    session: SessionDep,
    publisher: PublisherDep,
    pool: RenderPoolDep,
) -> ListSendOut:
    """One transactional message per distinct active member of the list and every list
    under it, at most 10,000 (a larger list is 400 `too_many_members`). Members blocked as
    a single send would block them are stored `skipped` and listed with their reason. A
    repeat with the same `idempotency_key` creates and enqueues nothing new and answers the
    same outcome. Rows are committed before the queue messages (batches of ten)."""
    result = await list_send.send(session, auth, list_key, body, pool)
    await session.commit()
    fresh = [o for o in result.outcomes if o.id in result.created_ids and o.status == "queued"]
    enqueued = await list_send.publish(publisher, fresh)
    if enqueued:
        await list_send.record_enqueued(session, enqueued)
    skipped = [o for o in result.outcomes if o.status == "skipped"]
    return ListSendOut(
        list_key=list_key,
        template_key=body.template_key,
        idempotency_key=body.idempotency_key,
        idempotent_replay=bool(result.outcomes) and not result.created_ids,
        counts=ListSendCounts(
            members=len(result.outcomes),
            created=len(result.created_ids),
            queued=len(result.outcomes) - len(skipped),
            skipped=len(skipped),
            enqueued=len(enqueued),
        ),
        skipped=[
            ListSendSkipped(
                contact_id=o.contact_id,
                email=o.email,
                message_id=o.id,
                reason=o.status_reason or "suppressed",
            )
            for o in skipped
        ],
    )
