"""Pause, resume, cancel, the recipient listing and the counters over the API. The
snapshot is run the way the scheduler runs it, in the test's transaction."""

from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from datamailer_core.campaigns.snapshot import run_snapshot
from datamailer_core.repositories import campaigns
from tests.api.campaign_factories import (
    CAMPAIGNS,
    Group,
    builder,
    put_campaign,
    recipient_states,
    set_recipient_status,
)
from tests.factories import Tenant, TenantFactory


@pytest.fixture
async def tenant(tenants: TenantFactory) -> Tenant:
    return await tenants.create()


async def post(api: AsyncClient, tenant: Tenant, action: str, key: str = "nov") -> Any:
    return await api.post(f"{CAMPAIGNS}/{key}/{action}", headers=tenant.headers)


async def queued_with_recipients(
    api: AsyncClient,
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant: Tenant,
    eligible: int = 30,
    unverified: int = 5,
) -> int:
    audience = builder(session, tenant)
    await audience.add(Group(eligible))
    await audience.add(Group(unverified, verified_at=None))
    await session.commit()
    campaign_id = int((await put_campaign(api, tenant)).json()["campaign"]["id"])
    assert (await post(api, tenant, "queue")).status_code == 202
    await run_snapshot(sessionmaker, campaign_id)
    return campaign_id


async def test_pause_and_resume_follow_the_lifecycle(api: AsyncClient, tenant: Tenant) -> None:
    await put_campaign(api, tenant)
    draft_pause = await post(api, tenant, "pause")
    assert draft_pause.status_code == 409
    assert draft_pause.json()["error"]["code"] == "not_pausable"
    assert (await post(api, tenant, "resume")).json()["error"]["code"] == "not_resumable"

    await post(api, tenant, "queue")
    paused = await post(api, tenant, "pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["campaign"]["status"] == "paused"
    assert (await post(api, tenant, "pause")).json()["campaign"]["status"] == "paused"
    assert (await post(api, tenant, "queue")).json()["campaign"]["status"] == "paused"

    resumed = await post(api, tenant, "resume")
    assert resumed.status_code == 200
    # The snapshot had not finished: it continues.
    assert resumed.json()["campaign"]["status"] == "snapshotting"
    assert (await post(api, tenant, "resume")).json()["campaign"]["status"] == "snapshotting"


async def test_resume_returns_a_paused_scheduled_campaign_to_its_schedule(
    api: AsyncClient, tenant: Tenant
) -> None:
    await put_campaign(api, tenant, scheduled_at="2999-01-01T00:00:00Z")
    await post(api, tenant, "queue")
    await post(api, tenant, "pause")
    assert (await post(api, tenant, "resume")).json()["campaign"]["status"] == "scheduled"


async def test_resume_after_the_snapshot_sends_and_restarts_the_feed_from_pending(
    api: AsyncClient,
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant: Tenant,
) -> None:
    campaign_id = await queued_with_recipients(api, session, sessionmaker, tenant)
    await session.execute(
        text("UPDATE campaigns SET enqueue_cursor = 999999, batch_count = 3 WHERE id = :id"),
        {"id": campaign_id},
    )
    await session.commit()
    await post(api, tenant, "pause")

    resumed = (await post(api, tenant, "resume")).json()["campaign"]

    assert resumed["status"] == "sending"
    assert resumed["progress"]["batch_count"] == 3
    found = await campaigns.get_campaign_by_id(session, campaign_id)
    assert found is not None
    assert found.enqueue_cursor == 0


async def test_cancel_skips_pending_recipients_and_keeps_the_rest(
    api: AsyncClient,
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant: Tenant,
) -> None:
    campaign_id = await queued_with_recipients(api, session, sessionmaker, tenant)
    pending = [
        row.id
        for row in await campaigns.list_recipients(
            session, campaign_id, status="pending", limit=100, after_id=None
        )
    ]
    await set_recipient_status(session, campaign_id, "sent", pending[:10], sent_at=None)
    await set_recipient_status(session, campaign_id, "sending", pending[10:12])

    response = await post(api, tenant, "cancel")

    assert response.status_code == 200, response.text
    campaign = response.json()["campaign"]
    assert campaign["status"] == "cancelled"
    assert campaign["cancelled_at"] is not None
    states = list((await recipient_states(session, campaign_id)).values())
    assert states.count(("sent", None)) == 10
    assert states.count(("sending", None)) == 2
    assert states.count(("skipped", "campaign_cancelled")) == 18
    assert states.count(("skipped", "unverified")) == 5
    assert campaign["counters"]["skipped_count"] == 23
    again = await post(api, tenant, "cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_cancellable"
    assert (await post(api, tenant, "resume")).status_code == 409


async def test_a_sent_campaign_cannot_be_cancelled(
    api: AsyncClient, session: AsyncSession, tenant: Tenant
) -> None:
    campaign_id = int((await put_campaign(api, tenant)).json()["campaign"]["id"])
    await session.execute(text("UPDATE campaigns SET status = 'sent' WHERE id = :id"), {"id": campaign_id})
    await session.commit()

    response = await post(api, tenant, "cancel")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_cancellable"


async def test_recipients_are_listed_by_status_page_after_page(
    api: AsyncClient,
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant: Tenant,
) -> None:
    await queued_with_recipients(api, session, sessionmaker, tenant, eligible=23, unverified=4)
    url = f"{CAMPAIGNS}/nov/recipients"
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"status": "pending", "limit": 10, **({"cursor": cursor} if cursor else {})}
        page = (await api.get(url, params=params, headers=tenant.headers)).json()
        seen.extend(page["recipients"])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert len(seen) == 23
    assert len({r["id"] for r in seen}) == 23
    assert [r["id"] for r in seen] == sorted(r["id"] for r in seen)
    assert {r["status"] for r in seen} == {"pending"}
    assert not {key for key in seen[0] if "token" in key or "lease" in key}
    skipped = (await api.get(url, params={"status": "skipped"}, headers=tenant.headers)).json()["recipients"]
    assert [r["skip_reason"] for r in skipped] == ["unverified"] * 4
    everyone = (await api.get(url, params={"limit": 500}, headers=tenant.headers)).json()
    assert len(everyone["recipients"]) == 27
    assert everyone["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"status": "lost"}, {"status": "invalid"}),
        ({"limit": 0}, {"limit": "invalid"}),
        ({"limit": 501}, {"limit": "invalid"}),
        ({"cursor": "not-a-cursor"}, {"cursor": "invalid"}),
        ({"cursor": "WzAsIDFd"}, {"cursor": "invalid"}),
    ],
)
async def test_bad_recipient_listing_parameters_are_400(
    api: AsyncClient, tenant: Tenant, params: dict[str, Any], fields: dict[str, str]
) -> None:
    await put_campaign(api, tenant)
    response = await api.get(f"{CAMPAIGNS}/nov/recipients", params=params, headers=tenant.headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["fields"] == fields


async def test_counters_and_rates_come_from_the_rows(
    api: AsyncClient,
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant: Tenant,
) -> None:
    campaign_id = await queued_with_recipients(api, session, sessionmaker, tenant, eligible=10, unverified=2)
    ids = [
        r.id
        for r in await campaigns.list_recipients(
            session, campaign_id, status="pending", limit=100, after_id=None
        )
    ]
    await set_recipient_status(session, campaign_id, "sent", ids, sent_at=None)
    await session.execute(
        text("UPDATE campaign_recipients SET sent_at = now() WHERE id = ANY(:ids)"), {"ids": ids}
    )
    # Four recipients opened (one of them three times), two clicked, one bounced, one unsubscribed.
    for rid, kind in [
        (ids[0], "open"),
        (ids[0], "open"),
        (ids[0], "open"),
        (ids[1], "open"),
        (ids[2], "open"),
    ]:
        await add_event(session, campaign_id, rid, kind)
    await session.execute(
        text("UPDATE campaign_recipients SET first_opened_at = now() WHERE id = :id"), {"id": ids[3]}
    )
    await add_event(session, campaign_id, ids[0], "click")
    await add_event(session, campaign_id, ids[1], "click")
    await session.execute(
        text("UPDATE campaign_recipients SET status = 'bounced', bounced_at = now() WHERE id = :id"),
        {"id": ids[4]},
    )
    await session.execute(
        text(
            "UPDATE campaign_recipients SET status = 'unsubscribed', unsubscribed_at = now() WHERE id = :id"
        ),
        {"id": ids[5]},
    )
    async with sessionmaker() as s, s.begin():
        await campaigns.recompute_counters(s, campaign_id)

    campaign = (await api.get(f"{CAMPAIGNS}/nov", headers=tenant.headers)).json()["campaign"]

    assert campaign["counters"] == {
        "recipient_count": 12,
        "sent_count": 10,
        "skipped_count": 2,
        "failed_count": 0,
        "delivered_count": 0,
        "open_count": 5,
        "unique_open_count": 4,
        # The three with an unflagged open event; the fourth has only `first_opened_at`.
        "unique_human_open_count": 3,
        "click_count": 2,
        "unique_click_count": 2,
        "unsubscribe_count": 1,
        "bounce_count": 1,
        "complaint_count": 0,
    }
    assert campaign["rates"] == {
        "open_rate": 0.4,
        "click_rate": 0.2,
        "click_to_open_rate": 0.5,
        "bounce_rate": 0.1,
        "unsubscribe_rate": 0.1,
    }
    assert campaign["progress"]["snapshot_completed"] is True
    assert campaign["progress"]["snapshot_percent"] == 100.0


async def add_event(session: AsyncSession, campaign_id: int, recipient_id: int, kind: str) -> None:
    await session.execute(
        text(
            "INSERT INTO email_events (event_type, campaign_id, campaign_recipient_id)"
            " VALUES (:kind, :cid, :rid)"
        ),
        {"kind": kind, "cid": campaign_id, "rid": recipient_id},
    )
    await session.commit()


async def test_a_campaign_that_paused_itself_shows_why_until_resumed(
    api: AsyncClient, session: AsyncSession, tenant: Tenant
) -> None:
    campaign_id = int((await put_campaign(api, tenant)).json()["campaign"]["id"])
    draft = (await api.get(f"{CAMPAIGNS}/nov", headers=tenant.headers)).json()["campaign"]
    assert draft["paused_reason"] is None
    await post(api, tenant, "queue")
    await session.execute(
        text(
            "UPDATE campaigns SET status = 'paused', paused_reason = 'complaint_rate_exceeded' WHERE id = :id"
        ),
        {"id": campaign_id},
    )
    await session.commit()

    shown = (await api.get(f"{CAMPAIGNS}/nov", headers=tenant.headers)).json()["campaign"]
    assert (shown["status"], shown["paused_reason"]) == ("paused", "complaint_rate_exceeded")
    resumed = (await post(api, tenant, "resume")).json()["campaign"]
    assert (resumed["status"], resumed["paused_reason"]) == ("snapshotting", None)


async def test_a_sent_campaign_that_reached_nobody_says_why(
    api: AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    campaign_id = await queued_with_recipients(api, session, sessionmaker, tenant, eligible=0, unverified=3)
    async with sessionmaker() as other, other.begin():
        assert await campaigns.finish_if_done(other, campaign_id)

    campaign = (await api.get(f"{CAMPAIGNS}/nov", headers=tenant.headers)).json()["campaign"]

    assert campaign["status"] == "sent"
    assert campaign["counters"]["sent_count"] == 0
    assert campaign["counters"]["skipped_count"] == 3
    assert campaign["outcome"] == "no_eligible_recipients"
    assert campaign["warning"] == "no eligible recipients: 3 skipped unverified"


async def test_a_sent_campaign_that_reached_someone_has_no_warning(
    api: AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession], tenant: Tenant
) -> None:
    campaign_id = await queued_with_recipients(api, session, sessionmaker, tenant, eligible=2, unverified=1)
    before = (await api.get(f"{CAMPAIGNS}/nov", headers=tenant.headers)).json()["campaign"]
    assert before["outcome"] is None
    await set_recipient_status(session, campaign_id, "sent", ids=None)
    await session.execute(
        text("UPDATE campaigns SET status = 'sent', sent_count = 3 WHERE id = :id"), {"id": campaign_id}
    )
    await session.commit()

    campaign = (await api.get(f"{CAMPAIGNS}/nov", headers=tenant.headers)).json()["campaign"]

    assert campaign["outcome"] == "sent"
    assert campaign["warning"] is None
