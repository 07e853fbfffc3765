"""The sweeper: lost queue messages are published again, stale leases expire per the
stream's policy, and nothing recent is touched."""

import asyncio

import boto3
from sqlalchemy import func, update

from datamailer_core.models import TransactionalMessage
from datamailer_workers.deps import WorkerDeps, open_deps
from datamailer_workers.scheduler import default_jobs, publish_health, run_once
from tests.workers.conftest import WorkerEnv
from tests.workers.helpers import (
    claim_and_abandon,
    events,
    insert_queued,
    load,
    queue_depth,
    run_poller_until,
    seed_client,
    sent_mail,
)


async def age(deps: WorkerDeps, message_id: int, seconds: int) -> None:
    async with deps.sessionmaker() as session, session.begin():
        await session.execute(
            update(TransactionalMessage)
            .where(TransactionalMessage.id == message_id)
            .values(updated_at=func.now() - func.make_interval(0, 0, 0, 0, 0, 0, seconds))
        )


IDLE = {
    "transactional.requeue_lost": 0,
    "transactional.expire_leases": 0,
    "campaigns.expire_leases": 0,
    "campaigns.start_due": 0,
    "campaigns.advance": 0,
    "webhooks.dispatch": 0,
    "mailchimp.dispatch": 0,
    "health.publish": 0,
}


async def test_lost_queued_row_is_republished_and_then_sent_once(
    deps: WorkerDeps, worker_env: WorkerEnv
) -> None:
    seeded = await seed_client(deps)
    # Committed, but the API crashed before publishing: nothing is on the queue.
    lost = await insert_queued(deps, seeded, to="lost@example.com")
    recent = await insert_queued(deps, seeded, to="recent@example.com")
    await age(deps, lost.id, 3600)
    jobs = default_jobs(deps.settings)

    first = await run_once(deps, jobs)
    second = await run_once(deps, jobs)

    assert first == {**IDLE, "transactional.requeue_lost": 1}
    assert second == IDLE
    assert await queue_depth(deps, "transactional-email") == 1

    async def sent() -> bool:
        return (await load(deps, lost.id)).status == "sent"

    await run_poller_until(deps, sent)
    [mail] = sent_mail(worker_env.aws_endpoint)
    assert mail.destinations == {"ToAddresses": ["lost@example.com"]}
    assert (await load(deps, recent.id)).status == "queued"


async def abandon_lease(deps: WorkerDeps, message: TransactionalMessage) -> None:
    await claim_and_abandon(deps, message, lease_seconds=0.01)
    await asyncio.sleep(0.05)  # past the lease


async def test_stale_lease_is_requeued_and_sent_under_the_resend_policy(
    deps: WorkerDeps, worker_env: WorkerEnv
) -> None:
    seeded = await seed_client(deps)
    message = await insert_queued(deps, seeded)
    await abandon_lease(deps, message)

    result = await run_once(deps, default_jobs(deps.settings))

    assert result["transactional.expire_leases"] == 1
    row = await load(deps, message.id)
    assert (row.status, row.lease_owner) == ("queued", None)

    async def sent() -> bool:
        return (await load(deps, message.id)).status == "sent"

    await run_poller_until(deps, sent)
    assert len(sent_mail(worker_env.aws_endpoint)) == 1
    assert (await load(deps, message.id)).attempt_count == 2


async def test_stale_lease_fails_as_outcome_unknown_under_the_fail_policy(worker_env: WorkerEnv) -> None:
    settings = worker_env.settings(TRANSACTIONAL_EXPIRED_LEASE_POLICY="fail")
    async with open_deps(settings) as deps:
        seeded = await seed_client(deps)
        message = await insert_queued(deps, seeded)
        await abandon_lease(deps, message)

        result = await run_once(deps, default_jobs(settings))

        assert result["transactional.expire_leases"] == 1
        row = await load(deps, message.id)
        assert (row.status, row.status_reason) == ("failed", "send_outcome_unknown")
        assert [(e.event_type, e.metadata_) for e in await events(deps, message.id)] == [
            ("failed", {"reason": "send_outcome_unknown"})
        ]
        assert await queue_depth(deps, "transactional-email") == 0


async def test_live_lease_is_left_alone(deps: WorkerDeps) -> None:
    seeded = await seed_client(deps)
    message = await insert_queued(deps, seeded)
    await claim_and_abandon(deps, message, lease_seconds=60, owner="busy-worker")

    result = await run_once(deps, default_jobs(deps.settings))

    assert result == IDLE
    assert (await load(deps, message.id)).lease_owner == "busy-worker"


async def test_the_health_figures_the_alarms_read_reach_metrics_and_cloudwatch(worker_env: WorkerEnv) -> None:
    """A transactional message queued an hour ago and a campaign fed nothing for an hour:
    the transactional-latency and stuck-campaigns alarms' metrics say so."""
    settings = worker_env.settings(CLOUDWATCH_METRICS_ENVIRONMENT="staging")
    async with open_deps(settings) as deps:
        seeded = await seed_client(deps)
        message = await insert_queued(deps, seeded, to="waiting@example.com")
        async with deps.sessionmaker() as session, session.begin():
            await session.execute(
                update(TransactionalMessage)
                .where(TransactionalMessage.id == message.id)
                .values(created_at=func.now() - func.make_interval(0, 0, 0, 0, 0, 0, 3600))
            )
        assert await publish_health(deps) == 0
        oldest = deps.metrics.registry.get_sample_value("datamailer_transactional_queued_seconds")
        assert oldest is not None
        assert 3600 <= oldest < 3700
        assert deps.metrics.registry.get_sample_value("datamailer_stuck_campaigns") == 0
    cloudwatch = boto3.client("cloudwatch", endpoint_url=worker_env.aws_endpoint, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
    listed = cloudwatch.list_metrics(Namespace="Datamailer")["Metrics"]
    assert {m["MetricName"] for m in listed} == {"StuckCampaigns", "TransactionalQueuedSeconds"}
    assert all(m["Dimensions"] == [{"Name": "Environment", "Value": "staging"}] for m in listed)
