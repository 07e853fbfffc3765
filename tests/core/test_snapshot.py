"""The recipient snapshot: every intended recipient once, with the documented first
skip reason; tag filters decide who is intended; re-running writes nothing."""

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from datamailer_core.campaigns.snapshot import run_snapshot, snapshot_step
from datamailer_core.models.campaigns import SKIP_REASONS
from datamailer_core.models.contacts import BAD_VALIDATION_STATUSES
from datamailer_core.repositories import campaigns
from tests.api.campaign_factories import (
    AudienceBuilder,
    Group,
    another_client,
    builder,
    create_campaign,
    recipient_states,
)
from tests.factories import Tenant, TenantFactory

TAGS = ("customers", "vip")
CATEGORY = "news"


@pytest.fixture
async def tenant(session: AsyncSession) -> Tenant:
    return await TenantFactory(session, "test-secret").create()


# Group → the expected (status, skip reason). Every group carries both include tags, so
# only the reasons decide; the tag-filter groups below have no row at all.
REASON_GROUPS: list[tuple[Group, tuple[str, str | None]]] = [
    (Group(12, tags=TAGS), ("pending", None)),
    (Group(10, verified_at="client", tags=TAGS), ("pending", None)),
    (Group(10, verified_at="audience", audience_status="subscribed", tags=TAGS), ("pending", None)),
    (Group(8, audience_status="subscribed", tags=TAGS), ("pending", None)),
    (Group(8, category_on=[CATEGORY], tags=TAGS), ("pending", None)),
    (Group(8, category_off=[("other-category", "client")], tags=TAGS), ("pending", None)),
    # Every reason below is also true of the later ones: the first one wins.
    (
        Group(
            10,
            hard_bounced=True,
            complained=True,
            global_unsubscribed=True,
            validation_status="invalid_syntax",
            verified_at=None,
            client_status="unsubscribed",
            tags=TAGS,
        ),
        ("skipped", "hard_bounce"),
    ),
    (
        Group(10, complained=True, global_unsubscribed=True, client_status="pending", tags=TAGS),
        ("skipped", "complaint"),
    ),
    (
        Group(10, global_unsubscribed=True, validation_status="no_mx", verified_at=None, tags=TAGS),
        ("skipped", "global_unsubscribe"),
    ),
    *[
        (Group(4, validation_status=status, verified_at=None, tags=TAGS), ("skipped", "invalid_email"))
        for status in BAD_VALIDATION_STATUSES
    ],
    (
        Group(6, validation_status="risky", audience_status="unsubscribed", tags=TAGS),
        ("skipped", "invalid_email"),
    ),
    (Group(10, validation_status="unknown", tags=TAGS), ("pending", None)),
    (Group(10, verified_at=None, client_status="pending", tags=TAGS), ("skipped", "unverified")),
    (
        Group(10, verified_at=None, audience_status="unsubscribed", client_status="unsubscribed", tags=TAGS),
        ("skipped", "unverified"),
    ),
    (
        Group(10, audience_status="unsubscribed", client_status="unsubscribed", tags=TAGS),
        ("skipped", "audience_unsubscribe"),
    ),
    (Group(10, audience_status="unsubscribed", tags=TAGS), ("skipped", "audience_unsubscribe")),
    (
        Group(10, client_status="unsubscribed", category_off=[(CATEGORY, "client")], tags=TAGS),
        ("skipped", "client_unsubscribe"),
    ),
    (
        Group(10, audience_status="pending", client_status="unsubscribed", tags=TAGS),
        ("skipped", "client_unsubscribe"),
    ),
    (
        Group(10, client_status="pending", category_off=[(CATEGORY, "client")], tags=TAGS),
        ("skipped", "suppressed"),
    ),
    (Group(10, category_off=[(CATEGORY, "client")], tags=TAGS), ("skipped", "category_unsubscribe")),
    (Group(10, category_off=[(CATEGORY, "audience")], tags=TAGS), ("skipped", "category_unsubscribe")),
    (
        Group(10, category_off=[(CATEGORY, "client"), (CATEGORY, "audience")], tags=TAGS),
        ("skipped", "category_unsubscribe"),
    ),
]

# Not intended recipients: no row whatever their state.
FILTERED_GROUPS = [
    Group(10, tags=("customers",)),
    Group(10, tags=("vip",)),
    Group(10),
    Group(10, tags=(*TAGS, "churned")),
    Group(10, tags=("churned", "customers", "vip", "other"), hard_bounced=True),
    # Only the audience-level row: shared with the organization's other clients.
    Group(10, client_status=None, audience_status="subscribed", tags=TAGS),
]


async def build_scenario(session: AsyncSession, tenant: Tenant) -> tuple[AudienceBuilder, dict[int, Any]]:
    audience = builder(session, tenant)
    expected: dict[int, Any] = {}
    for group, outcome in REASON_GROUPS:
        for contact_id in await audience.add(group):
            expected[contact_id] = outcome
    for group in FILTERED_GROUPS:
        await audience.add(group)
    # Another client's subscribers in the same audience are not this campaign's.
    other = await another_client(session, tenant)
    await audience.add(Group(10, tags=TAGS), client_id=other)
    await session.commit()
    return audience, expected


async def snapshot(
    sessionmaker: async_sessionmaker[AsyncSession], session: AsyncSession, campaign_id: int, chunk: int
) -> int:
    async with sessionmaker() as s, s.begin():
        await campaigns.queue_campaign(s, campaign_id)
    inserted = await run_snapshot(sessionmaker, campaign_id, chunk=chunk)
    return inserted


async def test_each_intended_recipient_gets_one_row_with_the_first_matching_reason(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    _, expected = await build_scenario(session, tenant)
    campaign = await create_campaign(
        session,
        tenant,
        include_tags=sorted(TAGS),
        exclude_tags=["churned"],
        category_tag=CATEGORY,
    )

    # Small chunks: the contact id range is covered by many statements.
    inserted = await snapshot(sessionmaker, session, campaign.id, chunk=37)

    states = await recipient_states(session, campaign.id)
    assert len(expected) > 200
    assert states == expected
    assert inserted == len(expected)
    reasons = {reason for _, reason in expected.values()}
    assert reasons == {None, *SKIP_REASONS}
    done = await campaigns.get_campaign_by_id(session, campaign.id)
    assert done is not None
    assert done.status == "sending"
    assert done.snapshot_completed_at is not None
    assert done.recipient_count == len(expected)
    assert done.skipped_count == sum(1 for status, _ in expected.values() if status == "skipped")


async def test_without_filters_every_client_subscriber_is_a_recipient_and_categories_do_not_apply(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    audience = builder(session, tenant)
    plain = await audience.add(Group(5))
    tagged = await audience.add(Group(5, tags=("churned",)))
    category_off = await audience.add(Group(5, category_off=[(CATEGORY, "client")]))
    audience_only = await audience.add(Group(5, client_status=None, audience_status="subscribed"))
    await session.commit()
    campaign = await create_campaign(session, tenant)

    await snapshot(sessionmaker, session, campaign.id, chunk=50_000)

    states = await recipient_states(session, campaign.id)
    assert states == dict.fromkeys(plain + tagged + category_off, ("pending", None))
    assert not set(audience_only) & set(states)


async def test_an_include_tag_nobody_has_matches_nobody(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    await builder(session, tenant).add(Group(5, tags=("customers",)))
    await session.commit()
    campaign = await create_campaign(session, tenant, include_tags=["customers", "nonexistent"])

    await snapshot(sessionmaker, session, campaign.id, chunk=50_000)

    assert await recipient_states(session, campaign.id) == {}
    done = await campaigns.get_campaign_by_id(session, campaign.id)
    assert done is not None
    assert (done.status, done.recipient_count) == ("sending", 0)


async def test_rerunning_the_snapshot_inserts_nothing_and_counts_nothing_twice(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    _, expected = await build_scenario(session, tenant)
    campaign = await create_campaign(
        session, tenant, include_tags=sorted(TAGS), exclude_tags=["churned"], category_tag=CATEGORY
    )
    await snapshot(sessionmaker, session, campaign.id, chunk=100)
    before = await recipient_states(session, campaign.id)
    # As if a crash lost the cursor: the whole range is snapshotted again.
    await session.execute(
        text(
            "UPDATE campaigns SET status = 'snapshotting', snapshot_cursor = NULL, snapshot_target = NULL,"
            " snapshot_completed_at = NULL WHERE id = :id"
        ),
        {"id": campaign.id},
    )
    await session.commit()

    again = await run_snapshot(sessionmaker, campaign.id, chunk=100)

    assert again == 0
    assert await recipient_states(session, campaign.id) == before
    done = await campaigns.get_campaign_by_id(session, campaign.id)
    assert done is not None
    assert done.recipient_count == len(expected)


async def test_snapshot_progress_is_committed_chunk_by_chunk_and_stops_when_paused(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    ids = await builder(session, tenant).add(Group(40))
    await session.commit()
    campaign = await create_campaign(session, tenant)
    async with sessionmaker() as s, s.begin():
        await campaigns.queue_campaign(s, campaign.id)
    first_id = min(ids)
    # Start the range just before our contacts, so each step covers ten of them.
    await session.execute(
        text("UPDATE campaigns SET snapshot_cursor = :c, snapshot_target = :t WHERE id = :id"),
        {"c": first_id - 1, "t": max(ids), "id": campaign.id},
    )
    await session.commit()

    async with sessionmaker() as s, s.begin():
        step = await snapshot_step(s, campaign.id, chunk=10)
    assert step is not None
    assert (step.inserted, step.done, step.cursor) == (10, False, first_id + 9)
    progress = await campaigns.get_campaign_by_id(session, campaign.id)
    assert progress is not None
    assert (progress.snapshot_cursor, progress.recipient_count) == (first_id + 9, 10)

    async with sessionmaker() as s, s.begin():
        assert await campaigns.pause_campaign(s, campaign.id)
    assert await run_snapshot(sessionmaker, campaign.id, chunk=10) == 0
    assert len(await recipient_states(session, campaign.id)) == 10

    async with sessionmaker() as s, s.begin():
        assert await campaigns.resume_campaign(s, campaign.id)
    assert await run_snapshot(sessionmaker, campaign.id, chunk=10) == 30
    assert len(await recipient_states(session, campaign.id)) == 40
