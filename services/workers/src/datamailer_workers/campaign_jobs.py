"""The scheduler's campaign jobs: start scheduled campaigns when due, snapshot their
recipients, feed the `campaign-email` queue progressively, mark them `sent`, and finish
the skipping of cancelled ones. All of it off the request path.

The feed keeps at most `CAMPAIGN_MAX_BATCHES_IN_FLIGHT` batches of a campaign handed to
the queue and not yet worked off, whatever the campaign's size: the queue stays short,
and a pause (which the feed checks under the campaign's row lock before every batch)
lets through at most what is already in flight. Each batch is taken in one short
transaction, committed, then published; a failed publish hands its recipients back.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from datamailer_core.campaigns.settings import CampaignSettings
from datamailer_core.campaigns.snapshot import run_snapshot
from datamailer_core.contracts import QueueMessage
from datamailer_core.repositories import campaigns
from datamailer_workers.deps import WorkerDeps

logger = logging.getLogger("datamailer.campaigns")

# While a campaign is sending and the in-flight bound is reached, look again this often.
POLL_SECONDS: Final = 0.2
# Pending recipients of a cancelled campaign skipped per statement.
CANCEL_CHUNK: Final = 10_000


class BatchPublisher(Protocol):
    """What the feed needs of `QueuePublisher`."""

    async def publish_batch(self, messages: Sequence[QueueMessage]) -> None: ...


async def start_due_campaigns(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """`scheduled` campaigns whose `scheduled_at` has come start snapshotting."""
    async with sessionmaker() as session, session.begin():
        return len(await campaigns.start_due_campaigns(session))


async def advance_campaigns(
    sessionmaker: async_sessionmaker[AsyncSession],
    publisher: BatchPublisher,
    settings: CampaignSettings,
    *,
    budget_seconds: float | None = None,
) -> int:
    """Work on every active campaign, pass after pass, while some are snapshotting or
    sending and `budget_seconds` (default `CAMPAIGN_JOB_BUDGET_SECONDS`; 0 = one pass)
    lasts. Returns the rows acted on: recipients snapshotted, fed and skipped, and
    campaigns finished."""
    budget = settings.job_budget_seconds if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    total = 0
    while True:
        acted, active = await _one_pass(sessionmaker, publisher, settings, deadline)
        total += acted
        if not active or time.monotonic() >= deadline:
            return total
        if not acted:
            await asyncio.sleep(POLL_SECONDS)


async def _one_pass(
    sessionmaker: async_sessionmaker[AsyncSession],
    publisher: BatchPublisher,
    settings: CampaignSettings,
    deadline: float,
) -> tuple[int, bool]:
    async with sessionmaker() as session:
        snapshotting = await campaigns.campaigns_in(session, ("snapshotting",))
        cancelled = await campaigns.cancelled_with_pending(session)
    acted = 0
    for campaign_id in snapshotting:
        acted += await run_snapshot(
            sessionmaker,
            campaign_id,
            chunk=settings.snapshot_chunk,
            budget_seconds=max(deadline - time.monotonic(), 0),
        )
    for campaign_id in cancelled:
        acted += await skip_cancelled(sessionmaker, campaign_id)
    async with sessionmaker() as session:
        sending = await campaigns.campaigns_in(session, ("sending",))
    for campaign_id in sending:
        acted += await feed_campaign(sessionmaker, publisher, settings, campaign_id)
    # A snapshot that finished in this pass is in `sending` now; one still going, in
    # `snapshotting`: either way there is more to do.
    return acted, bool(snapshotting or sending)


async def feed_campaign(
    sessionmaker: async_sessionmaker[AsyncSession],
    publisher: BatchPublisher,
    settings: CampaignSettings,
    campaign_id: int,
) -> int:
    """Top the campaign's in-flight batches up to the bound; when nothing is left to
    feed and nothing is pending or sending, mark it `sent` with recomputed counters.
    Returns the recipients published (or 1 for a campaign finished now)."""
    async with sessionmaker() as session, session.begin():
        feed = await campaigns.take_feed(
            session,
            campaign_id,
            batch_size=settings.batch_size,
            max_batches_in_flight=settings.max_batches_in_flight,
            refeed_after_seconds=settings.refeed_after_seconds,
        )
    if feed is None:
        return 0
    if feed.messages:
        try:
            await publisher.publish_batch(feed.messages)
        except Exception:  # SQS unreachable or refusing: retried by the next pass
            logger.exception("campaign %d: publishing %d batches failed", campaign_id, len(feed.messages))
            async with sessionmaker() as session, session.begin():
                await campaigns.return_feed(session, feed)
            return 0
        return feed.recipient_count
    if not feed.exhausted:
        return 0  # the in-flight bound is reached: wait for the workers
    async with sessionmaker() as session, session.begin():
        if not await campaigns.finish_if_done(session, campaign_id):
            return 0
        await campaigns.recompute_counters(session, campaign_id)
    logger.info("campaign %d sent", campaign_id)
    return 1


async def skip_cancelled(sessionmaker: async_sessionmaker[AsyncSession], campaign_id: int) -> int:
    total = 0
    while True:
        async with sessionmaker() as session, session.begin():
            skipped = await campaigns.skip_pending_of_cancelled(session, campaign_id, CANCEL_CHUNK)
        total += skipped
        if skipped < CANCEL_CHUNK:
            return total


async def run_due_campaigns(deps: WorkerDeps) -> int:
    """`start_due_campaigns` as a scheduler job."""
    return await start_due_campaigns(deps.sessionmaker)


def advance_job(settings: CampaignSettings) -> Callable[[WorkerDeps], Awaitable[int]]:
    """`advance_campaigns` as a scheduler job over the worker dependencies."""

    async def advance(deps: WorkerDeps) -> int:
        sized = settings.for_send_rate(deps.settings.ses.max_send_rate)
        return await advance_campaigns(deps.sessionmaker, deps.publisher, sized)

    return advance
