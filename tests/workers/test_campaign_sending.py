"""Campaigns end to end through moto's SQS and SES and a real PostgreSQL: snapshot, the
bounded feed, the `campaign-email` handler, pause/resume/cancel, claim-time re-checks,
the rendered message and the counters."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.campaigns.message import click_target_is_genuine
from datamailer_core.campaigns.settings import CampaignSettings
from datamailer_core.campaigns.snapshot import run_snapshot
from datamailer_core.contracts import CampaignEmailV1
from datamailer_core.models import Campaign
from datamailer_core.repositories import campaigns
from datamailer_core.security import hash_token
from datamailer_workers.deps import WorkerDeps, open_deps
from datamailer_workers.handlers.campaign import handle_campaign_email
from datamailer_workers.scheduler import expire_campaign_leases
from tests.api.campaign_factories import Group, builder, create_campaign
from tests.factories import Tenant
from tests.workers.campaign_helpers import (
    counters_and_recount,
    load_campaign,
    queue,
    raw_messages,
    recipient_rows,
    running,
    sending_tenant,
    sends_by_recipient,
    wait_for_status,
    wait_until,
)
from tests.workers.conftest import WorkerEnv
from tests.workers.helpers import FailingSes, with_ses

SECRET = "test-secret-key"
BASE = "https://mail.example.com"


@pytest.fixture
async def fast(worker_env: WorkerEnv) -> AsyncIterator[WorkerDeps]:
    """Worker dependencies with a send rate moto can keep up with and public links."""
    settings = worker_env.settings(
        SES_MAX_SEND_RATE="2000",
        PUBLIC_BASE_URL=BASE,
        LIST_UNSUBSCRIBE_MAILTO="unsubscribe@app.example.com",
        SEND_LEASE_SECONDS="60",
    )
    async with open_deps(settings) as opened:
        yield opened


@pytest.fixture
async def tenant(fast: WorkerDeps) -> Tenant:
    return await sending_tenant(fast)


async def add_groups(deps: WorkerDeps, tenant: Tenant, groups: dict[str, Group]) -> dict[str, list[int]]:
    async with deps.sessionmaker() as session:
        audience = builder(session, tenant)
        ids = {name: await audience.add(group) for name, group in groups.items()}
        await session.commit()
    return ids


async def new_campaign(deps: WorkerDeps, tenant: Tenant, key: str = "nov", **values: Any) -> Campaign:
    definition: dict[str, Any] = {"sender_id": "news", "text_body": "Hi {{ email }}", **values}
    async with deps.sessionmaker() as session:
        return await create_campaign(session, tenant, key, **definition)


async def emails_of(deps: WorkerDeps, contact_ids: list[int]) -> set[str]:
    async with deps.sessionmaker() as session:
        rows = await session.scalars(
            text("SELECT normalized_email FROM contacts WHERE id = ANY(CAST(:ids AS bigint[]))"),
            {"ids": contact_ids},
        )
        return set(rows.all())


MIXED = {
    "eligible": Group(6000, tags=["customers"]),
    "eligible_client_verified": Group(400, verified_at="client", tags=["customers"]),
    "eligible_audience_verified": Group(400, verified_at="audience", audience_status="subscribed",
                                        tags=["customers", "vip"]),
    "hard_bounce": Group(300, hard_bounced=True, complained=True, tags=["customers"]),
    "complaint": Group(200, complained=True, global_unsubscribed=True, tags=["customers"]),
    "global_unsubscribe": Group(200, global_unsubscribed=True, tags=["customers"]),
    "invalid_email": Group(300, validation_status="invalid_syntax", tags=["customers"]),
    "unverified": Group(300, verified_at=None, tags=["customers"]),
    "audience_unsubscribe": Group(300, audience_status="unsubscribed", tags=["customers"]),
    "client_unsubscribe": Group(300, client_status="unsubscribed", tags=["customers"]),
    "suppressed": Group(300, client_status="pending", tags=["customers"]),
    "category_unsubscribe": Group(300, category_off=[("newsletter", "client")], tags=["customers"]),
    "category_unsubscribe_audience": Group(100, category_off=[("newsletter", "audience")], tags=["customers"]),
    "excluded_by_tag": Group(300, tags=["customers", "churned"]),
    "without_include_tag": Group(300, tags=["vip"]),
}  # fmt: skip
SKIPPED = {
    "hard_bounce": "hard_bounce",
    "complaint": "complaint",
    "global_unsubscribe": "global_unsubscribe",
    "invalid_email": "invalid_email",
    "unverified": "unverified",
    "audience_unsubscribe": "audience_unsubscribe",
    "client_unsubscribe": "client_unsubscribe",
    "suppressed": "suppressed",
    "category_unsubscribe": "category_unsubscribe",
    "category_unsubscribe_audience": "category_unsubscribe",
}
ELIGIBLE = ("eligible", "eligible_client_verified", "eligible_audience_verified")


async def test_a_10000_contact_mixed_audience_gets_exactly_one_message_per_eligible_contact(
    fast: WorkerDeps, tenant: Tenant, aws_endpoint: str
) -> None:
    groups = await add_groups(fast, tenant, MIXED)
    assert sum(len(ids) for ids in groups.values()) == 10_000
    campaign = await new_campaign(
        fast, tenant, include_tags=["customers"], exclude_tags=["churned"], category_tag="newsletter"
    )
    await queue(fast, campaign.id)
    feed = CampaignSettings(CAMPAIGN_BATCH_SIZE=50, CAMPAIGN_MAX_BATCHES_IN_FLIGHT=20, _env_file=None)
    async with running(fast, feed=feed, concurrency=8):
        await wait_for_status(fast, campaign.id, "sent", timeout=240)

    eligible = set().union(*[await emails_of(fast, groups[name]) for name in ELIGIBLE])
    sends = sends_by_recipient(aws_endpoint)
    assert set(sends) == eligible
    assert set(sends.values()) == {1}

    rows = await recipient_rows(fast, campaign.id)
    by_contact = {row.contact_id: row for row in rows}
    assert len(rows) == 9_400  # tag-filtered contacts are not recipients at all
    for name in ("excluded_by_tag", "without_include_tag"):
        assert not set(groups[name]) & set(by_contact)
    for name, reason in SKIPPED.items():
        assert {(by_contact[i].status, by_contact[i].skip_reason) for i in groups[name]} == {
            ("skipped", reason)
        }
    for name in ELIGIBLE:
        states = {(by_contact[i].status, by_contact[i].sent_at is not None) for i in groups[name]}
        assert states == {("sent", True)}
    sent_rows = [row for row in rows if row.status == "sent"]
    assert all(
        row.ses_message_id and row.tracking_token_hash and row.unsubscribe_token_hash for row in sent_rows
    )

    kept, recount = await counters_and_recount(fast, campaign.id)
    assert kept == recount
    assert (kept["recipient_count"], kept["sent_count"], kept["skipped_count"]) == (9_400, 6_800, 2_600)
    async with fast.sessionmaker() as session:
        events: dict[str, int] = dict(
            (
                await session.execute(
                    text("SELECT event_type, count(*) FROM email_events WHERE campaign_id = :id GROUP BY 1"),
                    {"id": campaign.id},
                )
            ).all()
        )
    assert events == {"sent": 6_800}
    finished = await load_campaign(fast, campaign.id)
    assert finished.sent_at is not None
    assert finished.snapshot_completed_at is not None


HTML = """<html><body>
<p>Hello {{ email }}</p>
<a href="https://example.com/news?a=1&amp;b=2">News</a>
<a class="x" href='http://example.org/plain'>Plain</a>
<a href="mailto:help@example.com">Mail us</a>
<a href="/relative/page">Relative</a>
<a href="#top">Top</a>
</body></html>"""
TEXT = "Hello {{ email }}\nRead https://example.com/text-link.\nWrite to mailto:help@example.com\n"


async def test_the_rendered_message_has_the_pixel_signed_click_links_and_one_click_unsubscribe(
    fast: WorkerDeps, tenant: Tenant, aws_endpoint: str
) -> None:
    await add_groups(fast, tenant, {"one": Group(1)})
    campaign = await new_campaign(
        fast, tenant, subject="News for {{ email }}", html_body=HTML, text_body=TEXT
    )
    await queue(fast, campaign.id)
    async with running(fast):
        await wait_for_status(fast, campaign.id, "sent")

    [message] = raw_messages(aws_endpoint)
    [row] = await recipient_rows(fast, campaign.id)
    assert message["To"] == row.email
    assert message["From"] == "Acme News <news@app.example.com>"
    assert message["Subject"] == f"News for {row.email}"

    unsubscribe_header = message["List-Unsubscribe"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https_part, mailto_part = [part.strip() for part in unsubscribe_header.split(",")]
    assert mailto_part == "<mailto:unsubscribe@app.example.com?subject=unsubscribe>"
    unsubscribe_url = https_part.strip("<>")
    assert unsubscribe_url.startswith(f"{BASE}/unsubscribe/")
    unsubscribe_token = unsubscribe_url.rsplit("/", 1)[1]
    assert len(unsubscribe_token) >= 22  # ≥ 128 bits, URL-safe base64
    assert row.unsubscribe_token_hash == hash_token(SECRET, unsubscribe_token)

    html_part = message.get_body(("html",))
    text_part = message.get_body(("plain",))
    assert html_part is not None
    assert text_part is not None
    html, plain = html_part.get_content(), text_part.get_content()

    pixel = f'<img src="{BASE}/t/o/'
    assert html.count(pixel) == 1
    tracking_token = html.split(pixel, 1)[1].split(".gif", 1)[0]
    assert row.tracking_token_hash == hash_token(SECRET, tracking_token)
    assert tracking_token != unsubscribe_token

    def clicks(body: str) -> list[str]:
        found = []
        for piece in body.split(f"{BASE}/t/c/")[1:]:
            url = f"{BASE}/t/c/" + piece.split('"')[0].split("'")[0].split()[0].rstrip(".").replace(
                "&amp;", "&"
            )
            parts = urlsplit(url)
            query = parse_qs(parts.query)
            assert parts.path == f"/t/c/{tracking_token}"
            assert click_target_is_genuine(SECRET, tracking_token, query["u"][0], query["s"][0])
            found.append(query["u"][0])
        return found

    assert clicks(html) == ["https://example.com/news?a=1&b=2", "http://example.org/plain"]
    assert clicks(plain) == ["https://example.com/text-link"]
    assert "https://example.com/text-link." not in plain  # the sentence's full stop stays outside
    assert not click_target_is_genuine(SECRET, tracking_token, "https://evil.example.net/", "0" * 32)
    for untouched in ('href="mailto:help@example.com"', 'href="/relative/page"', 'href="#top"'):
        assert untouched in html
    assert "mailto:help@example.com" in plain
    assert f'href="{unsubscribe_url}"' in html  # visible unsubscribe link, not rewritten
    assert unsubscribe_url in plain
    assert html.index(pixel) < html.index("</body>")


async def test_a_contact_who_bounces_or_unsubscribes_after_the_snapshot_is_not_sent_to(
    fast: WorkerDeps, tenant: Tenant, aws_endpoint: str
) -> None:
    campaign, ids = await snapshotted(fast, tenant, 12, category_tag="newsletter")
    assert (await load_campaign(fast, campaign.id)).status == "sending"
    changes = {
        "hard_bounce": "UPDATE contacts SET hard_bounced_at = now() WHERE id = :id",
        "complaint": "UPDATE contacts SET complained_at = now() WHERE id = :id",
        "global_unsubscribe": "UPDATE contacts SET global_unsubscribed_at = now() WHERE id = :id",
        "client_unsubscribe": "UPDATE subscriptions SET status = 'unsubscribed' WHERE contact_id = :id",
        "category_unsubscribe": "INSERT INTO category_preferences (contact_id, audience_id, client_id, tag,"
        " enabled) SELECT :id, audience_id, client_id, 'newsletter', false FROM subscriptions"
        " WHERE contact_id = :id",
    }
    async with fast.sessionmaker() as session, session.begin():
        for contact_id, statement in zip(ids, changes.values(), strict=False):
            await session.execute(text(statement), {"id": contact_id})
        await session.execute(text("DELETE FROM contacts WHERE id = :id"), {"id": ids[5]})  # erased

    async with running(fast):
        await wait_for_status(fast, campaign.id, "sent")

    rows = {row.contact_id: row for row in await recipient_rows(fast, campaign.id)}
    for contact_id, reason in zip(ids, changes, strict=False):
        assert (rows[contact_id].status, rows[contact_id].skip_reason) == ("skipped", reason)
    erased = [row for row in rows.values() if row.contact_id is None]
    assert [(row.status, row.skip_reason) for row in erased] == [("skipped", "suppressed")]
    assert sum(sends_by_recipient(aws_endpoint).values()) == 6
    kept, recount = await counters_and_recount(fast, campaign.id)
    assert kept == recount
    assert (kept["sent_count"], kept["skipped_count"]) == (6, 6)


async def snapshotted(
    deps: WorkerDeps, tenant: Tenant, contacts: int, **values: Any
) -> tuple[Campaign, list[int]]:
    """`contacts` eligible contacts and a queued, snapshotted campaign that was not fed:
    its recipients are all pending. Returns the campaign and the contact ids."""
    ids = (await add_groups(deps, tenant, {"all": Group(contacts)}))["all"]
    campaign = await new_campaign(deps, tenant, **values)
    await queue(deps, campaign.id)
    await run_snapshot(deps.sessionmaker, campaign.id)
    return campaign, ids


class RecordingSes:
    """Wraps the real sesv2 client: records when each call starts, optionally slowly."""

    def __init__(self, real: Any, delay: float = 0.0) -> None:
        self.real, self.delay = real, delay
        self.started: list[float] = []

    async def send_email(self, **request: Any) -> Any:
        self.started.append(time.monotonic())
        await asyncio.sleep(self.delay)
        return await self.real.send_email(**request)

    async def send_bulk_email(self, **request: Any) -> Any:
        """One start per destination: the tests count recipients sent to."""
        self.started.extend([time.monotonic()] * len(request["BulkEmailEntries"]))
        await asyncio.sleep(self.delay)
        return await self.real.send_bulk_email(**request)


async def sent_count(deps: WorkerDeps, campaign_id: int) -> int:
    async with deps.sessionmaker() as session:
        return int(
            await session.scalar(
                text("SELECT count(*) FROM campaign_recipients WHERE campaign_id = :id AND status = 'sent'"),
                {"id": campaign_id},
            )
            or 0
        )


PAUSE_FEED = CampaignSettings(CAMPAIGN_BATCH_SIZE=10, CAMPAIGN_MAX_BATCHES_IN_FLIGHT=4, _env_file=None)
CONCURRENCY = 2


async def interrupt_mid_send(
    fast: WorkerDeps, tenant: Tenant, action: Callable[[AsyncSession, Campaign], Awaitable[None]]
) -> tuple[WorkerDeps, RecordingSes, Campaign, list[float]]:
    """Send a 300-recipient campaign, apply `action` once 40 are sent, let the workers
    run 2 s more; returns the SES calls that started after the action committed."""
    await add_groups(fast, tenant, {"all": Group(300)})
    campaign = await new_campaign(fast, tenant)
    ses = RecordingSes(fast.sesv2, delay=0.02)
    deps = with_ses(fast, ses)
    await queue(deps, campaign.id)
    async with running(deps, feed=PAUSE_FEED, concurrency=CONCURRENCY):
        await wait_until(lambda: _at_least(deps, campaign.id, 40))
        async with deps.sessionmaker() as session, session.begin():
            await action(session, await load_campaign(deps, campaign.id))
        acted_at = time.monotonic()
        await asyncio.sleep(2)
    return deps, ses, campaign, [t for t in ses.started if t > acted_at]


async def test_pause_stops_new_ses_calls_beyond_the_parts_in_flight_and_resume_sends_the_rest_once(
    fast: WorkerDeps, tenant: Tenant, aws_endpoint: str
) -> None:
    deps, ses, campaign, after_pause = await interrupt_mid_send(fast, tenant, campaigns.pause)
    # At most the parts already claimed: one part (≤ batch size) per concurrent record.
    assert len(after_pause) <= CONCURRENCY * PAUSE_FEED.batch_size
    sent_while_paused = await sent_count(deps, campaign.id)
    assert sent_while_paused < 300
    assert (await load_campaign(deps, campaign.id)).status == "paused"
    async with deps.sessionmaker() as session:
        pending = await session.scalar(
            text("SELECT count(*) FROM campaign_recipients WHERE campaign_id = :id AND status = 'pending'"),
            {"id": campaign.id},
        )
    assert pending == 300 - sent_while_paused  # nothing stuck in `sending`

    async with deps.sessionmaker() as session, session.begin():
        await campaigns.resume(session, await load_campaign(deps, campaign.id))
    async with running(deps, feed=PAUSE_FEED, concurrency=CONCURRENCY):
        await wait_for_status(deps, campaign.id, "sent")
    sends = sends_by_recipient(aws_endpoint)
    assert len(sends) == 300
    assert set(sends.values()) == {1}
    assert len(ses.started) == 300
    kept, recount = await counters_and_recount(deps, campaign.id)
    assert kept == recount
    assert kept["sent_count"] == 300


async def _at_least(deps: WorkerDeps, campaign_id: int, n: int) -> bool:
    return await sent_count(deps, campaign_id) >= n


async def test_cancel_during_the_send_sends_nothing_more(
    fast: WorkerDeps, tenant: Tenant, aws_endpoint: str
) -> None:
    async def cancel(session: AsyncSession, campaign: Campaign) -> None:
        await campaigns.cancel(session, campaign, skip_now=10_000)

    deps, ses, campaign, after_cancel = await interrupt_mid_send(fast, tenant, cancel)
    assert len(after_cancel) <= CONCURRENCY * PAUSE_FEED.batch_size
    rows = await recipient_rows(deps, campaign.id)
    statuses = {(row.status, row.skip_reason) for row in rows}
    assert statuses <= {("sent", None), ("skipped", "campaign_cancelled")}
    sent = sum(1 for row in rows if row.status == "sent")
    assert sum(sends_by_recipient(aws_endpoint).values()) == sent == len(ses.started)
    assert (await load_campaign(deps, campaign.id)).status == "cancelled"
    kept, recount = await counters_and_recount(deps, campaign.id)
    assert kept == recount
    assert kept["skipped_count"] == 300 - sent


async def test_a_duplicate_batch_sends_nothing_twice(
    fast: WorkerDeps, tenant: Tenant, aws_endpoint: str
) -> None:
    campaign, _ = await snapshotted(fast, tenant, 5)
    ids = [row.id for row in await recipient_rows(fast, campaign.id)]
    message = CampaignEmailV1(campaign_id=campaign.id, batch_id=f"campaign-{campaign.id}-batch-0001",
                              campaign_recipient_ids=tuple(ids))  # fmt: skip
    await asyncio.gather(*(handle_campaign_email(message, fast) for _ in range(3)))
    await handle_campaign_email(message, fast)
    sends = sends_by_recipient(aws_endpoint)
    assert len(sends) == 5
    assert set(sends.values()) == {1}
    kept, recount = await counters_and_recount(fast, campaign.id)
    assert kept == recount
    assert kept["sent_count"] == 5


async def test_an_expired_lease_fails_as_outcome_unknown_and_retry_failed_sends_it_once(
    fast: WorkerDeps, tenant: Tenant, aws_endpoint: str
) -> None:
    campaign, _ = await snapshotted(fast, tenant, 4)
    rows = await recipient_rows(fast, campaign.id)
    dead = rows[0].id
    async with fast.sessionmaker() as session, session.begin():  # a worker claimed it, then died
        await session.execute(
            text("UPDATE campaign_recipients SET status = 'sending', lease_owner = 'dead',"
                 " lease_expires_at = now() - interval '1 second' WHERE id = :id"), {"id": dead},
        )  # fmt: skip
    assert await expire_campaign_leases(fast) == 1
    async with running(fast):
        await wait_for_status(fast, campaign.id, "sent")
    by_id = {row.id: row for row in await recipient_rows(fast, campaign.id)}
    assert (by_id[dead].status, by_id[dead].skip_reason) == ("failed", "send_outcome_unknown")
    assert sum(sends_by_recipient(aws_endpoint).values()) == 3
    kept, recount = await counters_and_recount(fast, campaign.id)
    assert kept == recount
    assert (kept["sent_count"], kept["failed_count"]) == (3, 1)

    async with fast.sessionmaker() as session, session.begin():
        assert await campaigns.retry_failed(session, campaign.id) == 1
    async with running(fast):
        await wait_for_status(fast, campaign.id, "sent")
    sends = sends_by_recipient(aws_endpoint)
    assert len(sends) == 4
    assert set(sends.values()) == {1}
    kept, recount = await counters_and_recount(fast, campaign.id)
    assert kept == recount
    assert (kept["sent_count"], kept["failed_count"]) == (4, 0)


async def test_ses_errors_fail_permanently_or_retry_without_losing_anyone(
    fast: WorkerDeps, tenant: Tenant, aws_endpoint: str
) -> None:
    await add_groups(fast, tenant, {"all": Group(6)})
    campaign = await new_campaign(fast, tenant)
    await queue(fast, campaign.id)
    throttled = with_ses(fast, FailingSes(fast.sesv2, "TooManyRequestsException", times=3, status=429))
    async with running(throttled):
        await wait_for_status(throttled, campaign.id, "sent")
    sends = sends_by_recipient(aws_endpoint)
    assert len(sends) == 6
    assert set(sends.values()) == {1}

    other = await new_campaign(fast, tenant, key="rejected")
    await queue(fast, other.id)
    rejected = with_ses(fast, FailingSes(fast.sesv2, "MessageRejected", times=100))
    async with running(rejected):
        await wait_for_status(rejected, other.id, "sent")
    rows = await recipient_rows(fast, other.id)
    assert {(row.status, row.skip_reason) for row in rows} == {("failed", "MessageRejected")}
    kept, recount = await counters_and_recount(fast, other.id)
    assert kept == recount
    assert kept["failed_count"] == 6
