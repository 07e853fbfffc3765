"""The `email-events` handler on a real PostgreSQL: opens and clicks applied once per
event, unique figures once per recipient, machine opens flagged and kept out of the
human figure, and the kept counters always equal to a recount from the rows. The last
test goes the whole way: a campaign sent through moto, its pixel and link fetched from
the tracking app, the events consumed from moto's SQS by the poller."""

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, text

from datamailer_core.contracts import EmailEventV1, dump_message
from datamailer_core.models import Campaign, CampaignRecipient, EmailEvent
from datamailer_core.models.campaigns import COUNTERS
from datamailer_core.repositories import campaigns
from datamailer_core.security import hash_token, new_token
from datamailer_workers.deps import WorkerDeps, open_deps
from datamailer_workers.handlers.events import apply_email_event, handle_email_event
from tests.api.campaign_factories import Group, builder, create_campaign
from tests.factories import TenantFactory
from tests.tracking.helpers import IPHONE_SAFARI, tracking
from tests.workers.campaign_helpers import (
    counters_and_recount,
    queue,
    raw_messages,
    running,
    sending_tenant,
    wait_for_status,
)
from tests.workers.conftest import WorkerEnv
from tests.workers.helpers import queue_depth, run_poller_until, send_raw

SECRET = "test-secret-key"
SENT_AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LATER = SENT_AT + timedelta(hours=3)
LINK = "https://shop.example.com/sale"


async def sent_campaign(deps: WorkerDeps, recipients: int) -> tuple[int, list[str]]:
    """A `sending` campaign whose recipients were sent at SENT_AT; returns its id and
    the tracking token each recipient's message carried."""
    async with deps.sessionmaker() as session:
        tenant = await TenantFactory(session, SECRET).create()
        campaign = await create_campaign(session, tenant, "dec", status="sending")
        tokens = [new_token() for _ in range(recipients)]
        for n, token in enumerate(tokens):
            await session.execute(
                text(
                    "INSERT INTO campaign_recipients"
                    " (campaign_id, email, status, tracking_token_hash, unsubscribe_token_hash, sent_at)"
                    " VALUES (:c, :e, 'sent', :t, :u, :s)"
                ),
                {
                    "c": campaign.id,
                    "e": f"r{n}@example.com",
                    "t": hash_token(SECRET, token),
                    "u": hash_token(SECRET, new_token()),
                    "s": SENT_AT,
                },
            )
        await campaigns.recompute_counters(session, campaign.id)
        await session.commit()
    return campaign.id, tokens


def event(
    kind: str,
    token: str,
    *,
    at: datetime = LATER,
    user_agent: str | None = IPHONE_SAFARI,
    ip: str = "198.51.100.20",
    url: str | None = None,
) -> EmailEventV1:
    event_id = uuid.uuid4().hex
    metadata: dict[str, Any] = {"ip": ip}
    if user_agent is not None:
        metadata["user_agent"] = user_agent
    return EmailEventV1.model_validate(
        {
            "event_id": event_id,
            "event_type": kind,
            "occurred_at": at,
            "idempotency_key": event_id,
            "tracking_token": token,
            "url": url if url is not None else (LINK if kind == "click" else None),
            "metadata": metadata,
        }
    )


async def counters(deps: WorkerDeps, campaign_id: int) -> dict[str, int]:
    async with deps.sessionmaker() as session:
        campaign = await session.get(Campaign, campaign_id, populate_existing=True)
    assert campaign is not None
    return {name: getattr(campaign, name) for name in COUNTERS}


async def recipient(deps: WorkerDeps, token: str) -> CampaignRecipient:
    async with deps.sessionmaker() as session:
        found = await session.scalar(
            select(CampaignRecipient).where(
                CampaignRecipient.tracking_token_hash == hash_token(SECRET, token)
            )
        )
    assert found is not None
    return found


async def events_of(deps: WorkerDeps, campaign_id: int) -> list[EmailEvent]:
    async with deps.sessionmaker() as session:
        rows = await session.scalars(
            select(EmailEvent).where(EmailEvent.campaign_id == campaign_id).order_by(EmailEvent.id)
        )
        return list(rows.all())


async def assert_counters_agree_with_recount(deps: WorkerDeps, campaign_id: int) -> None:
    kept, recounted = await counters_and_recount(deps, campaign_id)
    assert kept == recounted


def activity(figures: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in figures.items() if "open" in k or "click" in k}


async def test_repeated_opens_and_clicks_count_every_time_in_totals_and_once_in_uniques(
    deps: WorkerDeps,
) -> None:
    campaign_id, (ada, bob, _) = await sent_campaign(deps, 3)
    for n in range(3):
        await handle_email_event(event("open", ada, at=LATER + timedelta(minutes=n)), deps)
    await handle_email_event(event("open", bob), deps)
    await handle_email_event(event("click", ada), deps)
    await handle_email_event(event("click", ada, at=LATER + timedelta(minutes=5), url=LINK + "?again"), deps)
    await handle_email_event(event("click", bob), deps)

    assert activity(await counters(deps, campaign_id)) == {
        "open_count": 4,
        "unique_open_count": 2,
        "unique_human_open_count": 2,
        "click_count": 3,
        "unique_click_count": 2,
    }
    first = await recipient(deps, ada)
    assert (first.open_count, first.click_count) == (3, 2)
    assert first.first_opened_at == first.first_human_opened_at == LATER
    assert first.first_clicked_at == LATER
    rows = await events_of(deps, campaign_id)
    assert [e.event_type for e in rows].count("open") == 4
    assert [e.url for e in rows if e.event_type == "click"] == [LINK, LINK + "?again", LINK]
    assert all(e.campaign_recipient_id is not None and e.client_id is not None for e in rows)
    assert rows[0].metadata_ == {"user_agent": IPHONE_SAFARI, "machine": False}  # the IP is not kept
    await assert_counters_agree_with_recount(deps, campaign_id)


@pytest.mark.parametrize("kind", ["open", "click"])
async def test_a_redelivered_event_changes_nothing(deps: WorkerDeps, kind: str) -> None:
    campaign_id, (token,) = await sent_campaign(deps, 1)
    message = event(kind, token)
    assert await apply_email_event(message, deps) == "recorded"
    once = await counters(deps, campaign_id)

    assert await apply_email_event(message, deps) == "duplicate"
    await handle_email_event(message, deps)

    assert await counters(deps, campaign_id) == once
    assert len(await events_of(deps, campaign_id)) == 1
    found = await recipient(deps, token)
    assert (found.open_count, found.click_count) == ((1, 0) if kind == "open" else (0, 1))
    await assert_counters_agree_with_recount(deps, campaign_id)


@pytest.mark.parametrize("kind", ["open", "click"])
async def test_an_unknown_token_changes_nothing(deps: WorkerDeps, kind: str) -> None:
    campaign_id, _ = await sent_campaign(deps, 2)
    before = await counters(deps, campaign_id)

    assert await apply_email_event(event(kind, new_token()), deps) == "unknown_token"

    assert await counters(deps, campaign_id) == before
    async with deps.sessionmaker() as session:
        assert await session.scalar(text("SELECT count(*) FROM email_events")) == 0


MACHINE_OPENS: dict[str, tuple[dict[str, Any], str]] = {
    "apple_mpp_bare_agent": ({"user_agent": "Mozilla/5.0"}, "apple_mpp"),
    "apple_mpp_address": ({"ip": "17.58.63.2"}, "apple_mpp"),
    "gmail_proxy": (
        {"user_agent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"},
        "google_image_proxy",
    ),
    "yahoo_proxy": ({"user_agent": "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"},
                    "yahoo_image_proxy"),
    "prefetch_at_send": ({"at": SENT_AT + timedelta(seconds=1)}, "prefetch"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MACHINE_OPENS))
async def test_a_machine_open_is_flagged_and_left_out_of_human_unique_opens(
    deps: WorkerDeps, case: str
) -> None:
    overrides, reason = MACHINE_OPENS[case]
    campaign_id, (token,) = await sent_campaign(deps, 1)

    await handle_email_event(event("open", token, **overrides), deps)

    assert activity(await counters(deps, campaign_id)) == {
        "open_count": 1,
        "unique_open_count": 1,
        "unique_human_open_count": 0,
        "click_count": 0,
        "unique_click_count": 0,
    }
    [row] = await events_of(deps, campaign_id)
    assert row.metadata_["machine"] is True
    assert row.metadata_["machine_reason"] == reason
    found = await recipient(deps, token)
    assert found.first_opened_at is not None
    assert found.first_human_opened_at is None
    await assert_counters_agree_with_recount(deps, campaign_id)

    # The person opens it later: now a human open too, still one unique opener.
    await handle_email_event(event("open", token, at=LATER + timedelta(days=1)), deps)
    figures = await counters(deps, campaign_id)
    assert (figures["open_count"], figures["unique_open_count"], figures["unique_human_open_count"]) == (
        2,
        1,
        1,
    )
    assert (await recipient(deps, token)).first_human_opened_at == LATER + timedelta(days=1)
    await assert_counters_agree_with_recount(deps, campaign_id)


async def test_concurrent_opens_of_one_recipient_make_one_unique_open(deps: WorkerDeps) -> None:
    campaign_id, (token,) = await sent_campaign(deps, 1)

    await asyncio.gather(*(handle_email_event(event("open", token), deps) for _ in range(8)))

    figures = await counters(deps, campaign_id)
    assert (figures["open_count"], figures["unique_open_count"], figures["unique_human_open_count"]) == (
        8,
        1,
        1,
    )
    assert (await recipient(deps, token)).open_count == 8
    await assert_counters_agree_with_recount(deps, campaign_id)


async def test_unsubscribe_events_are_acknowledged_without_a_change(deps: WorkerDeps) -> None:
    campaign_id, (token,) = await sent_campaign(deps, 1)
    before = await counters(deps, campaign_id)

    assert await apply_email_event(event("unsubscribe", token), deps) == "ignored"

    assert await counters(deps, campaign_id) == before
    assert await events_of(deps, campaign_id) == []


def links_of(html: str) -> tuple[str, list[str]]:
    """The pixel URL and the click URLs of a sent message's HTML."""
    pixel = re.search(r'<img src="([^"]+/t/o/[^"]+\.gif)"', html)
    assert pixel is not None
    clicks = [unescape(href) for href in re.findall(r'href="([^"]+/t/c/[^"]+)"', html)]
    return pixel.group(1), clicks


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


async def test_a_sent_campaign_opened_and_clicked_through_the_tracking_service(worker_env: WorkerEnv) -> None:
    settings = worker_env.settings(SES_MAX_SEND_RATE="500", PUBLIC_BASE_URL="https://mail.example.com")
    async with open_deps(settings) as deps:
        tenant = await sending_tenant(deps)
        async with deps.sessionmaker() as session:
            await builder(session, tenant).add(Group(2, tags=["customers"]))
            await session.commit()
            html = '<p>Hi</p><p><a href="https://shop.example.com/sale?a=1&amp;b=2">Sale</a></p>'
            campaign = await create_campaign(session, tenant, "dec", sender_id="news", html_body=html)
        await queue(deps, campaign.id)
        async with running(deps):
            await wait_for_status(deps, campaign.id, "sent")
        [first, second] = [m.get_body(("html",)) for m in raw_messages(worker_env.aws_endpoint)]
        assert first is not None
        assert second is not None
        pixel, [click] = links_of(first.get_content())
        other_pixel, _ = links_of(second.get_content())

        # Read an hour after sending (an open within seconds of it is a prefetch).
        async with deps.sessionmaker() as session, session.begin():
            await session.execute(
                text("UPDATE campaign_recipients SET sent_at = sent_at - interval '1 hour'")
            )
        async with tracking(settings) as http:
            for url in (pixel, pixel, other_pixel):
                assert (
                    await http.get(path_of(url), headers={"User-Agent": IPHONE_SAFARI})
                ).status_code == 200
            redirect = await http.get(path_of(click), headers={"User-Agent": IPHONE_SAFARI})
            assert redirect.status_code == 302
            assert redirect.headers["location"] == "https://shop.example.com/sale?a=1&b=2"
            forged = await http.get(path_of(click).replace("sale", "evil"))
            assert forged.status_code == 400

        async def applied() -> bool:
            figures = await counters(deps, campaign.id)
            return (figures["open_count"], figures["click_count"]) == (3, 1)

        await run_poller_until(deps, applied, queue="email-events")
        once = await counters(deps, campaign.id)
        # The stopped poller's cancelled long poll may still take a message server-side.
        await asyncio.sleep(1.5)

        # The click delivered again (same idempotency key), and an unknown token: both
        # consumed, neither changes anything.
        async with deps.sessionmaker() as session:
            key = await session.scalar(
                text("SELECT provider_event_id FROM email_events WHERE event_type = 'click'")
            )
        assert key is not None
        assert key.startswith("email-events:")
        token = urlsplit(click).path.rsplit("/", 1)[1]
        again = event("click", token).model_copy(
            update={"idempotency_key": key.removeprefix("email-events:")}
        )
        await send_raw(deps, dump_message(again), queue="email-events")
        await send_raw(deps, dump_message(event("open", new_token())), queue="email-events")

        async def consumed() -> bool:
            return await queue_depth(deps, "email-events") == 0

        await run_poller_until(deps, consumed, queue="email-events")
        assert await counters(deps, campaign.id) == once
        kinds = [e.event_type for e in await events_of(deps, campaign.id)]
        assert (kinds.count("open"), kinds.count("click")) == (3, 1)
        await assert_counters_agree_with_recount(deps, campaign.id)

    assert activity(once) == {
        "open_count": 3,
        "unique_open_count": 2,
        "unique_human_open_count": 2,
        "click_count": 1,
        "unique_click_count": 1,
    }
