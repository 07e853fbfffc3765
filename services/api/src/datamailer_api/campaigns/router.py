from typing import Annotated

from fastapi import APIRouter, Query, Response

from datamailer_api.campaigns import service
from datamailer_api.campaigns.schemas import (
    CampaignEnvelope,
    CampaignIn,
    CampaignUpsertOut,
    CursorQuery,
    ExternalKey,
    NewExternalKey,
    OptionalScopeQuery,
    PreviewIn,
    PreviewOut,
    QueueOut,
    RecipientsOut,
    RecipientStatus,
    ScopeIn,
    TestSendIn,
    TestSendOut,
)
from datamailer_api.deps import CurrentClient
from datamailer_api.rendering import RenderPoolDep
from datamailer_web.app import SesDep, SessionDep, SettingsDep
from datamailer_web.errors import error_responses

router = APIRouter(prefix="/api/campaigns", tags=["campaigns"], responses=error_responses(400, 401, 403, 404))
ACTION_ERRORS = error_responses(409, 413, 415)


@router.put(
    "/{external_key}",
    response_model=CampaignUpsertOut,
    responses={201: {"model": CampaignUpsertOut, "description": "Created"}, **ACTION_ERRORS},
)
async def put_campaign(
    external_key: NewExternalKey,
    body: CampaignIn,
    auth: CurrentClient,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
) -> CampaignUpsertOut:
    """Create (201) or replace (200) a draft campaign. Once queued it is 409
    `not_editable`. Tags are stored sorted and de-duplicated; `from_email` is a sender id."""
    found, created = await service.upsert(session, auth, external_key, body)
    await session.commit()
    response.status_code = 201 if created else 200
    return CampaignUpsertOut(campaign=service.campaign_out(found, auth.client, settings), created=created)


@router.get("/{external_key}", response_model=CampaignEnvelope)
async def get_campaign(
    external_key: ExternalKey,
    auth: CurrentClient,
    session: SessionDep,
    settings: SettingsDep,
    audience: OptionalScopeQuery = None,
    client: OptionalScopeQuery = None,
) -> CampaignEnvelope:
    """The definition, status, counters, derived rates and snapshot/enqueue progress.
    A `sent` campaign that reached nobody says so in `outcome` and `warning`."""
    found = await service.find(session, auth, external_key, audience, client)
    return CampaignEnvelope(campaign=await service.campaign_view(session, found, auth.client, settings))


@router.post("/{external_key}/queue", status_code=202, response_model=QueueOut, responses=ACTION_ERRORS)
async def queue_campaign(
    external_key: ExternalKey,
    auth: CurrentClient,
    session: SessionDep,
    settings: SettingsDep,
    body: ScopeIn | None = None,
) -> QueueOut:
    """Queue a draft: the recipient snapshot and the batch enqueue run in the
    background (`scheduled` first when `scheduled_at` is in the future). The counts are
    those written so far, 0 right after queueing; `GET` shows them grow. Queueing again
    is a no-op (`queued: false`)."""
    found = await service.find_scoped(session, auth, external_key, body)
    found, queued = await service.queue(session, auth, found)
    await session.commit()
    campaign = found.campaign
    return QueueOut(
        campaign=await service.campaign_view(session, found, auth.client, settings),
        queued=queued,
        recipient_count=campaign.recipient_count,
        skipped_count=campaign.skipped_count,
        batch_count=campaign.batch_count,
    )


@router.post("/{external_key}/pause", response_model=CampaignEnvelope, responses=ACTION_ERRORS)
async def pause_campaign(
    external_key: ExternalKey,
    auth: CurrentClient,
    session: SessionDep,
    settings: SettingsDep,
    body: ScopeIn | None = None,
) -> CampaignEnvelope:
    """Stop feeding the queue at once; batches already in flight are acknowledged by the
    workers without sending. Pausing a paused campaign changes nothing; 409
    `not_pausable` for a draft or finished one."""
    found = await service.find_scoped(session, auth, external_key, body)
    found = await service.pause(session, found)
    await session.commit()
    return CampaignEnvelope(campaign=service.campaign_out(found, auth.client, settings))


@router.post("/{external_key}/resume", response_model=CampaignEnvelope, responses=ACTION_ERRORS)
async def resume_campaign(
    external_key: ExternalKey,
    auth: CurrentClient,
    session: SessionDep,
    settings: SettingsDep,
    body: ScopeIn | None = None,
) -> CampaignEnvelope:
    """Continue a paused campaign: only recipients still pending are enqueued again.
    A running campaign is left as it is; 409 `not_resumable` for a draft or finished one."""
    found = await service.find_scoped(session, auth, external_key, body)
    found = await service.resume(session, found)
    await session.commit()
    return CampaignEnvelope(campaign=service.campaign_out(found, auth.client, settings))


@router.post("/{external_key}/cancel", response_model=CampaignEnvelope, responses=ACTION_ERRORS)
async def cancel_campaign(
    external_key: ExternalKey,
    auth: CurrentClient,
    session: SessionDep,
    settings: SettingsDep,
    body: ScopeIn | None = None,
) -> CampaignEnvelope:
    """Cancel: nothing further is sent; pending recipients become `skipped`
    (`campaign_cancelled`). 409 `not_cancellable` once sent or cancelled."""
    found = await service.find_scoped(session, auth, external_key, body)
    found = await service.cancel(session, found)
    await session.commit()
    return CampaignEnvelope(campaign=service.campaign_out(found, auth.client, settings))


@router.post("/{external_key}/preview", response_model=PreviewOut, responses=error_responses(413, 415))
async def preview_campaign(
    external_key: ExternalKey,
    auth: CurrentClient,
    session: SessionDep,
    settings: SettingsDep,
    pool: RenderPoolDep,
    body: PreviewIn | None = None,
) -> PreviewOut:
    """Render the subject and bodies as a recipient would get them, with placeholder
    tokens in the unsubscribe and preference links (`{{ unsubscribe_url }}`)."""
    found = await service.find_scoped(session, auth, external_key, body)
    return await service.preview(auth, found, body, settings, pool)


@router.post("/{external_key}/test-send", response_model=TestSendOut, responses=error_responses(413, 415))
async def test_send_campaign(
    external_key: ExternalKey,
    body: TestSendIn,
    auth: CurrentClient,
    session: SessionDep,
    settings: SettingsDep,
    sesv2: SesDep,
    pool: RenderPoolDep,
) -> TestSendOut:
    """Send the campaign now to at most 25 addresses (subject prefixed `[Test] `), in
    any status; no recipient rows, counters or events. One result per address."""
    found = await service.find_scoped(session, auth, external_key, body)
    return await service.test_send(session, auth, found, body, settings, sesv2, pool)


@router.get("/{external_key}/recipients", response_model=RecipientsOut)
async def list_recipients(
    external_key: ExternalKey,
    auth: CurrentClient,
    session: SessionDep,
    settings: SettingsDep,
    audience: OptionalScopeQuery = None,
    client: OptionalScopeQuery = None,
    status: RecipientStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: CursorQuery = None,
) -> RecipientsOut:
    """Recipient rows in id order with status, skip reason, timestamps and counters;
    pass `next_cursor` back as `cursor` for the next page."""
    found = await service.find(session, auth, external_key, audience, client)
    return await service.recipients(session, found, status=status, limit=limit, cursor=cursor)
