"""Double opt-in: the API sends the client's template with `verify_url`; the link
confirms the pending subscription once; an unknown, used or expired link changes nothing."""

import re

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.api.transactional_factories import put_template
from tests.factories import Tenant, TenantFactory

VERIFY = "/api/subscriptions/verification-email"


@pytest.fixture
async def tenant(tenants: TenantFactory) -> Tenant:
    return await tenants.create()


async def subscription(session: AsyncSession, tenant: Tenant, email: str) -> tuple[str, object]:
    row = (
        await session.execute(
            text(
                "SELECT s.status, s.verified_at FROM subscriptions s JOIN contacts c ON c.id = s.contact_id"
                " WHERE c.normalized_email = :e AND s.client_id = :c"
            ),
            {"e": email, "c": tenant.scope.client.id},
        )
    ).one()
    return row.status, row.verified_at


async def request_link(api: httpx.AsyncClient, tenant: Tenant, session: AsyncSession) -> str:
    await put_template(
        api, tenant, "confirm", subject="Confirm", text_body="Confirm: {{ verify_url }}", html_body=None,
        required_context=["verify_url"],
    )  # fmt: skip
    body = {"email": "ada@example.com", "audience": tenant.audience_slug, "client": tenant.client_slug}
    response = await api.post(VERIFY, json={**body, "template_key": "confirm"}, headers=tenant.headers)
    assert response.status_code == 202, response.text
    stored = await session.scalar(
        text("SELECT text_body FROM transactional_messages WHERE id = :id"),
        {"id": response.json()["message"]["id"]},
    )
    match = re.search(r"/verify/([A-Za-z0-9_-]+)", stored or "")
    assert match is not None
    return match.group(1)


async def test_the_link_confirms_the_pending_subscription_once(
    api: httpx.AsyncClient, pages: httpx.AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    token = await request_link(api, tenant, session)
    assert await subscription(session, tenant, "ada@example.com") == ("pending", None)
    stored = await session.scalar(text("SELECT token_hash FROM subscription_verifications"))
    assert stored is not None
    assert token not in stored

    confirmed = await pages.get(f"/verify/{token}")
    assert confirmed.status_code == 200
    assert "Subscription confirmed" in confirmed.text
    status, verified_at = await subscription(session, tenant, "ada@example.com")
    assert status == "subscribed"
    assert verified_at is not None
    events = await session.scalar(text("SELECT count(*) FROM email_events WHERE event_type = 'subscribe'"))
    assert events == 1

    again = await pages.get(f"/verify/{token}")
    assert again.status_code == 410
    assert "already used" in again.text
    assert await session.scalar(text("SELECT count(*) FROM email_events WHERE event_type = 'subscribe'")) == 1
    repeat = await api.post(
        VERIFY,
        json={"email": "ada@example.com", "audience": tenant.audience_slug, "client": tenant.client_slug,
              "template_key": "confirm"},
        headers=tenant.headers,
    )  # fmt: skip
    assert repeat.status_code == 409
    assert repeat.json()["error"]["code"] == "already_verified"


async def test_an_expired_or_unknown_link_changes_nothing(
    api: httpx.AsyncClient, pages: httpx.AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    token = await request_link(api, tenant, session)
    await session.execute(
        text("UPDATE subscription_verifications SET expires_at = now() - interval '1 second'")
    )
    await session.commit()

    expired = await pages.get(f"/verify/{token}")
    assert expired.status_code == 410
    assert "expired" in expired.text
    unknown = await pages.get("/verify/not-a-real-token")
    assert unknown.status_code == 404
    assert await subscription(session, tenant, "ada@example.com") == ("pending", None)


async def test_an_unknown_template_writes_nothing(
    api: httpx.AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    body = {"email": "bob@example.com", "audience": tenant.audience_slug, "client": tenant.client_slug}
    response = await api.post(VERIFY, json={**body, "template_key": "missing"}, headers=tenant.headers)
    assert response.status_code == 404
    assert await session.scalar(text("SELECT count(*) FROM subscription_verifications")) == 0
    assert (
        await session.scalar(text("SELECT count(*) FROM contacts WHERE normalized_email = 'bob@example.com'"))
        == 0
    )
