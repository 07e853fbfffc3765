"""Unsubscribe page scenarios: campaigns snapshotted in the rolled-back test session whose
recipients hold a known unsubscribe token (as a sent message would)."""

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from datamailer_core.campaigns.snapshot import run_snapshot
from datamailer_core.repositories import campaigns
from datamailer_core.security import hash_token, new_token
from tests.api.campaign_factories import Group, builder, create_campaign
from tests.factories import Tenant

SECRET = "test-secret-key"


async def snapshot(sessionmaker: async_sessionmaker[AsyncSession], campaign_id: int) -> None:
    async with sessionmaker() as s, s.begin():
        await campaigns.queue_campaign(s, campaign_id)
    await run_snapshot(sessionmaker, campaign_id)


async def recipients(session: AsyncSession, campaign_id: int) -> dict[int, tuple[str, str | None]]:
    rows = await session.execute(
        text("SELECT contact_id, status, skip_reason FROM campaign_recipients WHERE campaign_id = :id"),
        {"id": campaign_id},
    )
    return {row.contact_id: (row.status, row.skip_reason) for row in rows}


@dataclass
class SentCampaign:
    campaign_id: int
    contact_ids: list[int]
    tokens: dict[int, str]  # contact id → raw unsubscribe token


async def sent_campaign(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant: Tenant,
    key: str,
    *,
    count: int = 1,
    category_tag: str | None = "news",
    group: Group | None = None,
    contact_ids: list[int] | None = None,
) -> SentCampaign:
    """A campaign snapshotted and marked sent, each recipient with its own token (what the
    send handler stores), optionally to contacts that already exist."""
    if contact_ids is None:
        contact_ids = await builder(session, tenant).add(group or Group(count))
        await session.commit()
    campaign = await create_campaign(session, tenant, key, category_tag=category_tag)
    await snapshot(sessionmaker, campaign.id)
    tokens = {cid: new_token() for cid in contact_ids}
    for cid, token in tokens.items():
        await session.execute(
            text(
                "UPDATE campaign_recipients SET status = 'sent', sent_at = now(), unsubscribe_token_hash = :h"
                " WHERE campaign_id = :c AND contact_id = :id AND status = 'pending'"
            ),
            {"h": hash_token(SECRET, token), "c": campaign.id, "id": cid},
        )
    await session.commit()
    return SentCampaign(campaign.id, contact_ids, tokens)
