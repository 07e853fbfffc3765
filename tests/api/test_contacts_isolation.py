"""Client A's key never reads or changes client B's contacts, on any contacts route."""

from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncSession

from tests.api.contacts_factories import scoped, status, table_counts, upsert
from tests.factories import Tenant, TenantFactory


@pytest.fixture
async def pair(tenants: TenantFactory) -> tuple[Tenant, Tenant, Tenant]:
    """A and B share an organization and audience; C lives in another organization."""
    a = await tenants.create(client="client-a")
    b = await tenants.create(client="client-b")
    c = await tenants.create(organization="other-org", audience="other-news", client="client-c")
    return a, b, c


def _routes(b_id: int, a: Tenant, b: Tenant, c: Tenant) -> list[tuple[str, str, dict[str, Any], int]]:
    """(method, path, request kwargs, expected status) for A's key aimed at B's data."""
    as_b = scoped(b, email="b@example.com")
    other_audience = {"audience": c.audience_slug, "client": a.client_slug, "email": "b@example.com"}
    return [
        ("POST", "/api/contacts", {"json": {**as_b, "status": "unsubscribed"}}, 403),
        ("GET", "/api/contacts/status", {"params": as_b}, 403),
        ("PATCH", f"/api/contacts/{b_id}/verification", {"json": {"verified": False}}, 404),
        ("PATCH", f"/api/contacts/{b_id}/validation", {"json": {"status": "risky"}}, 404),
        ("PATCH", f"/api/contacts/{b_id}/suppression", {"json": {"hard_bounced": True}}, 404),
        (
            "PATCH",
            f"/api/contacts/{b_id}/suppression",
            {"json": {"hard_bounced": True, "client": "client-b"}},
            403,
        ),
        ("PUT", f"/api/contacts/{b_id}/tags", {"json": {"tags": []}}, 404),
        ("POST", f"/api/contacts/{b_id}/tags/vip", {}, 404),
        ("DELETE", f"/api/contacts/{b_id}/tags/b-tag", {}, 404),
        ("POST", "/api/subscriptions/subscribe", {"json": as_b}, 403),
        ("POST", "/api/subscriptions/unsubscribe", {"json": {**as_b, "scope": "global"}}, 403),
        ("GET", "/api/contacts/preferences", {"params": as_b}, 403),
        ("PUT", "/api/contacts/preferences", {"json": {**as_b, "categories": []}}, 403),
        ("POST", "/api/contacts/erase", {"json": as_b}, 403),
        ("POST", "/api/contacts/erase", {"json": scoped(a, email="b@example.com")}, 404),
        (
            "PUT",
            "/api/contacts/preferences",
            {"json": {**scoped(a, email="b@example.com"), "categories": []}},
            404,
        ),
        ("GET", f"/api/contacts/{b_id}/history", {}, 404),
        ("GET", "/api/contacts", {"params": scoped(b)}, 403),
        ("GET", "/api/contacts.csv", {"params": scoped(b)}, 403),
        (
            "POST",
            "/api/contacts/imports",
            {"json": {**scoped(b), "contacts": [{"email": "b@example.com"}]}},
            403,
        ),
        ("POST", "/api/contacts", {"json": {**other_audience, "status": "subscribed"}}, 400),
        ("GET", "/api/contacts", {"params": {"audience": c.audience_slug, "client": a.client_slug}}, 400),
    ]


async def test_a_key_never_touches_another_clients_contacts(
    api: AsyncClient, session: AsyncSession, pair: tuple[Tenant, Tenant, Tenant]
) -> None:
    a, b, c = pair
    b_contact = (await upsert(api, b, "b@example.com", status="subscribed", tags=["b-tag"])).json()
    before_counts = await table_counts(session)
    before_status = await status(api, b, "b@example.com")
    for method, path, kwargs, expected in _routes(b_contact["contact_id"], a, b, c):
        response = await api.request(method, path, headers=a.headers, **kwargs)
        assert response.status_code == expected, (method, path, response.text)
        assert "error" in response.json()
    assert await table_counts(session) == before_counts
    assert await status(api, b, "b@example.com") == before_status
    assert (await status(api, a, "b@example.com"))["exists"] is False


async def test_a_csv_import_into_another_client_is_forbidden(
    api: AsyncClient, session: AsyncSession, pair: tuple[Tenant, Tenant, Tenant]
) -> None:
    a, b, _ = pair
    before = await table_counts(session)
    response = await api.post(
        "/api/contacts/imports/csv",
        data=scoped(b),
        files={"file": ("c.csv", b"email\nx@example.com\n", "text/csv")},
        headers=a.headers,
    )
    assert response.status_code == 403
    assert await table_counts(session) == before
