"""Campaigns targeting a recipient list (`recipient_list_key`): the snapshot takes the
active members of the list's subtree (every list for `<all>`), tag filters on top; a key
that is not a list of this client and audience is a field error that writes nothing."""

from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from datamailer_core.campaigns.snapshot import run_snapshot
from tests.api.campaign_factories import CAMPAIGNS, campaign_body, put_campaign
from tests.api.contacts_factories import scoped, upsert
from tests.api.test_recipient_lists import BASE, put_member
from tests.factories import Tenant, TenantFactory


@pytest.fixture
async def tenant(tenants: TenantFactory) -> Tenant:
    return await tenants.create()


async def build_lists(api: AsyncClient, tenant: Tenant) -> None:
    """Every contact verified, so a reached one is `pending`."""
    for email in ("y25@example.com", "cohort@example.com", "y24@example.com", "gone@example.com"):
        await upsert(api, tenant, email, verified=True, status="subscribed")
    await upsert(api, tenant, "churned@example.com", verified=True, status="subscribed", tags=["churned"])
    await upsert(api, tenant, "nolist@example.com", verified=True, status="subscribed")
    await put_member(api, tenant, "course:2025", "r:1", "y25@example.com")
    await put_member(api, tenant, "course:2025:cohort-a", "r:2", "cohort@example.com")
    await put_member(api, tenant, "course:2024", "r:3", "y24@example.com")
    await put_member(api, tenant, "course:2025", "r:4", "churned@example.com")
    await put_member(api, tenant, "course:2025:cohort-a", "r:5", "gone@example.com")
    await put_member(api, tenant, "course:2025:cohort-a", "r:5", "gone@example.com", status="removed")


async def reached(
    api: AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    session: AsyncSession,
    tenant: Tenant,
    key: str,
) -> dict[str, str]:
    queued = await api.post(f"{CAMPAIGNS}/{key}/queue", json=scoped(tenant), headers=tenant.headers)
    assert queued.status_code == 202, queued.text
    campaign_id = queued.json()["campaign"]["id"]
    await run_snapshot(sessionmaker, campaign_id, chunk=2)  # many statements over the id range
    rows = await session.execute(
        text(
            "SELECT email, COALESCE(skip_reason, status) AS status FROM campaign_recipients WHERE campaign_id = :id"
        ),
        {"id": campaign_id},
    )
    return {row.email: row.status for row in rows}


async def test_a_list_campaign_reaches_the_active_members_of_the_subtree_minus_excluded_tags(
    api: AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], session: AsyncSession, tenant: Tenant
) -> None:
    await build_lists(api, tenant)

    response = await put_campaign(
        api, tenant, "y25", recipient_list_key="course:2025", exclude_tags=["churned"]
    )
    assert response.json()["campaign"]["recipient_list_key"] == "course:2025"
    got = await api.get(f"{CAMPAIGNS}/y25", params=scoped(tenant), headers=tenant.headers)
    assert got.json()["campaign"]["recipient_list_key"] == "course:2025"

    assert await reached(api, sessionmaker, session, tenant, "y25") == {
        "y25@example.com": "pending",
        "cohort@example.com": "pending",
    }


async def test_all_reaches_every_list_member_and_no_key_the_whole_audience(
    api: AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], session: AsyncSession, tenant: Tenant
) -> None:
    await build_lists(api, tenant)
    await put_campaign(api, tenant, "all", recipient_list_key="<all>")
    await put_campaign(api, tenant, "audience")

    listed = {"y25@example.com", "cohort@example.com", "y24@example.com", "churned@example.com"}
    assert set(await reached(api, sessionmaker, session, tenant, "all")) == listed
    everyone = await reached(api, sessionmaker, session, tenant, "audience")
    assert set(everyone) == listed | {"gone@example.com", "nolist@example.com"}


async def test_a_key_can_be_cleared_and_the_campaign_shows_null(api: AsyncClient, tenant: Tenant) -> None:
    await put_member(api, tenant, "course:2025", "r:1", "y25@example.com")
    await put_campaign(api, tenant, "nov", recipient_list_key="course:2025")
    response = await put_campaign(api, tenant, "nov")
    assert response.json()["campaign"]["recipient_list_key"] is None


async def campaign_rows(session: AsyncSession) -> list[Any]:
    rows = await session.execute(text("SELECT external_key, recipient_list_key FROM campaigns ORDER BY 1"))
    return [tuple(row) for row in rows]


async def test_a_missing_or_another_clients_list_is_a_field_error_that_writes_nothing(
    api: AsyncClient, tenants: TenantFactory, session: AsyncSession
) -> None:
    a = await tenants.create(client="client-a")
    b = await tenants.create(client="client-b")
    c = await tenants.create(organization="other-org", audience="other-news", client="client-c")
    await put_member(api, b, "private:list", "r:1", "b@example.com")
    await put_member(api, c, "course:2025", "r:1", "c@example.com")
    await put_member(api, a, "course:2025", "r:1", "a@example.com")
    await put_campaign(api, a, "kept", recipient_list_key="course:2025")
    before = await campaign_rows(session)

    for key in ("course:2030", "private:list", "course:2025:"):
        for external_key in ("new", "kept"):
            response = await api.put(
                f"{CAMPAIGNS}/{external_key}",
                json=campaign_body(a, recipient_list_key=key),
                headers=a.headers,
            )
            assert response.status_code == 400, (key, response.text)
            assert response.json()["error"]["fields"] == {"recipient_list_key": "not_found"}
    # C's list has the same key, in another organization's audience: A's own list is used.
    assert await campaign_rows(session) == before == [("kept", "course:2025")]
    # B cannot target A's list by naming A's client either.
    as_a = campaign_body(a, recipient_list_key="course:2025")
    assert (await api.put(f"{CAMPAIGNS}/x", json=as_a, headers=b.headers)).status_code == 403
    assert (await api.get(f"{BASE}/private:list", params=scoped(a), headers=a.headers)).status_code == 404
