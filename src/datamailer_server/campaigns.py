"""The runbook's campaign procedures for operators (`datamailer campaigns ...`): pause,
resume, status, recompute-stats, retry-failed. A campaign is named by its id or by its
client's slug and its external key. Each procedure is one short transaction and is
safe to run twice; the scheduler does the enqueueing."""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.campaigns.snapshot import snapshot_percent
from datamailer_core.errors import NotFound, ValidationFailed
from datamailer_core.models import Campaign, Client
from datamailer_core.models.campaigns import COUNTERS
from datamailer_core.repositories import campaigns, scope
from datamailer_core.repositories.campaigns import FINISHED_STATUSES
from datamailer_core.settings import Settings
from datamailer_server.ops import session_scope

__all__ = ["FINISHED_STATUSES", "CampaignRef", "pause", "recompute", "resume", "retry_failed", "status"]


@dataclass(frozen=True)
class CampaignRef:
    campaign_id: int | None = None
    client: str | None = None
    key: str | None = None
    organization: str | None = None

    def __post_init__(self) -> None:
        by_id = self.campaign_id is not None
        by_key = self.client is not None and self.key is not None
        if by_id == by_key:
            raise ValidationFailed(
                "name a campaign: its ID, or --client and --key", fields={"campaign": "required"}
            )


async def _resolve(session: AsyncSession, ref: CampaignRef) -> Campaign:
    found = None
    if ref.campaign_id is not None:
        found = await campaigns.get_campaign_by_id(session, ref.campaign_id)
    elif ref.client is not None and ref.key is not None:
        client = await scope.get_client_by_slug(session, ref.client, ref.organization)
        found = await campaigns.get_campaign(session, client.id, ref.key)
    if found is None:
        raise NotFound("no such campaign", fields={"campaign": "not_found"})
    return found


async def pause(settings: Settings, ref: CampaignRef) -> Campaign:
    async with session_scope(settings) as session:
        await campaigns.pause(session, await _resolve(session, ref))
        return await _resolve(session, ref)


async def resume(settings: Settings, ref: CampaignRef) -> Campaign:
    async with session_scope(settings) as session:
        await campaigns.resume(session, await _resolve(session, ref))
        return await _resolve(session, ref)


async def recompute(settings: Settings, ref: CampaignRef) -> dict[str, int]:
    async with session_scope(settings) as session:
        campaign = await _resolve(session, ref)
        return await campaigns.recompute_counters(session, campaign.id)


async def retry_failed(settings: Settings, ref: CampaignRef) -> tuple[Campaign, int]:
    async with session_scope(settings) as session:
        reset = await campaigns.retry_failed(session, (await _resolve(session, ref)).id)
        return await _resolve(session, ref), reset


async def status(settings: Settings, ref: CampaignRef) -> dict[str, Any]:
    """What an operator checks: status, snapshot and enqueue progress, recipients by
    status, counters."""
    async with session_scope(settings) as session:
        campaign = await _resolve(session, ref)
        by_status = await campaigns.status_counts(session, campaign.id)
        client_slug = await session.scalar(select(Client.slug).where(Client.id == campaign.client_id))
    return {
        "id": campaign.id,
        "client": client_slug,
        "key": campaign.external_key,
        "status": campaign.status,
        "paused_reason": campaign.paused_reason,
        "scheduled_at": campaign.scheduled_at,
        "snapshot": "complete" if campaign.snapshot_completed_at else f"{snapshot_percent(campaign):.0f}%",
        "batches": campaign.batch_count,
        "recipients": dict(sorted(by_status.items())),
        "counters": {name: getattr(campaign, name) for name in COUNTERS},
    }
