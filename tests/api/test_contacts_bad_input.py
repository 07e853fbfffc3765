"""Every contacts route answers bad input with the envelope and changes nothing."""

from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncSession

from tests.api.contacts_factories import scoped, table_counts, upsert
from tests.factories import Tenant, TenantFactory

JSON_ROUTES = [
    ("POST", "/api/contacts"),
    ("PATCH", "/api/contacts/{id}/verification"),
    ("PATCH", "/api/contacts/{id}/validation"),
    ("PATCH", "/api/contacts/{id}/suppression"),
    ("PUT", "/api/contacts/{id}/tags"),
    ("POST", "/api/subscriptions/subscribe"),
    ("POST", "/api/subscriptions/unsubscribe"),
    ("PUT", "/api/contacts/preferences"),
    ("POST", "/api/contacts/erase"),
    ("POST", "/api/contacts/imports"),
]


def _wrong_types(tenant: Tenant) -> list[dict[str, Any]]:
    return [
        {**scoped(tenant), "email": 42},
        {**scoped(tenant), "email": "a@example.com", "tags": "vip", "verified": "yes", "status": "gone"},
        {"audience": ["x"], "client": {"y": 1}, "email": "a@example.com"},
        {**scoped(tenant), "email": "a@example.com", "unknown_field": True, "contacts": "x", "categories": 3,
         "scope": "everything", "verified": 7, "tags": [1]},
    ]  # fmt: skip


@pytest.fixture
async def tenant(tenants: TenantFactory) -> Tenant:
    return await tenants.create()


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
async def test_bad_bodies_get_400_413_415_and_change_nothing(
    api: AsyncClient, session: AsyncSession, tenant: Tenant, method: str, path: str
) -> None:
    cid = (await upsert(api, tenant, "z@example.com", status="subscribed")).json()["contact_id"]
    url = path.format(id=cid)
    before = await table_counts(session)
    json_headers = {**tenant.headers, "Content-Type": "application/json"}
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({"content": b"{oops", "headers": json_headers}, 400, "invalid_json"),
        ({"content": b"[1]", "headers": json_headers}, 400, "must_be_object"),
        ({"content": b"email=a", "headers": {**tenant.headers, "Content-Type": "text/plain"}}, 415, None),
        ({"content": b'{"email": "' + b"a" * 2_000_000 + b'"}', "headers": json_headers}, 413, None),
    ]
    if not path.endswith("/suppression"):  # every field of a suppression change is optional
        cases.append(({"json": {}, "headers": tenant.headers}, 400, None))
    cases += [({"json": body, "headers": tenant.headers}, 400, None) for body in _wrong_types(tenant)]
    for kwargs, expected, body_reason in cases:
        response = await api.request(method, url, **kwargs)
        assert response.status_code == expected, (kwargs.get("json"), response.text)
        error = response.json()["error"]
        assert set(error) >= {"code", "message", "fields"}
        if body_reason:
            assert error["fields"] == {"body": body_reason}
        if expected == 400 and body_reason is None:
            assert error["code"] == "validation_error"
            assert error["fields"], response.text
    assert await table_counts(session) == before


@pytest.mark.parametrize(
    "params",
    [
        {"email": "a@example.com"},
        {"email": "a@example.com", "audience": "missing"},  # client may be omitted, audience not
        {"email": "a@example.com", "audience": "missing", "client": "app"},
    ],
)
async def test_status_and_preferences_validate_their_query(
    api: AsyncClient, tenant: Tenant, params: dict[str, str]
) -> None:
    for path in ("/api/contacts/status", "/api/contacts/preferences", "/api/contacts", "/api/contacts.csv"):
        response = await api.get(path, params=params, headers=tenant.headers)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["code"] == "validation_error"


async def test_id_routes_reject_non_numeric_ids(api: AsyncClient, tenant: Tenant) -> None:
    response = await api.get("/api/contacts/abc/history", headers=tenant.headers)
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"contact_id": "invalid"}
