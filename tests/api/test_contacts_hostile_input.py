"""Input the database cannot take (NUL bytes, ids past bigint, times outside the range once
in UTC, forged cursors, CSV the csv module rejects) is a 400 in the envelope, never a 500,
and changes nothing."""

import base64
import json
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncSession

from tests.api.contacts_factories import post_csv, scoped, table_counts, upsert
from tests.factories import Tenant, TenantFactory

BEYOND_BIGINT = 2**63


def _cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


@pytest.fixture
async def tenant(tenants: TenantFactory) -> Tenant:
    return await tenants.create()


def _requests(tenant: Tenant, cid: int) -> list[tuple[str, str, dict[str, Any], dict[str, str]]]:
    """(method, path, request kwargs, expected fields)."""
    nul = "a\x00b"
    return [
        ("GET", "/api/contacts/status", {"params": scoped(tenant, email="z\x00@example.com")}, {"email": "invalid"}),
        ("GET", "/api/contacts/status", {"params": {**scoped(tenant, email="z@example.com"), "audience": nul}},
         {"audience": "invalid"}),
        ("GET", "/api/contacts/preferences", {"params": scoped(tenant, email="z\x00@example.com")},
         {"email": "invalid"}),
        ("GET", "/api/contacts", {"params": scoped(tenant, tags=nul)}, {"tags": "invalid"}),
        ("GET", "/api/contacts.csv", {"params": scoped(tenant, tags=nul)}, {"tags": "invalid"}),
        ("GET", "/api/contacts", {"params": scoped(tenant, updated_since="0001-01-01T00:00:00+14:00")},
         {"updated_since": "invalid"}),
        ("GET", "/api/contacts", {"params": scoped(tenant, cursor=_cursor(BEYOND_BIGINT))}, {"cursor": "invalid"}),
        ("GET", "/api/contacts", {"params": scoped(tenant, cursor=_cursor("1"))}, {"cursor": "invalid"}),
        ("GET", f"/api/contacts/{cid}/history", {"params": {"cursor": _cursor("x", "event", 1)}},
         {"cursor": "invalid"}),
        ("GET", f"/api/contacts/{cid}/history", {"params": {"cursor": _cursor(1, 2, 3)}}, {"cursor": "invalid"}),
        ("GET", f"/api/contacts/{cid}/history",
         {"params": {"cursor": _cursor("0001-01-01T00:00:00+14:00", "event", 1)}}, {"cursor": "invalid"}),
        ("GET", f"/api/contacts/{BEYOND_BIGINT}/history", {}, {"contact_id": "invalid"}),
        ("PATCH", f"/api/contacts/{BEYOND_BIGINT}/verification", {"json": {"verified": True}},
         {"contact_id": "invalid"}),
        ("PATCH", f"/api/contacts/{cid}/verification",
         {"json": {"verified": True, "verified_at": "0001-01-01T00:00:00+14:00"}}, {"verified_at": "invalid"}),
        ("PATCH", f"/api/contacts/{cid}/validation", {"json": {"status": "risky", "reason": nul}},
         {"reason": "invalid"}),
        ("PATCH", f"/api/contacts/{cid}/suppression", {"json": {"hard_bounced": True, "reason": nul}},
         {"reason": "invalid"}),
        ("POST", "/api/subscriptions/unsubscribe", {"json": scoped(tenant, email="z@example.com", reason=nul)},
         {"reason": "invalid"}),
        ("PUT", "/api/contacts/preferences",
         {"json": scoped(tenant, email="z@example.com", categories=[{"tag": "news", "enabled": False, "label": nul}])},
         {"categories.0.label": "invalid"}),
        ("POST", "/api/contacts", {"json": {**scoped(tenant, email="z@example.com"), "client": nul}},
         {"client": "invalid"}),
    ]  # fmt: skip


async def test_input_the_database_cannot_take_is_400_and_changes_nothing(
    api: AsyncClient, session: AsyncSession, tenant: Tenant
) -> None:
    cid = (await upsert(api, tenant, "z@example.com", status="subscribed")).json()["contact_id"]
    before = await table_counts(session)
    for method, path, kwargs, fields in _requests(tenant, cid):
        response = await api.request(method, path, headers=tenant.headers, **kwargs)
        assert response.status_code == 400, (method, path, response.text)
        assert response.json()["error"]["code"] == "validation_error"
        assert response.json()["error"]["fields"] == fields, (method, path)
    assert await table_counts(session) == before


async def test_an_import_item_with_a_nul_byte_is_reported_and_the_rest_applied(
    api: AsyncClient, tenant: Tenant
) -> None:
    contacts = [
        {"email": "ok@example.com"},
        {"email": "bad@example.com", "email_validation": {"status": "risky", "reason": "x\x00y"}},
    ]
    response = await api.post(
        "/api/contacts/imports", json=scoped(tenant, contacts=contacts), headers=tenant.headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["counts"]["created"] == 1
    assert body["counts"]["invalid"] == 1
    assert body["errors"][0]["index"] == 2
    assert body["errors"][0]["fields"] == {"email_validation.reason": "invalid"}


async def test_a_csv_the_parser_rejects_is_refused_whole_before_any_write(
    api: AsyncClient, session: AsyncSession, tenant: Tenant
) -> None:
    # More good rows than one write batch come first: nothing of them may be written.
    good = b"".join(b"user%d@example.com,valid,\n" % i for i in range(2_100))
    oversized = b"late@example.com,risky," + b"x" * 200_000 + b"\n"
    content = b"email,email_validation_status,email_validation_reason\n" + good + oversized
    before = await table_counts(session)
    response = await post_csv(api, tenant, content)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["fields"] == {"csv": "invalid"}
    assert "line 2102" in response.json()["error"]["message"]
    assert await table_counts(session) == before


async def test_a_csv_row_with_a_nul_byte_is_a_row_error(api: AsyncClient, tenant: Tenant) -> None:
    content = b"email,email_validation_status,email_validation_reason\nb@example.com,risky,x\x00y\n"
    response = await post_csv(api, tenant, content)
    assert response.status_code == 200, response.text
    assert response.json()["counts"]["invalid"] == 1
    assert response.json()["errors"][0]["row"] == 2
