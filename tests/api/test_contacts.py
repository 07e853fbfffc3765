import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.api.contacts_factories import event_count, scoped, status, upsert
from tests.factories import Tenant, TenantFactory


@pytest.fixture
async def tenant(tenants: TenantFactory) -> Tenant:
    return await tenants.create()


async def test_addresses_are_normalized_to_one_contact(api: AsyncClient, tenant: Tenant) -> None:
    first = (await upsert(api, tenant, "  Alice@Example.COM ")).json()
    second = (await upsert(api, tenant, "alice@example.com")).json()
    assert first["contact_id"] == second["contact_id"]
    assert (await status(api, tenant, "ALICE@example.com"))["contact_id"] == first["contact_id"]


async def test_a_new_contact_is_pending_and_not_marketable(api: AsyncClient, tenant: Tenant) -> None:
    body = (await upsert(api, tenant, "bob@example.com", tags=["python"])).json()
    assert body["exists"] is True
    assert body["client"]["status"] == "pending"
    assert body["tags"] == ["python"]
    assert body["can_send_marketing"] is False
    assert body["can_send_transactional"] is True


async def test_subscribed_and_verified_is_marketable_until_suppressed_or_invalid(
    api: AsyncClient, tenant: Tenant
) -> None:
    subscribed = await api.post(
        "/api/subscriptions/subscribe", json=scoped(tenant, email="c@example.com"), headers=tenant.headers
    )
    body = subscribed.json()
    assert body["client"]["subscribed"] is True
    assert body["verified"] is True
    assert body["can_send_marketing"] is True
    invalid = await upsert(
        api, tenant, "c@example.com", email_validation={"status": "disposable", "reason": "x"}
    )
    assert invalid.json()["can_send_marketing"] is False
    await upsert(api, tenant, "c@example.com", email_validation={"status": "valid"})
    assert (await status(api, tenant, "c@example.com"))["can_send_marketing"] is True
    bounced = await api.patch(
        f"/api/contacts/{body['contact_id']}/suppression",
        json={"hard_bounced": True, "reason": "manual"},
        headers=tenant.headers,
    )
    assert bounced.json()["can_send_marketing"] is False
    assert bounced.json()["can_send_transactional"] is False


async def test_unknown_addresses_read_as_not_existing(api: AsyncClient, tenant: Tenant) -> None:
    body = await status(api, tenant, "nobody@example.com")
    assert body["exists"] is False
    assert body["contact_id"] is None
    assert not any(
        body[k] for k in ("verified", "can_send_marketing", "can_send_transactional", "hard_bounced")
    )


async def test_subscribe_and_suppression_repeat_without_new_events(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    for _ in range(2):
        body = (
            await api.post(
                "/api/subscriptions/subscribe",
                json=scoped(tenant, email="d@example.com"),
                headers=tenant.headers,
            )
        ).json()
    cid = body["contact_id"]
    assert await event_count(session, "subscribe", cid) == 1
    for _ in range(2):
        await api.patch(f"/api/contacts/{cid}/suppression", json={"complained": True}, headers=tenant.headers)
    assert await event_count(session, "complaint", cid) == 1


@pytest.mark.parametrize(
    ("scope", "check"),
    [
        (
            "client",
            lambda b: b["client"]["status"] == "unsubscribed" and b["audience"]["status"] == "subscribed",
        ),
        (
            "audience",
            lambda b: b["audience"]["status"] == "unsubscribed" and b["client"]["status"] == "subscribed",
        ),
        ("global", lambda b: b["global_unsubscribed"] and b["client"]["status"] == "subscribed"),
    ],
)
async def test_the_three_unsubscribe_scopes(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, scope: str, check: object
) -> None:
    await api.post(
        "/api/subscriptions/subscribe", json=scoped(tenant, email="e@example.com"), headers=tenant.headers
    )
    for _ in range(2):
        response = await api.post(
            "/api/subscriptions/unsubscribe",
            json=scoped(tenant, email="e@example.com", scope=scope, reason="too many"),
            headers=tenant.headers,
        )
        assert response.status_code == 200
    body = response.json()
    assert check(body)  # type: ignore[operator]
    assert body["can_send_marketing"] is False
    assert await event_count(session, "unsubscribe", body["contact_id"]) == 1


async def test_resubscribing_records_a_subscribe_event(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    await upsert(api, tenant, "f@example.com", status="subscribed")
    await upsert(api, tenant, "f@example.com", status="unsubscribed")
    body = (await upsert(api, tenant, "f@example.com", status="subscribed")).json()
    assert await event_count(session, "subscribe", body["contact_id"]) == 2
    assert await event_count(session, "unsubscribe", body["contact_id"]) == 1


async def test_erase_deletes_the_contact_but_keeps_the_address_suppressed(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    body = (await upsert(api, tenant, "g@example.com", suppression={"hard_bounced": True})).json()
    erased = await api.post(
        "/api/contacts/erase", json=scoped(tenant, email="g@example.com"), headers=tenant.headers
    )
    assert erased.json() == {"erased": True, "suppressed": True}
    assert (await status(api, tenant, "g@example.com"))["exists"] is False
    history = await api.get(f"/api/contacts/{body['contact_id']}/history", headers=tenant.headers)
    assert history.status_code == 404
    again = (await upsert(api, tenant, "G@example.com")).json()
    assert again["contact_id"] != body["contact_id"]
    assert again["hard_bounced"] is True
    assert again["can_send_transactional"] is False


async def test_erasing_a_clean_contact_leaves_no_suppression(api: AsyncClient, tenant: Tenant) -> None:
    await upsert(api, tenant, "h@example.com")
    erased = await api.post(
        "/api/contacts/erase", json=scoped(tenant, email="h@example.com"), headers=tenant.headers
    )
    assert erased.json()["suppressed"] is False
    assert (await upsert(api, tenant, "h@example.com")).json()["hard_bounced"] is False


async def test_tags_replace_add_and_remove_idempotently(api: AsyncClient, tenant: Tenant) -> None:
    cid = (await upsert(api, tenant, "i@example.com", tags=["a", "b"])).json()["contact_id"]
    replaced = await api.put(f"/api/contacts/{cid}/tags", json={"tags": ["b", "c"]}, headers=tenant.headers)
    assert replaced.json()["tags"] == ["b", "c"]
    for _ in range(2):
        added = await api.post(f"/api/contacts/{cid}/tags/d", headers=tenant.headers)
    assert added.json()["tags"] == ["b", "c", "d"]
    for _ in range(2):
        removed = await api.delete(f"/api/contacts/{cid}/tags/b", headers=tenant.headers)
    assert removed.json()["tags"] == ["c", "d"]


async def test_upserted_tags_are_slugified(api: AsyncClient, tenant: Tenant) -> None:
    long_name = "Weekly" + " !!" * 40  # 126 characters, its slug 6: the bound is the slug's
    body = (await upsert(api, tenant, "s@example.com", tags=["Weekly News", "weekly-news", long_name])).json()
    assert body["tags"] == ["weekly", "weekly-news"]
    for tags, reason in ((["!!!"], "invalid"), ([""], "invalid"), (["Ab " * 30], "too_long")):
        response = await api.post(
            "/api/contacts", json=scoped(tenant, email="s@example.com", tags=tags), headers=tenant.headers
        )
        assert response.status_code == 400, tags
        assert response.json()["error"]["fields"] == {"tags.0": reason}


async def test_replaced_tags_are_slugified(api: AsyncClient, tenant: Tenant) -> None:
    cid = (await upsert(api, tenant, "t@example.com")).json()["contact_id"]
    replaced = await api.put(
        f"/api/contacts/{cid}/tags",
        json={"tags": ["Weekly News", "Ünïcödé", "weekly-news"]},
        headers=tenant.headers,
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["tags"] == ["unicode", "weekly-news"]
    refused = await api.put(f"/api/contacts/{cid}/tags", json={"tags": ["日本"]}, headers=tenant.headers)
    assert refused.json()["error"]["fields"] == {"tags.0": "invalid"}


async def test_one_tag_routes_slugify_the_name(api: AsyncClient, tenant: Tenant) -> None:
    cid = (await upsert(api, tenant, "u@example.com")).json()["contact_id"]
    added = await api.post(f"/api/contacts/{cid}/tags/Weekly News", headers=tenant.headers)
    assert added.status_code == 200, added.text
    assert added.json()["tags"] == ["weekly-news"]
    removed = await api.delete(f"/api/contacts/{cid}/tags/WEEKLY  News", headers=tenant.headers)
    assert removed.json()["tags"] == []
    refused = await api.post(f"/api/contacts/{cid}/tags/%21%21", headers=tenant.headers)
    assert refused.status_code == 400
    assert refused.json()["error"]["fields"] == {"slug": "invalid"}


async def test_category_preferences_use_slugs(api: AsyncClient, tenant: Tenant) -> None:
    await upsert(api, tenant, "v@example.com", status="subscribed")
    categories = [{"tag": "Weekly News", "enabled": True}, {"tag": "weekly-news", "enabled": False}]
    body = scoped(tenant, email="v@example.com", categories=categories)
    put = await api.put("/api/contacts/preferences", json=body, headers=tenant.headers)
    assert put.status_code == 200, put.text
    assert put.json()["categories"] == [{"tag": "weekly-news", "enabled": False, "label": None}]
    params = scoped(tenant, email="v@example.com", category_tags="Weekly News,Offers")
    got = (await api.get("/api/contacts/preferences", params=params, headers=tenant.headers)).json()
    assert got["categories"] == [
        {"tag": "weekly-news", "enabled": False, "label": None},
        {"tag": "offers", "enabled": True, "label": None},
    ]
    body["categories"] = [{"tag": "***", "enabled": True}]
    refused = await api.put("/api/contacts/preferences", json=body, headers=tenant.headers)
    assert refused.json()["error"]["fields"] == {"categories.0.tag": "invalid"}


async def test_category_preferences_default_enabled_and_suppressed_cannot_enable(
    api: AsyncClient, tenant: Tenant
) -> None:
    await upsert(api, tenant, "j@example.com", status="subscribed")
    params = scoped(tenant, email="j@example.com", category_tags="news,offers")
    got = (await api.get("/api/contacts/preferences", params=params, headers=tenant.headers)).json()
    assert got["categories"] == [
        {"tag": "news", "enabled": True, "label": None},
        {"tag": "offers", "enabled": True, "label": None},
    ]
    body = scoped(
        tenant, email="j@example.com", categories=[{"tag": "offers", "enabled": False, "label": "Offers"}]
    )
    put = await api.put("/api/contacts/preferences", json=body, headers=tenant.headers)
    assert put.status_code == 200
    got = (await api.get("/api/contacts/preferences", params=params, headers=tenant.headers)).json()
    assert got["categories"][1] == {"tag": "offers", "enabled": False, "label": "Offers"}
    await upsert(api, tenant, "j@example.com", suppression={"global_unsubscribed": True})
    body["categories"] = [{"tag": "offers", "enabled": True}]
    refused = await api.put("/api/contacts/preferences", json=body, headers=tenant.headers)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "suppressed_contact_cannot_be_enabled"


async def test_history_is_newest_first_with_a_cursor(api: AsyncClient, tenant: Tenant) -> None:
    cid = (await upsert(api, tenant, "k@example.com", status="subscribed")).json()["contact_id"]
    await upsert(api, tenant, "k@example.com", status="unsubscribed")
    await upsert(api, tenant, "k@example.com", status="subscribed")
    page = (await api.get(f"/api/contacts/{cid}/history", params={"limit": 2}, headers=tenant.headers)).json()
    assert [i["type"] for i in page["items"]] == ["subscribe", "unsubscribe"]
    assert page["next_cursor"]
    rest = (
        await api.get(
            f"/api/contacts/{cid}/history",
            params={"limit": 2, "cursor": page["next_cursor"]},
            headers=tenant.headers,
        )
    ).json()
    assert [i["type"] for i in rest["items"]] == ["subscribe"]
    assert rest["next_cursor"] is None
    bad = await api.get(f"/api/contacts/{cid}/history", params={"cursor": "!!"}, headers=tenant.headers)
    assert bad.status_code == 400


async def test_erase_scrubs_the_contacts_transactional_messages(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    template = {"name": "Reset", "subject": "Reset for {{ name }}", "html_body": "<p>{{ name }}</p>"}
    await api.put("/api/transactional/templates/reset", json=template, headers=tenant.headers)
    sent = await api.post(
        "/api/transactional/send",
        json={"email": "m@example.com", "template_key": "reset", "context": {"name": "Mallory"},
              "metadata": {"account": "m-1"}},
        headers=tenant.headers,
    )  # fmt: skip
    assert sent.status_code == 202, sent.text
    await upsert(api, tenant, "m@example.com")
    await api.post("/api/contacts/erase", json=scoped(tenant, email="m@example.com"), headers=tenant.headers)
    row = (
        await session.execute(
            text("select email, subject, html_body, metadata::text from transactional_messages")
        )
    ).one()
    assert "m@example.com" not in str(row)
    assert "Mallory" not in str(row)
    assert "m-1" not in str(row)


async def test_client_may_be_omitted_where_the_key_names_it(api: AsyncClient, tenant: Tenant) -> None:
    audience = tenant.scope.audience.slug
    created = await api.post(
        "/api/contacts",
        json={"email": "solo@example.com", "audience": audience, "status": "subscribed", "verified": True},
        headers=tenant.headers,
    )
    assert created.status_code == 200, created.text
    assert created.json()["client"]["slug"] == tenant.scope.client.slug
    read = await api.get(
        "/api/contacts/status",
        params={"email": "solo@example.com", "audience": audience},
        headers=tenant.headers,
    )
    assert read.status_code == 200, read.text
    assert read.json()["can_send_marketing"] is True
    listed = await api.get("/api/contacts", params={"audience": audience}, headers=tenant.headers)
    assert [c["email"] for c in listed.json()["contacts"]] == ["solo@example.com"]
    # A named client must still be the key's own.
    other = await api.get(
        "/api/contacts/status",
        params={"email": "solo@example.com", "audience": audience, "client": "someone-else"},
        headers=tenant.headers,
    )
    assert other.status_code == 403
    assert other.json()["error"]["fields"] == {"client": "forbidden"}
