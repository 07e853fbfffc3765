"""Campaign sending scenarios for worker tests: a tenant in a real (committed) database,
the scheduler's feed and a `campaign-email` poller running together until the campaign
is done, and what moto's SES received, by recipient."""

import asyncio
import email
import email.policy
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from email.message import EmailMessage
from typing import Any

import httpx
from sqlalchemy import text

from datamailer_core.campaigns.settings import CampaignSettings
from datamailer_core.models import Campaign
from datamailer_core.models.campaigns import COUNTERS
from datamailer_core.repositories import campaigns
from datamailer_workers import campaign_jobs
from datamailer_workers.deps import WorkerDeps
from datamailer_workers.poller import QueuePoller
from datamailer_workers.registry import HANDLERS, Handler
from tests.factories import Tenant, TenantFactory
from tests.ses_bulk import as_email, bulk_messages

SENDER_ADDRESS = "news@app.example.com"
POLL_SECONDS = 1
FEED = CampaignSettings(
    CAMPAIGN_BATCH_SIZE=25, CAMPAIGN_MAX_BATCHES_IN_FLIGHT=8, CAMPAIGN_JOB_BUDGET_SECONDS=0, _env_file=None
)


async def sending_tenant(deps: WorkerDeps) -> Tenant:
    """A committed tenant whose sender is verified in moto's SES."""
    async with deps.sessionmaker() as session:
        tenant = await TenantFactory(session, "test-secret-key").create(
            senders=[{"id": "news", "email": f"Acme News <{SENDER_ADDRESS}>"}]
        )
    await deps.sesv2.create_email_identity(EmailIdentity=SENDER_ADDRESS)
    return tenant


async def load_campaign(deps: WorkerDeps, campaign_id: int) -> Campaign:
    async with deps.sessionmaker() as session:
        found = await campaigns.get_campaign_by_id(session, campaign_id)
    assert found is not None
    return found


async def queue(deps: WorkerDeps, campaign_id: int) -> None:
    async with deps.sessionmaker() as session, session.begin():
        assert await campaigns.queue_campaign(session, campaign_id)


@asynccontextmanager
async def running(
    deps: WorkerDeps,
    *,
    feed: CampaignSettings = FEED,
    concurrency: int = 4,
    handlers: Mapping[str, Handler] = HANDLERS,
) -> AsyncIterator[None]:
    """The scheduler's campaign jobs (ticking every 50 ms) and a `campaign-email`
    poller, both in this loop, until the block ends."""
    stop = asyncio.Event()
    poller = QueuePoller(
        deps,
        "campaign-email",
        concurrency=concurrency,
        wait_seconds=POLL_SECONDS,
        retry_base=0.2,
        handlers=handlers,
    )

    async def tick() -> None:
        while not stop.is_set():
            await campaign_jobs.start_due_campaigns(deps.sessionmaker)
            await campaign_jobs.advance_campaigns(deps.sessionmaker, deps.publisher, feed, budget_seconds=0)
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(poller.run(stop)), asyncio.create_task(tick())]
    try:
        yield
        for task in tasks:
            if task.done():
                task.result()
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        # The stopped poller's cancelled long poll may still take a message server-side
        # (it comes back after the visibility timeout): let that poll expire first.
        await asyncio.sleep(POLL_SECONDS + 0.2)


async def wait_until(done: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not await done():
            await asyncio.sleep(0.1)


async def wait_for_status(deps: WorkerDeps, campaign_id: int, status: str, timeout: float = 60.0) -> None:
    async def reached() -> bool:
        return (await load_campaign(deps, campaign_id)).status == status

    await wait_until(reached, timeout)


def ses_data(aws_endpoint: str) -> dict[str, Any]:
    return dict(httpx.get(f"{aws_endpoint}/moto-api/data.json", timeout=30).json().get("ses", {}))


def sends_by_recipient(aws_endpoint: str) -> Counter[str]:
    """How many messages SES accepted per recipient address: moto's (raw and simple;
    moto lists a raw message's To header next to the Destination, so once per message)
    and those the `SendBulkEmail` endpoint rendered."""
    counts: Counter[str] = Counter()
    data = ses_data(aws_endpoint)
    for item in data.get("RawMessage", []) + data.get("Message", []) + bulk_messages(aws_endpoint):
        counts.update({email.utils.parseaddr(address)[1].lower() for address in item["destinations"]})
    return counts


def raw_messages(aws_endpoint: str) -> list[EmailMessage]:
    found = []
    for item in ses_data(aws_endpoint).get("RawMessage", []):
        parsed = email.message_from_string(item["raw_data"], policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        found.append(parsed)
    return found + [as_email(item) for item in bulk_messages(aws_endpoint)]


async def recipient_rows(deps: WorkerDeps, campaign_id: int) -> list[Any]:
    async with deps.sessionmaker() as session:
        rows = await session.execute(
            text(
                "SELECT r.*, c.normalized_email FROM campaign_recipients r"
                " LEFT JOIN contacts c ON c.id = r.contact_id WHERE r.campaign_id = :id ORDER BY r.id"
            ),
            {"id": campaign_id},
        )
        return list(rows.all())


async def counters_and_recount(deps: WorkerDeps, campaign_id: int) -> tuple[dict[str, int], dict[str, int]]:
    """The campaign's counters as kept while sending, then as recomputed from the rows."""
    kept = await load_campaign(deps, campaign_id)
    before = {name: getattr(kept, name) for name in COUNTERS}
    async with deps.sessionmaker() as session, session.begin():
        after = await campaigns.recompute_counters(session, campaign_id)
    return before, after
