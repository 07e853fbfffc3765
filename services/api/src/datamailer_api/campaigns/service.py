"""Campaigns as a client sees them: validation before any write, scope checks, the
status actions and the payloads. Snapshot and enqueue run in the scheduler
(`datamailer_workers.campaign_jobs`), never in a request."""

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_api.audience.service import resolve_scope
from datamailer_api.campaigns.schemas import (
    CampaignIn,
    CampaignOut,
    CountersOut,
    PreviewIn,
    PreviewOut,
    ProgressOut,
    RatesOut,
    RecipientOut,
    RecipientsOut,
    ScopeIn,
    TestSendIn,
    TestSendOut,
    TestSendResult,
)
from datamailer_api.deps import AuthContext
from datamailer_api.transactional import service as transactional_service
from datamailer_core import policy
from datamailer_core.campaigns.bulk import send_mode
from datamailer_core.campaigns.content import PREVIEW_EMAIL, PREVIEW_TOKEN
from datamailer_core.campaigns.message import CampaignContent, build_recipient_message, campaign_content
from datamailer_core.campaigns.snapshot import snapshot_percent
from datamailer_core.errors import NotFound, ValidationFailed
from datamailer_core.mail import InvalidMessage, build_ses_request
from datamailer_core.models import Campaign, Client
from datamailer_core.models.campaigns import COUNTERS
from datamailer_core.models.lists import ROOT_KEY
from datamailer_core.repositories import campaigns, recipient_lists
from datamailer_core.repositories.audience_queries import cursor_id, decode_cursor, encode_cursor
from datamailer_core.repositories.contacts import clean_email
from datamailer_core.repositories.recipient_lists import ListScope
from datamailer_core.senders import Sender, resolve_sender
from datamailer_core.sending import SendError, send_via_ses
from datamailer_core.settings import Settings
from datamailer_core.templating import TemplateError, validate_message_templates
from datamailer_core.templating.pool import RenderPool

# Pending recipients a cancel skips in its own request; the scheduler skips the rest.
CANCEL_INLINE_LIMIT: Final = 10_000
TEST_PREFIX: Final = "[Test] "


@dataclass(frozen=True)
class Found:
    campaign: Campaign
    audience: str


def _not_found() -> NotFound:
    return NotFound("campaign not found", fields={"external_key": "not_found"})


async def find(
    session: AsyncSession, auth: AuthContext, key: str, audience: str | None, client: str | None
) -> Found:
    """The client's campaign; another client's key, or a campaign of another audience
    than the one named, is 404 (never 403, so keys cannot be probed)."""
    auth.require_client(client)
    found = await campaigns.find_campaign(session, auth.client.id, key)
    if found is None:
        raise _not_found()
    campaign, audience_slug = found
    if audience is not None:
        scope = await resolve_scope(session, auth, audience, client)
        if scope.audience.id != campaign.audience_id:
            raise _not_found()
    return Found(campaign, audience_slug)


async def find_scoped(session: AsyncSession, auth: AuthContext, key: str, body: ScopeIn | None) -> Found:
    """`find` with the scope named in an action's optional body."""
    return await find(session, auth, key, body.audience if body else None, body.client if body else None)


def _sender(client: Client, requested: str | None, fields: dict[str, str]) -> Sender | None:
    if requested is not None and "@" in requested:
        fields["from_email"] = "invalid"  # an address where a sender id is expected
        return None
    try:
        return resolve_sender(client, requested, None)
    except ValidationFailed as exc:
        fields.update(exc.fields)
        return None


async def upsert(session: AsyncSession, auth: AuthContext, key: str, body: CampaignIn) -> tuple[Found, bool]:
    """Create or replace the definition of a draft; 409 `not_editable` after queueing."""
    scope = await resolve_scope(session, auth, body.audience, body.client)
    fields: dict[str, str] = {}
    if not body.subject.strip():
        fields["subject"] = "required"
    elif "\r" in body.subject or "\n" in body.subject:
        fields["subject"] = "invalid"
    if not (body.html_body or "").strip() and not (body.text_body or "").strip():
        fields["html_body"] = fields["text_body"] = "required"
    _sender(auth.client, body.from_email, fields)
    for name, reason in validate_message_templates(body.subject, body.html_body, body.text_body).items():
        fields.setdefault(name, reason)
    list_key = body.recipient_list_key
    if list_key is not None and list_key != ROOT_KEY:
        list_scope = ListScope(client_id=auth.client.id, audience_id=scope.audience.id)
        if await recipient_lists.get_list(session, list_scope, list_key) is None:
            fields["recipient_list_key"] = "not_found"
    if fields:
        raise ValidationFailed("invalid campaign", fields=fields)
    values: dict[str, Any] = {
        "audience_id": scope.audience.id,
        "subject": body.subject,
        "preview_text": body.preview_text,
        "html_body": body.html_body,
        "text_body": body.text_body,
        "sender_id": body.from_email,
        "include_tags": sorted(set(body.include_tags)),
        "exclude_tags": sorted(set(body.exclude_tags)),
        "category_tag": body.category_tag,
        "recipient_list_key": list_key,
        "scheduled_at": body.scheduled_at,
        "metadata_": body.metadata,
    }
    campaign, created = await campaigns.upsert_campaign(session, auth.client.id, key, values)
    return Found(campaign, scope.audience.slug), created


async def queue(session: AsyncSession, auth: AuthContext, found: Found) -> tuple[Found, bool]:
    """A draft becomes `snapshotting` (or `scheduled` for a future `scheduled_at`); any
    other status is left alone. Its sender must still be configured."""
    campaign = found.campaign
    queued = False
    if campaign.status == "draft":
        fields: dict[str, str] = {}
        _sender(auth.client, campaign.sender_id, fields)
        if fields:
            raise ValidationFailed("the campaign's sender is no longer configured", fields=fields)
        queued = await campaigns.queue_campaign(session, campaign.id)
    return await _reloaded(session, found), queued


async def pause(session: AsyncSession, found: Found) -> Found:
    await campaigns.pause(session, found.campaign)
    return await _reloaded(session, found)


async def resume(session: AsyncSession, found: Found) -> Found:
    await campaigns.resume(session, found.campaign)
    return await _reloaded(session, found)


async def cancel(session: AsyncSession, found: Found) -> Found:
    await campaigns.cancel(session, found.campaign, skip_now=CANCEL_INLINE_LIMIT)
    return await _reloaded(session, found)


async def _reloaded(session: AsyncSession, found: Found) -> Found:
    campaign = await campaigns.get_campaign_by_id(session, found.campaign.id)
    assert campaign is not None
    return Found(campaign, found.audience)


def _content(auth: AuthContext, found: Found, settings: Settings, context: dict[str, Any]) -> CampaignContent:
    try:
        return campaign_content(found.campaign, auth.client, settings, context)
    except ValidationFailed as exc:
        raise ValidationFailed("the campaign's sender is not configured", fields=exc.fields) from None


async def preview(
    auth: AuthContext, found: Found, body: PreviewIn | None, settings: Settings, pool: RenderPool
) -> PreviewOut:
    """The message as a recipient gets it (tracked links, pixel, unsubscribe link and
    headers), with placeholder tokens."""
    content = _content(auth, found, settings, body.context if body else {})
    email = body.email if body and body.email else PREVIEW_EMAIL
    try:
        # In the pool's processes: whatever a template does, the loop keeps serving.
        message = await pool.run(
            build_recipient_message,
            content,
            email=email,
            tracking_token=PREVIEW_TOKEN,
            unsubscribe_token=PREVIEW_TOKEN,
        )
    except TemplateError as exc:
        raise exc.as_validation_error() from None
    sender_id = found.campaign.sender_id or auth.client.default_sender_id
    return PreviewOut(
        subject=message.subject,
        preview_text=found.campaign.preview_text,
        html_body=message.html_body,
        text_body=message.text_body,
        from_email=sender_id or "",
        from_email_address=message.from_address
        if message.display_name is None
        else f"{message.display_name} <{message.from_address}>",
        headers=dict(message.headers),
    )


async def _test_send_block_reason(session: AsyncSession, organization_id: int, email: str) -> str | None:
    """What a transactional send would say, except that a global unsubscribe blocks
    campaign mail with or without a category."""
    _, suppression = await transactional_service.suppression_without_writing(session, organization_id, email)
    reason = policy.transactional_block_reason(
        hard_bounced=suppression.hard_bounced, complained=suppression.complained
    )
    return reason or ("global_unsubscribe" if suppression.global_unsubscribed else None)


async def test_send(
    session: AsyncSession,
    auth: AuthContext,
    found: Found,
    body: TestSendIn,
    settings: Settings,
    sesv2: Any,
    pool: RenderPool,
) -> TestSendOut:
    """Send the campaign now to up to 25 addresses, subject prefixed `[Test]`, with
    placeholder tokens (signed links still lead to their targets); no recipient rows,
    counters or events. Each address gets its own result; a hard-bounced, complained or
    globally unsubscribed one is `skipped` with the reason. Ends the session's read-only
    transaction before calling SES."""
    fields = {f"emails.{i}": "invalid" for i, raw in enumerate(body.emails) if clean_email(raw) is None}
    if fields:
        raise ValidationFailed("invalid test addresses", fields=fields)
    content = _content(auth, found, settings, body.context)
    content = replace(content, subject=f"{TEST_PREFIX}{content.subject}")
    tags = {"campaign_id": found.campaign.id, "client": auth.client.slug, "test": "true"}
    addresses = list(dict.fromkeys(body.emails))
    organization_id = auth.client.organization_id
    blocked = {
        a: await _test_send_block_reason(session, organization_id, clean_email(a) or a) for a in addresses
    }
    # No connection is held across the SES calls: detach what was read, end the
    # read-only transaction (a rollback would expire attached objects).
    session.expunge_all()
    await session.rollback()

    async def send(address: str) -> TestSendResult:
        email = clean_email(address) or address
        if (reason := blocked[address]) is not None:
            return TestSendResult(email=email, status="skipped", reason=reason)
        try:
            message = await pool.run(
                build_recipient_message, content, email=email, tracking_token=PREVIEW_TOKEN,
                unsubscribe_token=PREVIEW_TOKEN,
            )  # fmt: skip
            request = build_ses_request(message, configuration_set=settings.ses.configuration_set, tags=tags)
            result = await send_via_ses(sesv2, request)
        except TemplateError as exc:
            raise exc.as_validation_error() from None
        except InvalidMessage as exc:
            return TestSendResult(email=email, status="failed", reason=exc.reason)
        except SendError as exc:
            return TestSendResult(email=email, status="failed", reason=exc.code)
        return TestSendResult(email=email, status="sent", message_id=result.message_id)

    return TestSendOut(results=list(await asyncio.gather(*(send(a) for a in addresses))))


async def recipients(
    session: AsyncSession, found: Found, *, status: str | None, limit: int, cursor: str | None
) -> RecipientsOut:
    after_id = cursor_id(decode_cursor(cursor, 1)[0]) if cursor else None
    rows = await campaigns.list_recipients(
        session, found.campaign.id, status=status, limit=limit + 1, after_id=after_id
    )
    page = rows[:limit]
    return RecipientsOut(
        recipients=[RecipientOut.model_validate(row, from_attributes=True) for row in page],
        next_cursor=encode_cursor(page[-1].id) if len(rows) > limit else None,
    )


def _rate(numerator: int, denominator: int) -> float:
    return round(numerator / denominator, 4) if denominator else 0.0


def _outcome(campaign: Campaign) -> str | None:
    if campaign.status != "sent":
        return None
    if campaign.sent_count:
        return "sent"
    return "failed" if campaign.failed_count else "no_eligible_recipients"


def _warning(outcome: str | None, skipped_by_reason: Mapping[str, int] | None) -> str | None:
    """Why a finished campaign reached nobody, in a newcomer's words: the usual cause is
    contacts upserted without `verified: true`."""
    if outcome != "no_eligible_recipients":
        return None
    if not skipped_by_reason:
        return "no eligible recipients: the audience had no contact for this client"
    reasons = ", ".join(f"{count} skipped {reason}" for reason, count in skipped_by_reason.items())
    return f"no eligible recipients: {reasons}"


async def campaign_view(
    session: AsyncSession, found: Found, client: Client, settings: Settings
) -> CampaignOut:
    """`campaign_out`, with the skip reasons counted when the campaign reached nobody."""
    reasons = None
    if _outcome(found.campaign) == "no_eligible_recipients":
        reasons = await campaigns.skip_reason_counts(session, found.campaign.id)
    return campaign_out(found, client, settings, reasons)


def campaign_out(
    found: Found, client: Client, settings: Settings, skipped_by_reason: Mapping[str, int] | None = None
) -> CampaignOut:
    campaign = found.campaign
    mode, mode_reason = send_mode(
        campaign.subject,
        campaign.html_body,
        campaign.text_body,
        bulk_send=settings.delivery.campaign_bulk_send,
    )
    counters = CountersOut(**{name: getattr(campaign, name) for name in COUNTERS})
    outcome = _outcome(campaign)
    sender_id = campaign.sender_id or client.default_sender_id
    address = next((s["email"] for s in client.sender_emails if s.get("id") == sender_id), None)
    return CampaignOut(
        id=campaign.id,
        external_key=campaign.external_key,
        audience=found.audience,
        client=client.slug,
        status=campaign.status,
        paused_reason=campaign.paused_reason,
        subject=campaign.subject,
        preview_text=campaign.preview_text,
        html_body=campaign.html_body,
        text_body=campaign.text_body,
        from_email=sender_id,
        from_email_address=address,
        include_tags=campaign.include_tags,
        exclude_tags=campaign.exclude_tags,
        category_tag=campaign.category_tag,
        recipient_list_key=campaign.recipient_list_key,
        scheduled_at=campaign.scheduled_at,
        metadata=campaign.metadata_,
        queued_at=campaign.queued_at,
        sent_at=campaign.sent_at,
        cancelled_at=campaign.cancelled_at,
        created_at=campaign.created_at,
        updated_at=campaign.updated_at,
        send_mode=mode,
        send_mode_reason=mode_reason,
        counters=counters,
        rates=RatesOut(
            open_rate=_rate(counters.unique_open_count, counters.sent_count),
            click_rate=_rate(counters.unique_click_count, counters.sent_count),
            click_to_open_rate=_rate(counters.unique_click_count, counters.unique_open_count),
            bounce_rate=_rate(counters.bounce_count, counters.sent_count),
            unsubscribe_rate=_rate(counters.unsubscribe_count, counters.sent_count),
        ),
        progress=ProgressOut(
            snapshot_completed=campaign.snapshot_completed_at is not None,
            snapshot_percent=snapshot_percent(campaign),
            snapshot_completed_at=campaign.snapshot_completed_at,
            batch_count=campaign.batch_count,
            last_enqueued_at=campaign.last_enqueued_at,
        ),
        outcome=outcome,
        warning=_warning(outcome, skipped_by_reason),
    )
