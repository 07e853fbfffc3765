"""`datamailer scheduler`: periodic jobs that repair what queues alone cannot.

Each job is a small async function of the worker dependencies returning how many rows it
acted on; it runs every `interval` seconds. Jobs take their rows with
`FOR UPDATE SKIP LOCKED`, so two schedulers never act on one row twice. Campaign
scheduling, outbound webhook dispatch (`webhook_dispatch`) and the Mailchimp sync
(`mailchimp_sync`) are among `default_jobs`.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from datamailer_core.aws import aws_client, aws_session
from datamailer_core.campaigns.settings import CampaignSettings
from datamailer_core.repositories import campaign_sends, deliveries, health
from datamailer_core.repositories.deliveries import Requeue
from datamailer_core.settings import Settings
from datamailer_workers import campaign_jobs
from datamailer_workers.deps import WorkerDeps, open_deps
from datamailer_workers.mailchimp_sync import dispatch_mailchimp
from datamailer_workers.monitor import DEFAULT_MONITOR_HOST, serve_monitor
from datamailer_workers.poller import install_stop_signals
from datamailer_workers.webhook_dispatch import dispatch_webhooks

logger = logging.getLogger("datamailer.scheduler")

SWEEP_BATCH: Final = 500
# Batches per job run, so one run stays short even with a large backlog.
MAX_BATCHES_PER_RUN: Final = 20


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    interval: float
    run: Callable[[WorkerDeps], Awaitable[int]]


async def _publish_transactional(deps: WorkerDeps, rows: Sequence[Requeue]) -> None:
    # After the commit: a failed publish leaves the rows `queued`, and the next sweep
    # past the threshold tries again. The handler is idempotent, so a duplicate is safe.
    await deps.publisher.publish_batch([row.as_contract() for row in rows])


async def requeue_lost_transactional(
    deps: WorkerDeps, *, older_than: float | None = None, max_batches: int = MAX_BATCHES_PER_RUN
) -> int:
    """Publish again the `queued` rows older than `older_than` seconds (default
    TRANSACTIONAL_REQUEUE_AFTER_SECONDS); `datamailer transactional requeue-stale` runs
    it on demand."""
    threshold = deps.settings.delivery.requeue_after_seconds if older_than is None else older_than
    total = 0
    for _ in range(max_batches):
        async with deps.sessionmaker() as session, session.begin():
            rows = await deliveries.claim_stale_queued(session, older_than=threshold, limit=SWEEP_BATCH)
        await _publish_transactional(deps, rows)
        total += len(rows)
        if len(rows) < SWEEP_BATCH:
            break
    return total


async def expire_transactional_leases(deps: WorkerDeps) -> int:
    """`sending` rows whose lease expired, per TRANSACTIONAL_EXPIRED_LEASE_POLICY:
    `resend` re-queues and publishes them, `fail` marks them `send_outcome_unknown`."""
    policy = deps.settings.delivery.transactional_expired_lease_policy
    total = 0
    for _ in range(MAX_BATCHES_PER_RUN):
        async with deps.sessionmaker() as session, session.begin():
            to_publish, failed = await deliveries.expire_stale_leases(
                session, policy=policy, limit=SWEEP_BATCH
            )
        await _publish_transactional(deps, to_publish)
        if failed:
            deps.metrics.sends.labels("transactional", "failed").inc(len(failed))
        total += len(to_publish) + len(failed)
        if len(to_publish) + len(failed) < SWEEP_BATCH:
            break
    return total


async def expire_campaign_leases(deps: WorkerDeps) -> int:
    """Recipients left `sending` past their lease, per CAMPAIGN_EXPIRED_LEASE_POLICY:
    `fail` (default) marks them `send_outcome_unknown`, `resend` makes them `pending`."""
    policy = deps.settings.delivery.campaign_expired_lease_policy
    total = 0
    for _ in range(MAX_BATCHES_PER_RUN):
        async with deps.sessionmaker() as session, session.begin():
            expired = await campaign_sends.expire_stale_leases(session, policy=policy, limit=SWEEP_BATCH)
        if expired and policy == "fail":
            deps.metrics.sends.labels("campaign", "failed").inc(expired)
        total += expired
        if expired < SWEEP_BATCH:
            break
    return total


HEALTH_INTERVAL_SECONDS: Final = 60.0
CLOUDWATCH_NAMESPACE: Final = "Datamailer"


async def publish_health(deps: WorkerDeps) -> int:
    """The figures the stuck-campaigns and transactional-latency alarms read: on this
    process's /metrics, and to CloudWatch when CLOUDWATCH_METRICS_ENVIRONMENT is set."""
    log = deps.settings.log
    async with deps.sessionmaker() as session:
        found = await health.delivery_health(session, stuck_after_seconds=log.stuck_campaign_seconds)
    deps.metrics.stuck_campaigns.set(found.stuck_campaigns)
    deps.metrics.transactional_queued_seconds.set(found.oldest_queued_seconds)
    if log.cloudwatch_environment:
        dimensions = [{"Name": "Environment", "Value": log.cloudwatch_environment}]
        async with aws_client(aws_session(deps.settings.aws), deps.settings.aws, "cloudwatch") as cloudwatch:
            await cloudwatch.put_metric_data(
                Namespace=CLOUDWATCH_NAMESPACE,
                MetricData=[
                    {
                        "MetricName": "StuckCampaigns",
                        "Dimensions": dimensions,
                        "Value": found.stuck_campaigns,
                        "Unit": "Count",
                    },
                    {
                        "MetricName": "TransactionalQueuedSeconds",
                        "Dimensions": dimensions,
                        "Value": found.oldest_queued_seconds,
                        "Unit": "Seconds",
                    },
                ],  # fmt: skip
            )
    return 0  # figures, not rows acted on: never a reason to run again at once


def default_jobs(settings: Settings) -> list[PeriodicJob]:
    interval = settings.delivery.scheduler_interval_seconds
    return [
        PeriodicJob("transactional.requeue_lost", interval, requeue_lost_transactional),
        PeriodicJob("transactional.expire_leases", interval, expire_transactional_leases),
        PeriodicJob("campaigns.expire_leases", interval, expire_campaign_leases),
        *campaign_periodic_jobs(CampaignSettings()),
        PeriodicJob("webhooks.dispatch", interval, dispatch_webhooks),
        PeriodicJob("mailchimp.dispatch", interval, dispatch_mailchimp),
        PeriodicJob("health.publish", HEALTH_INTERVAL_SECONDS, publish_health),
    ]


def campaign_periodic_jobs(campaign: CampaignSettings) -> list[PeriodicJob]:
    """Start due campaigns; snapshot, feed and finish active ones (`campaign_jobs`)."""
    interval = campaign.job_interval_seconds
    return [
        PeriodicJob("campaigns.start_due", interval, campaign_jobs.run_due_campaigns),
        PeriodicJob("campaigns.advance", interval, campaign_jobs.advance_job(campaign)),
    ]


async def run_once(deps: WorkerDeps, jobs: Sequence[PeriodicJob]) -> dict[str, int]:
    """Every job once, in order; a failing job is logged and does not stop the others."""
    results: dict[str, int] = {}
    for job in jobs:
        try:
            results[job.name] = await job.run(deps)
        except Exception:
            logger.exception("job %s failed", job.name)
            results[job.name] = -1
    return results


async def run_scheduler(deps: WorkerDeps, jobs: Sequence[PeriodicJob], stop: asyncio.Event) -> None:
    """Each job on its own cadence until `stop` is set; a run in progress finishes. A
    run that found work is followed by the next at once (a backlog, a campaign being
    fed); the interval is the pause between idle runs."""

    async def forever(job: PeriodicJob) -> None:
        while not stop.is_set():
            count = 0
            try:
                count = await job.run(deps)
                if count:
                    logger.info("job %s acted on %d rows", job.name, count)
            except Exception:
                logger.exception("job %s failed", job.name)
            if count <= 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), job.interval)

    await asyncio.gather(*(forever(job) for job in jobs))


async def run(
    settings: Settings,
    *,
    once: bool = False,
    metrics_port: int | None = None,
    metrics_host: str = DEFAULT_MONITOR_HOST,
) -> dict[str, int] | None:
    """`datamailer scheduler`: until SIGTERM/SIGINT, or one pass with `once`. With
    `metrics_port` (and not `once`), `/metrics` and `/health` are served on that port."""
    async with open_deps(settings) as deps:
        jobs = default_jobs(settings)
        if once:
            return await run_once(deps, jobs)
        stop = asyncio.Event()
        install_stop_signals(stop)
        async with contextlib.AsyncExitStack() as stack:
            if metrics_port is not None:
                await stack.enter_async_context(serve_monitor(deps, metrics_port, metrics_host))
            await run_scheduler(deps, jobs, stop)
    return None
