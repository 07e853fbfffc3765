"""The scheduler's campaign jobs: scheduled campaigns start when due; the snapshot and a
bounded, progressive feed run off the request path; pause stops the feed at once;
resume and retry-failed feed only what is left; a campaign is `sent` when nothing is
pending, with counters equal to a recount."""

from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from datamailer_core.campaigns.settings import CampaignSettings
from datamailer_core.contracts import CampaignEmailV1, parse_message
from datamailer_core.models import Campaign
from datamailer_core.repositories import campaigns
from datamailer_workers import campaign_jobs
from datamailer_workers.deps import WorkerDeps
from datamailer_workers.scheduler import default_jobs, run_once
from tests.api.campaign_factories import (
    Group,
    RecordingPublisher,
    builder,
    create_campaign,
    recipient_states,
    set_recipient_status,
)
from tests.factories import Tenant, TenantFactory

SETTINGS = CampaignSettings(
    CAMPAIGN_BATCH_SIZE=10,
    CAMPAIGN_MAX_BATCHES_IN_FLIGHT=3,
    CAMPAIGN_REFEED_AFTER_SECONDS=600,
    _env_file=None,
)


@pytest.fixture
async def tenant(session: AsyncSession) -> Tenant:
    return await TenantFactory(session, "test-secret").create()


async def advance(
    sessionmaker: async_sessionmaker[AsyncSession], publisher: Any, settings: CampaignSettings = SETTINGS
) -> int:
    """One pass, as a scheduler tick would run it."""
    return await campaign_jobs.advance_campaigns(sessionmaker, publisher, settings, budget_seconds=0)


async def load(session: AsyncSession, campaign_id: int) -> Campaign:
    found = await campaigns.get_campaign_by_id(session, campaign_id)
    assert found is not None
    return found


async def queued_campaign(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant: Tenant,
    eligible: int = 95,
    skipped: int = 7,
) -> Campaign:
    audience = builder(session, tenant)
    await audience.add(Group(eligible))
    await audience.add(Group(skipped, hard_bounced=True))
    await session.commit()
    campaign = await create_campaign(session, tenant)
    async with sessionmaker() as s, s.begin():
        assert await campaigns.queue_campaign(s, campaign.id)
    return await load(session, campaign.id)


async def pending_ids(session: AsyncSession, campaign_id: int) -> list[int]:
    rows = await campaigns.list_recipients(
        session, campaign_id, status="pending", limit=10_000, after_id=None
    )
    return [row.id for row in rows]


async def work_off(session: AsyncSession, campaign_id: int, ids: Sequence[int]) -> None:
    """What the send handler does to each recipient of a batch."""
    await set_recipient_status(session, campaign_id, "sent", ids)
    await session.execute(
        text("UPDATE campaign_recipients SET sent_at = now() WHERE id = ANY(CAST(:ids AS bigint[]))"),
        {"ids": list(ids)},
    )
    await session.commit()


async def test_a_scheduled_campaign_starts_only_when_due(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    later = await create_campaign(session, tenant, "later", scheduled_at=None)
    await session.execute(
        text("UPDATE campaigns SET scheduled_at = now() + interval '1 hour' WHERE id = :id"), {"id": later.id}
    )
    await session.commit()
    async with sessionmaker() as s, s.begin():
        await campaigns.queue_campaign(s, later.id)
    assert (await load(session, later.id)).status == "scheduled"

    assert await campaign_jobs.start_due_campaigns(sessionmaker) == 0
    assert (await load(session, later.id)).status == "scheduled"
    assert await advance(sessionmaker, RecordingPublisher()) == 0

    await session.execute(
        text("UPDATE campaigns SET scheduled_at = now() - interval '1 second' WHERE id = :id"),
        {"id": later.id},
    )
    await session.commit()
    assert await campaign_jobs.start_due_campaigns(sessionmaker) == 1
    assert await campaign_jobs.start_due_campaigns(sessionmaker) == 0
    assert (await load(session, later.id)).status == "snapshotting"


async def test_the_feed_keeps_a_bounded_number_of_batches_in_flight(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    campaign = await queued_campaign(session, sessionmaker, tenant)
    publisher = RecordingPublisher()

    await advance(sessionmaker, publisher)

    snapshotted = await load(session, campaign.id)
    assert (snapshotted.status, snapshotted.recipient_count, snapshotted.skipped_count) == ("sending", 102, 7)
    pending = await pending_ids(session, campaign.id)
    assert [m.batch_id for m in publisher.messages] == [
        f"campaign-{campaign.id}-batch-0001",
        f"campaign-{campaign.id}-batch-0002",
        f"campaign-{campaign.id}-batch-0003",
    ]
    assert publisher.recipient_ids == pending[:30]
    assert {m.campaign_id for m in publisher.messages} == {campaign.id}

    # Nothing worked off: nothing more is fed, however often the job runs.
    await advance(sessionmaker, publisher)
    await advance(sessionmaker, publisher)
    assert len(publisher.messages) == 3

    await work_off(session, campaign.id, publisher.messages[0].campaign_recipient_ids)
    await advance(sessionmaker, publisher)
    assert len(publisher.messages) == 4
    assert publisher.messages[3].campaign_recipient_ids == tuple(pending[30:40])
    assert publisher.messages[3].batch_id == f"campaign-{campaign.id}-batch-0004"
    assert (await load(session, campaign.id)).batch_count == 4


async def test_the_campaign_is_sent_when_nothing_is_pending_and_each_recipient_was_fed_once(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    campaign = await queued_campaign(session, sessionmaker, tenant)
    publisher = RecordingPublisher()
    for _ in range(20):
        await advance(sessionmaker, publisher)
        await work_off(session, campaign.id, publisher.recipient_ids)
        if (await load(session, campaign.id)).status == "sent":
            break

    done = await load(session, campaign.id)
    assert done.status == "sent"
    assert done.sent_at is not None
    assert sorted(publisher.recipient_ids) == sorted(set(publisher.recipient_ids))
    assert len(publisher.recipient_ids) == 95
    assert max(len(m.campaign_recipient_ids) for m in publisher.messages) == 10
    assert (done.recipient_count, done.sent_count, done.skipped_count) == (102, 95, 7)


async def test_pause_stops_the_feed_at_once_and_resume_feeds_only_pending_recipients(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    campaign = await queued_campaign(session, sessionmaker, tenant)
    publisher = RecordingPublisher()
    await advance(sessionmaker, publisher)
    in_flight = publisher.recipient_ids
    async with sessionmaker() as s, s.begin():
        assert await campaigns.pause_campaign(s, campaign.id)
    # The workers send the first batch; the other two are acknowledged unsent.
    await work_off(session, campaign.id, in_flight[:10])

    await advance(sessionmaker, publisher)
    # Even a feeder that listed the campaign just before the pause feeds nothing.
    assert await campaign_jobs.feed_campaign(sessionmaker, publisher, SETTINGS, campaign.id) == 0
    assert publisher.recipient_ids == in_flight
    assert (await load(session, campaign.id)).status == "paused"

    async with sessionmaker() as s, s.begin():
        assert await campaigns.resume_campaign(s, campaign.id)
    resumed = RecordingPublisher()
    await advance(sessionmaker, resumed)

    pending = await pending_ids(session, campaign.id)
    assert resumed.recipient_ids == pending[:30]
    assert resumed.recipient_ids[:20] == in_flight[10:]
    assert not set(resumed.recipient_ids) & set(in_flight[:10])
    assert resumed.messages[0].batch_id == f"campaign-{campaign.id}-batch-0004"


async def test_a_failed_publish_hands_the_recipients_back_to_the_next_pass(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    campaign = await queued_campaign(session, sessionmaker, tenant)

    assert await advance(sessionmaker, RecordingPublisher(fail=True)) == 95 + 7
    assert (await load(session, campaign.id)).enqueue_cursor == 0

    publisher = RecordingPublisher()
    await advance(sessionmaker, publisher)
    assert publisher.recipient_ids == (await pending_ids(session, campaign.id))[:30]


async def test_recipients_in_flight_for_too_long_are_fed_again(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    campaign = await queued_campaign(session, sessionmaker, tenant)
    publisher = RecordingPublisher()
    await advance(sessionmaker, publisher)
    first = publisher.recipient_ids
    await work_off(session, campaign.id, first[:5])
    # Their messages went to the DLQ: nothing moves for longer than the threshold.
    await session.execute(
        text("UPDATE campaigns SET last_enqueued_at = now() - interval '11 minutes' WHERE id = :id"),
        {"id": campaign.id},
    )
    await session.commit()

    again = RecordingPublisher()
    await advance(sessionmaker, again)

    assert again.recipient_ids == (await pending_ids(session, campaign.id))[:30]
    assert again.recipient_ids[:25] == first[5:]


async def test_retry_failed_feeds_only_failed_and_pending_recipients_again(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    campaign = await queued_campaign(session, sessionmaker, tenant, eligible=25, skipped=2)
    publisher = RecordingPublisher()
    await advance(sessionmaker, publisher)
    sent, failed = publisher.recipient_ids[:20], publisher.recipient_ids[20:]
    await work_off(session, campaign.id, sent)
    await set_recipient_status(session, campaign.id, "failed", failed, skip_reason="send_outcome_unknown")
    for _ in range(3):
        await advance(sessionmaker, publisher)
    assert (await load(session, campaign.id)).status == "sent"
    assert (await load(session, campaign.id)).failed_count == 5

    async with sessionmaker() as s, s.begin():
        assert await campaigns.retry_failed(s, campaign.id) == 5
    retried = RecordingPublisher()
    await advance(sessionmaker, retried)

    reopened = await load(session, campaign.id)
    assert (reopened.status, reopened.failed_count, reopened.sent_at) == ("sending", 0, None)
    assert sorted(retried.recipient_ids) == sorted(failed)
    states = await recipient_states(session, campaign.id)
    assert list(states.values()).count(("pending", None)) == 5


async def test_cancelled_campaigns_have_their_pending_recipients_skipped_by_the_job(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    campaign = await queued_campaign(session, sessionmaker, tenant, eligible=12, skipped=0)
    await advance(sessionmaker, RecordingPublisher())
    async with sessionmaker() as s, s.begin():
        assert await campaigns.cancel_campaign(s, campaign.id)
    publisher = RecordingPublisher()

    assert await advance(sessionmaker, publisher) == 12

    assert set((await recipient_states(session, campaign.id)).values()) == {("skipped", "campaign_cancelled")}
    assert publisher.messages == []
    assert (await load(session, campaign.id)).skipped_count == 12
    assert await advance(sessionmaker, publisher) == 0


async def test_recomputed_counters_equal_a_recount_and_converge(
    session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    campaign = await queued_campaign(session, sessionmaker, tenant, eligible=20, skipped=3)
    await advance(sessionmaker, RecordingPublisher())
    ids = await pending_ids(session, campaign.id)
    await work_off(session, campaign.id, ids[:15])
    await set_recipient_status(session, campaign.id, "failed", ids[15:17])
    await session.execute(
        text("UPDATE campaign_recipients SET status = 'complained', complained_at = now() WHERE id = :id"),
        {"id": ids[0]},
    )
    await session.execute(
        text(
            "INSERT INTO email_events (event_type, campaign_id, campaign_recipient_id)"
            " SELECT 'open', :cid, r FROM unnest(CAST(:ids AS bigint[])) r"
        ),
        {"cid": campaign.id, "ids": [ids[1], ids[1], ids[2]]},
    )
    # Counters that drifted (a lost increment, a replayed one).
    await session.execute(
        text("UPDATE campaigns SET sent_count = 3, open_count = 99, skipped_count = 0 WHERE id = :id"),
        {"id": campaign.id},
    )
    await session.commit()

    async with sessionmaker() as s, s.begin():
        first = await campaigns.recompute_counters(s, campaign.id)
    async with sessionmaker() as s, s.begin():
        second = await campaigns.recompute_counters(s, campaign.id)

    assert first == second
    by_status = await campaigns.status_counts(session, campaign.id)
    assert by_status == {"sent": 14, "complained": 1, "failed": 2, "pending": 3, "skipped": 3}
    assert first["recipient_count"] == sum(by_status.values())
    assert first["sent_count"] == 15
    assert (first["failed_count"], first["skipped_count"], first["complaint_count"]) == (2, 3, 1)
    assert (first["open_count"], first["unique_open_count"]) == (3, 2)
    assert (await load(session, campaign.id)).open_count == 3


async def test_the_scheduler_runs_the_campaign_jobs_and_publishes_contract_messages(
    deps: WorkerDeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAMPAIGN_JOB_BUDGET_SECONDS", "0")
    async with deps.sessionmaker() as session:
        tenant = await TenantFactory(session, "test-secret").create()
        await builder(session, tenant).add(Group(3))
        await session.commit()
        campaign = await create_campaign(session, tenant)
    async with deps.sessionmaker() as session, session.begin():
        await campaigns.queue_campaign(session, campaign.id)

    results = await run_once(deps, default_jobs(deps.settings))

    assert results["campaigns.start_due"] == 0
    assert results["campaigns.advance"] == 6  # three snapshotted, three fed
    url = deps.publisher.url("campaign-email")
    received = await deps.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    [body] = [m["Body"] for m in received["Messages"]]
    message = parse_message(body, "campaign-email")
    assert isinstance(message, CampaignEmailV1)
    assert message.batch_id == f"campaign-{campaign.id}-batch-0001"
    assert len(message.campaign_recipient_ids) == 3


def test_batches_are_sized_to_the_send_rate_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """About two seconds of sending per batch, 50 to 500 recipients; CAMPAIGN_BATCH_SIZE wins."""
    monkeypatch.delenv("CAMPAIGN_BATCH_SIZE", raising=False)
    auto = CampaignSettings(_env_file=None)
    assert [auto.for_send_rate(rate).batch_size for rate in (1, 14, 100, 240, 1_000_000)] == [
        50, 50, 200, 480, 500,
    ]  # fmt: skip
    monkeypatch.setenv("CAMPAIGN_BATCH_SIZE", "20")
    assert CampaignSettings(_env_file=None).for_send_rate(1_000_000).batch_size == 20
    assert CampaignSettings(CAMPAIGN_BATCH_SIZE=300, _env_file=None).for_send_rate(14).batch_size == 300
