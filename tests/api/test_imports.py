import csv
import io
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncSession

from tests.api.contacts_factories import scoped, status, table_counts, upsert
from tests.factories import Tenant, TenantFactory


@pytest.fixture
async def tenant(tenants: TenantFactory) -> Tenant:
    return await tenants.create()


def _csv(rows: list[list[str]], bom: bool = False) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return (b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode()


async def _post_csv(api: AsyncClient, tenant: Tenant, content: bytes, **fields: str) -> dict[str, Any]:
    response = await api.post(
        "/api/contacts/imports/csv",
        data={"audience": tenant.audience_slug, "client": tenant.client_slug, **fields},
        files={"file": ("contacts.csv", content, "text/csv")},
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_json_import_applies_valid_items_and_reports_the_rest(api: AsyncClient, tenant: Tenant) -> None:
    await upsert(api, tenant, "old@example.com", status="subscribed")
    body = scoped(
        tenant,
        contacts=[
            {"email": "new@example.com", "status": "subscribed", "tags": ["a"]},
            {"email": "not-an-email"},
            {"email": "NEW@example.com"},
            {"email": "old@example.com", "status": "subscribed"},
            {"email": "old@example.com"},
            {"email": "x@example.com", "status": "maybe"},
            {"email": "y@example.com", "tags": "a"},
        ],
    )
    response = await api.post("/api/contacts/imports", json=body, headers=tenant.headers)
    result = response.json()
    assert result["counts"] == {
        "total": 7,
        "created": 1,
        "updated": 0,
        "unchanged": 1,
        "skipped": 2,
        "invalid": 3,
    }
    assert [(e["index"], e["code"]) for e in result["errors"]] == [
        (2, "invalid"),
        (3, "duplicate_input"),
        (5, "duplicate_input"),
        (6, "invalid"),
        (7, "invalid"),
    ]
    assert result["errors"][3]["fields"] == {"status": "invalid"}
    assert (await status(api, tenant, "new@example.com"))["client"]["status"] == "subscribed"

    again = (await api.post("/api/contacts/imports", json=body, headers=tenant.headers)).json()
    assert again["counts"]["created"] == 0
    assert again["counts"]["updated"] == 0
    assert again["counts"]["unchanged"] == 2


async def test_dry_run_counts_but_changes_nothing(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    before = await table_counts(session)
    body = scoped(tenant, contacts=[{"email": "a@example.com"}, {"email": "b@example.com"}], dry_run=True)
    result = (await api.post("/api/contacts/imports", json=body, headers=tenant.headers)).json()
    assert result["counts"]["created"] == 2
    assert result["dry_run"] is True
    assert await table_counts(session) == before


async def test_csv_import_with_bom_counts_rows_from_two(api: AsyncClient, tenant: Tenant) -> None:
    content = _csv(
        [
            ["email", "status", "tags", "hard_bounced"],
            ["one@example.com", "subscribed", "a;b", ""],
            ["bad address", "", "", ""],
            ["two@example.com", "", "", "true"],
            ["ONE@example.com", "", "", ""],
            ["three@example.com", "", "", "perhaps"],
        ],
        bom=True,
    )
    result = await _post_csv(api, tenant, content)
    assert result["counts"] == {
        "total": 5,
        "created": 2,
        "updated": 0,
        "unchanged": 0,
        "skipped": 1,
        "invalid": 2,
    }
    assert [(e["row"], e["code"]) for e in result["errors"]] == [
        (3, "invalid"),
        (5, "duplicate_input"),
        (6, "invalid"),
    ]
    one = await status(api, tenant, "one@example.com")
    assert one["client"]["status"] == "subscribed"
    assert (await status(api, tenant, "two@example.com"))["hard_bounced"] is True


async def test_a_blank_csv_column_never_weakens_suppression(api: AsyncClient, tenant: Tenant) -> None:
    await upsert(api, tenant, "s@example.com", status="unsubscribed", suppression={"hard_bounced": True})
    content = _csv(
        [["email", "status", "hard_bounced", "global_unsubscribed"], ["s@example.com", "", "", "false"]]
    )
    result = await _post_csv(api, tenant, content)
    assert result["counts"]["unchanged"] == 1
    after = await status(api, tenant, "s@example.com")
    assert after["hard_bounced"] is True
    assert after["client"]["status"] == "unsubscribed"


@pytest.mark.parametrize(
    ("content", "field", "reason"),
    [
        (b"", "csv", "missing_header"),
        (b"name,status\nx,y\n", "csv", "missing_header"),
        (b"email\n\xff\xfe@example.com\n", "csv", "must_be_utf8"),
    ],
)
async def test_csv_file_errors(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, content: bytes, field: str, reason: str
) -> None:
    before = await table_counts(session)
    response = await api.post(
        "/api/contacts/imports/csv",
        data=scoped(tenant),
        files={"file": ("c.csv", content, "text/csv")},
        headers=tenant.headers,
    )
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {field: reason}
    assert await table_counts(session) == before


async def test_csv_import_needs_a_file_and_multipart(api: AsyncClient, tenant: Tenant) -> None:
    missing = await api.post(
        "/api/contacts/imports/csv", data=scoped(tenant), files={"other": ("x", b"")}, headers=tenant.headers
    )
    assert missing.json()["error"]["fields"] == {"csv": "required"}
    wrong_type = await api.post("/api/contacts/imports/csv", json=scoped(tenant), headers=tenant.headers)
    assert wrong_type.status_code == 415


async def test_export_streams_the_seventeen_columns(api: AsyncClient, tenant: Tenant) -> None:
    await upsert(api, tenant, "a@example.com", status="subscribed", tags=["x", "y"], verified=True)
    await upsert(api, tenant, "b@example.com", status="unsubscribed")
    response = await api.get("/api/contacts.csv", params=scoped(tenant), headers=tenant.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == [
        "email", "audience", "client", "tags", "subscription_status", "verified", "verified_at",
        "email_validation_status", "email_validation_reason", "email_validated_at", "global_unsubscribed",
        "hard_bounced", "complained", "unsubscribed", "unsubscribed_at", "unsubscribe_reason", "updated_at",
    ]  # fmt: skip
    assert [
        (r["email"], r["tags"], r["subscription_status"], r["verified"], r["unsubscribed"]) for r in rows
    ] == [
        ("a@example.com", "x,y", "subscribed", "true", "false"),
        ("b@example.com", "", "unsubscribed", "false", "true"),
    ]
    filtered = await api.get(
        "/api/contacts.csv", params=scoped(tenant, subscription_status="unsubscribed"), headers=tenant.headers
    )
    assert [r["email"] for r in csv.DictReader(io.StringIO(filtered.text))] == ["b@example.com"]


async def test_an_export_reimports_unchanged(api: AsyncClient, tenant: Tenant) -> None:
    await upsert(api, tenant, "a@example.com", status="subscribed", tags=["x"])
    exported = (await api.get("/api/contacts.csv", params=scoped(tenant), headers=tenant.headers)).content
    result = await _post_csv(api, tenant, exported)
    assert result["counts"]["unchanged"] == 1
    assert result["errors"] == []


async def test_listing_filters_and_paginates(api: AsyncClient, tenant: Tenant) -> None:
    for i in range(5):
        await upsert(
            api, tenant, f"p{i}@example.com", status="subscribed", tags=["even"] if i % 2 == 0 else []
        )
    page = (await api.get("/api/contacts", params=scoped(tenant, limit=2), headers=tenant.headers)).json()
    emails = [c["email"] for c in page["contacts"]]
    while page["next_cursor"]:
        page = (
            await api.get(
                "/api/contacts",
                params=scoped(tenant, limit=2, cursor=page["next_cursor"]),
                headers=tenant.headers,
            )
        ).json()
        emails += [c["email"] for c in page["contacts"]]
    assert emails == [f"p{i}@example.com" for i in range(5)]
    tagged = (
        await api.get("/api/contacts", params=scoped(tenant, tags="even"), headers=tenant.headers)
    ).json()
    assert [c["email"] for c in tagged["contacts"]] == ["p0@example.com", "p2@example.com", "p4@example.com"]
    for bad in (
        {"limit": 0},
        {"limit": 501},
        {"cursor": "nope"},
        {"suppression": "maybe"},
        {"verified": "x"},
    ):
        response = await api.get("/api/contacts", params=scoped(tenant, **bad), headers=tenant.headers)
        assert response.status_code == 400, bad


async def _tags_of(api: AsyncClient, tenant: Tenant, email: str) -> list[str]:
    listed = (await api.get("/api/contacts", params=scoped(tenant), headers=tenant.headers)).json()
    return next(list(c["tags"]) for c in listed["contacts"] if c["email"] == email)


async def test_json_import_slugifies_tags(api: AsyncClient, tenant: Tenant) -> None:
    contacts = [
        {"email": "w@example.com", "tags": ["Weekly News", "VIP", "weekly-news"]},
        {"email": "z@example.com", "tags": ["ok", "!!!"]},
    ]
    body = scoped(tenant, contacts=contacts)
    result = (await api.post("/api/contacts/imports", json=body, headers=tenant.headers)).json()
    assert (result["counts"]["created"], result["counts"]["invalid"]) == (1, 1)
    assert [(e["index"], e["fields"]) for e in result["errors"]] == [(2, {"tags.1": "invalid"})]
    assert await _tags_of(api, tenant, "w@example.com") == ["vip", "weekly-news"]


async def test_csv_import_slugifies_tags(api: AsyncClient, tenant: Tenant) -> None:
    content = _csv([["email", "tags"], ["w@example.com", "Weekly News;VIP"], ["z@example.com", "ok|%%%"]])
    result = await _post_csv(api, tenant, content)
    assert (result["counts"]["created"], result["counts"]["invalid"]) == (1, 1)
    assert [(e["row"], e["fields"]) for e in result["errors"]] == [(3, {"tags.1": "invalid"})]
    assert await _tags_of(api, tenant, "w@example.com") == ["vip", "weekly-news"]


async def test_the_tags_filter_slugifies_names(api: AsyncClient, tenant: Tenant) -> None:
    await upsert(api, tenant, "w@example.com", tags=["weekly-news", "vip"])
    await upsert(api, tenant, "x@example.com", tags=["vip"])
    params = scoped(tenant, tags="Weekly News, VIP")
    listed = (await api.get("/api/contacts", params=params, headers=tenant.headers)).json()
    assert [c["email"] for c in listed["contacts"]] == ["w@example.com"]
    exported = await api.get("/api/contacts.csv", params=params, headers=tenant.headers)
    assert [row["email"] for row in csv.DictReader(io.StringIO(exported.text))] == ["w@example.com"]
    refused = await api.get("/api/contacts", params=scoped(tenant, tags="vip,!!!"), headers=tenant.headers)
    assert refused.status_code == 400
    assert refused.json()["error"]["fields"] == {"tags": "invalid"}
