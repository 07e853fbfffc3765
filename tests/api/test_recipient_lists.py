"""Recipient lists through the API: lists, members one at a time, in bulk and reconciled,
membership of every ancestor and of `<all>`, tenant isolation, and bad input that
changes nothing."""

from typing import Any

import pytest
from httpx import AsyncClient, Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.api.contacts_factories import scoped, status, table_counts, upsert
from tests.factories import Tenant, TenantFactory

BASE = "/api/recipient-lists"


@pytest.fixture
async def tenant(tenants: TenantFactory) -> Tenant:
    return await tenants.create()


async def put_member(
    api: AsyncClient, tenant: Tenant, key: str, source: str, email: str, **member: Any
) -> dict[str, Any]:
    response = await api.put(
        f"{BASE}/{key}/members/{source}",
        json=scoped(tenant, member={"email": email, **member}),
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def get_list(api: AsyncClient, tenant: Tenant, key: str) -> Response:
    return await api.get(
        f"{BASE}/{key}",
        params={"audience": tenant.audience_slug, "client": tenant.client_slug},
        headers=tenant.headers,
    )


async def count(api: AsyncClient, tenant: Tenant, key: str) -> int:
    response = await get_list(api, tenant, key)
    assert response.status_code == 200, response.text
    return int(response.json()["member_count"])


def members(*pairs: tuple[str, str], **extra: Any) -> list[dict[str, Any]]:
    return [{"source_object_key": source, "email": email, **extra} for source, email in pairs]


async def post_set(
    api: AsyncClient, tenant: Tenant, key: str, action: str, items: list[dict[str, Any]], **body: Any
) -> Response:
    return await api.post(
        f"{BASE}/{key}/members/{action}", json=scoped(tenant, members=items, **body), headers=tenant.headers
    )


async def member_rows(session: AsyncSession) -> list[tuple[str, str, str, str]]:
    rows = await session.execute(
        text(
            "SELECT l.list_key, m.source_object_key, m.email, m.status FROM recipient_list_members m "
            "JOIN recipient_lists l ON l.id = m.list_id ORDER BY 1, 2"
        )
    )
    return [tuple(r) for r in rows]


async def test_put_creates_a_list_with_its_ancestors_and_a_repeat_changes_nothing(
    api: AsyncClient, tenant: Tenant
) -> None:
    body = scoped(tenant, type="cohort", name="Cohort A", metadata={"course": "ml"})
    first = await api.put(f"{BASE}/course:2025:cohort-a", json=body, headers=tenant.headers)
    assert first.status_code == 200, first.text
    out = first.json()
    assert out["created"] is True
    assert (out["list_key"], out["type"], out["name"], out["metadata"]) == (
        "course:2025:cohort-a",
        "cohort",
        "Cohort A",
        {"course": "ml"},
    )
    assert out["parent_key"] == "course:2025"
    again = await api.put(f"{BASE}/course:2025:cohort-a", json=body, headers=tenant.headers)
    assert again.json()["created"] is False
    assert again.json()["updated_at"] == out["updated_at"]

    parent = await get_list(api, tenant, "course:2025")
    assert parent.status_code == 200
    assert parent.json()["parent_key"] == "course"
    assert (await get_list(api, tenant, "course")).json()["parent_key"] == "<all>"

    renamed = await api.put(
        f"{BASE}/course:2025:cohort-a", json=scoped(tenant, name="A"), headers=tenant.headers
    )
    assert (renamed.json()["name"], renamed.json()["type"]) == ("A", "cohort")


async def test_get_of_an_unknown_list_is_404(api: AsyncClient, tenant: Tenant) -> None:
    response = await get_list(api, tenant, "nothing:here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_member_upsert_creates_the_list_and_the_contact(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    out = await put_member(
        api, tenant, "homework:hw1", "submission:42", "Learner@Example.com", metadata={"submission_id": 42}
    )
    assert out["outcome"] == "created"
    assert out["member"]["status"] == "active"
    assert out["member"]["metadata"] == {"submission_id": 42}
    assert out["list"]["direct_member_count"] == 1
    contact = await status(api, tenant, "learner@example.com")
    assert contact["exists"] is True
    assert out["member"]["contact_id"] == contact["contact_id"]

    again = await put_member(
        api, tenant, "homework:hw1", "submission:42", "Learner@Example.com", metadata={"submission_id": 42}
    )
    assert again["outcome"] == "unchanged"
    removed = await put_member(
        api, tenant, "homework:hw1", "submission:42", "Learner@Example.com", status="removed"
    )
    assert removed["outcome"] == "updated"
    assert removed["member"]["removed_at"] is not None
    assert removed["list"]["member_count"] == 0
    assert await member_rows(session) == [("homework:hw1", "submission:42", "Learner@Example.com", "removed")]


async def test_member_upsert_accepts_the_flat_shape(api: AsyncClient, tenant: Tenant) -> None:
    response = await api.put(
        f"{BASE}/registrants/members/registration:1",
        json=scoped(tenant, email="flat@example.com"),
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["member"]["email"] == "flat@example.com"


async def test_member_upsert_keeps_an_existing_subscription(api: AsyncClient, tenant: Tenant) -> None:
    await upsert(api, tenant, "sub@example.com", status="unsubscribed")
    await put_member(api, tenant, "registrants", "registration:1", "sub@example.com")
    assert (await status(api, tenant, "sub@example.com"))["client"]["status"] == "unsubscribed"


async def test_bulk_upsert_writes_many_members_and_counts_outcomes(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    items = members(*((f"registration:{i}", f"user{i}@example.com") for i in range(2500)))
    first = await post_set(
        api, tenant, "registrants:2026", "bulk-upsert", items, list={"name": "Registrants"}
    )
    assert first.status_code == 200, first.text
    assert first.json()["counts"] == {
        "total": 2500,
        "created": 2500,
        "updated": 0,
        "unchanged": 0,
        "removed": 0,
    }
    assert first.json()["list"]["member_count"] == 2500
    assert first.json()["list"]["name"] == "Registrants"

    items[0]["metadata"] = {"user_id": 0}
    second = await post_set(api, tenant, "registrants:2026", "bulk-upsert", items[:10])
    assert second.json()["counts"] == {"total": 10, "created": 0, "updated": 1, "unchanged": 9, "removed": 0}
    assert second.json()["list"]["direct_member_count"] == 2500  # bulk upsert never removes
    assert int(await session.scalar(text("SELECT count(*) FROM contacts")) or 0) == 2500


async def test_one_contact_under_two_source_keys_counts_once(api: AsyncClient, tenant: Tenant) -> None:
    items = members(("registration:1", "same@example.com"), ("registration:2", "SAME@example.com"))
    response = await post_set(api, tenant, "registrants", "bulk-upsert", items)
    assert response.status_code == 200, response.text
    assert response.json()["list"]["direct_member_count"] == 2
    assert response.json()["list"]["member_count"] == 1


async def test_reconcile_without_remove_absent_only_upserts(api: AsyncClient, tenant: Tenant) -> None:
    await post_set(
        api, tenant, "hw", "bulk-upsert", members(("s:1", "a@example.com"), ("s:2", "b@example.com"))
    )
    response = await post_set(api, tenant, "hw", "reconcile", members(("s:3", "c@example.com")))
    assert response.json()["counts"]["removed"] == 0
    assert response.json()["list"]["member_count"] == 3


async def test_reconcile_with_remove_absent_makes_the_set_the_membership_and_is_repeatable(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    start = members(("s:1", "a@example.com"), ("s:2", "b@example.com"), ("s:3", "c@example.com"))
    await post_set(api, tenant, "hw", "bulk-upsert", start)
    wanted = members(("s:2", "b@example.com"), ("s:4", "d@example.com"))
    first = await post_set(api, tenant, "hw", "reconcile", wanted, remove_absent=True)
    assert first.status_code == 200, first.text
    assert first.json()["counts"] == {"total": 2, "created": 1, "updated": 0, "unchanged": 1, "removed": 2}
    rows_after_first = await member_rows(session)
    second = await post_set(api, tenant, "hw", "reconcile", wanted, remove_absent=True)
    assert second.json()["counts"] == {"total": 2, "created": 0, "updated": 0, "unchanged": 2, "removed": 0}
    assert await member_rows(session) == rows_after_first
    assert rows_after_first == [
        ("hw", "s:1", "a@example.com", "removed"),
        ("hw", "s:2", "b@example.com", "active"),
        ("hw", "s:3", "c@example.com", "removed"),
        ("hw", "s:4", "d@example.com", "active"),
    ]
    assert second.json()["list"]["member_count"] == 2
    assert second.json()["list"]["removed_member_count"] == 2

    back = await post_set(
        api, tenant, "hw", "reconcile", members(("s:1", "a@example.com")), remove_absent=True
    )
    assert back.json()["counts"] == {"total": 1, "created": 0, "updated": 1, "unchanged": 0, "removed": 2}
    emptied = await post_set(api, tenant, "hw", "reconcile", [], remove_absent=True)
    assert emptied.json()["counts"]["removed"] == 1
    assert emptied.json()["list"]["member_count"] == 0


async def test_membership_cascades_to_every_ancestor_and_to_all(api: AsyncClient, tenant: Tenant) -> None:
    await put_member(api, tenant, "course:2025:cohort-a", "r:1", "a@example.com")
    await put_member(api, tenant, "course:2025:cohort-b", "r:2", "b@example.com")
    await put_member(api, tenant, "course:2025:cohort-b", "r:1", "a@example.com")
    await put_member(api, tenant, "webinar", "w:1", "c@example.com")
    assert await count(api, tenant, "course:2025:cohort-a") == 1
    assert await count(api, tenant, "course:2025:cohort-b") == 2
    assert await count(api, tenant, "course:2025") == 2
    assert await count(api, tenant, "course") == 2
    assert await count(api, tenant, "<all>") == 3
    # A sibling whose key merely starts with the same characters is not a descendant.
    await put_member(api, tenant, "course:2025x", "r:9", "z@example.com")
    assert await count(api, tenant, "course:2025") == 2


async def test_removal_from_a_child_keeps_the_contact_only_where_another_membership_holds(
    api: AsyncClient, tenant: Tenant
) -> None:
    await put_member(api, tenant, "course:2025:cohort-a", "r:1", "a@example.com")
    await put_member(api, tenant, "course:2025:cohort-b", "r:1", "a@example.com")
    await put_member(api, tenant, "course", "direct:1", "b@example.com")
    await put_member(api, tenant, "course:2025:cohort-a", "r:1", "a@example.com", status="removed")
    assert await count(api, tenant, "course:2025:cohort-a") == 0
    assert await count(api, tenant, "course:2025") == 1  # cohort-b still holds a@
    await put_member(api, tenant, "course:2025:cohort-b", "r:1", "a@example.com", status="removed")
    assert await count(api, tenant, "course:2025") == 0
    assert await count(api, tenant, "course") == 1  # b@ is a direct member
    assert await count(api, tenant, "<all>") == 1


async def test_all_is_readable_but_not_writable(api: AsyncClient, tenant: Tenant) -> None:
    empty = await get_list(api, tenant, "<all>")
    assert empty.status_code == 200
    assert (empty.json()["member_count"], empty.json()["parent_key"]) == (0, None)
    response = await api.put(f"{BASE}/<all>", json=scoped(tenant), headers=tenant.headers)
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"list_key": "reserved"}


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("course::a", "empty_segment"),
        (":course", "empty_segment"),
        ("course:", "empty_segment"),
        ("a" * 256, "too_long"),
        (":".join(["s"] * 17), "too_deep"),
        ("course:%01a", "invalid"),  # a control character, percent-encoded
        ("course: a", "invalid"),
    ],
)
async def test_bad_list_keys_are_rejected_and_change_nothing(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, key: str, reason: str
) -> None:
    before = await table_counts(session)
    for method, path, body in (
        ("PUT", f"{BASE}/{key}", scoped(tenant)),
        ("PUT", f"{BASE}/{key}/members/r:1", scoped(tenant, member={"email": "a@example.com"})),
        (
            "POST",
            f"{BASE}/{key}/members/bulk-upsert",
            scoped(tenant, members=members(("r:1", "a@example.com"))),
        ),
        ("POST", f"{BASE}/{key}/members/reconcile", scoped(tenant, members=[], remove_absent=True)),
    ):
        response = await api.request(method, path, json=body, headers=tenant.headers)
        assert response.status_code == 400, (method, path, response.text)
        assert response.json()["error"]["fields"] == {"list_key": reason}
    assert await table_counts(session) == before
    assert int(await session.scalar(text("SELECT count(*) FROM recipient_lists")) or 0) == 0


async def test_an_invalid_member_rejects_the_whole_set_and_changes_nothing(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    await post_set(api, tenant, "hw", "bulk-upsert", members(("s:1", "a@example.com")))
    before = (await table_counts(session), await member_rows(session))
    cases: list[tuple[list[dict[str, Any]], dict[str, str]]] = [
        (members(("s:2", "b@example.com"), ("s:3", "not-an-address")), {"members.1.email": "invalid"}),
        (
            members(("s:2", "b@example.com"), ("s:2", "c@example.com")),
            {"members.1.source_object_key": "duplicate_input"},
        ),
        (members(("s:\x00", "b@example.com")), {"members.0.source_object_key": "invalid"}),
        ([{"source_object_key": "s:2", "email": "b@example.com", "metadata": {"x": "\x00"}}], {}),
        ([{"source_object_key": "s:2", "email": "b@example.com", "status": "gone"}], {}),
        ([{"email": "b@example.com"}], {}),
    ]
    for items, fields in cases:
        for action, extra in (("bulk-upsert", {}), ("reconcile", {"remove_absent": True})):
            response = await post_set(api, tenant, "hw", action, items, **extra)
            assert response.status_code == 400, (items, response.text)
            assert response.json()["error"]["code"] == "validation_error"
            if fields:
                assert response.json()["error"]["fields"] == fields
    assert (await table_counts(session), await member_rows(session)) == before


async def test_bad_single_member_input_is_rejected(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    before = await table_counts(session)
    cases = [
        ("r:1", scoped(tenant, member={"email": "nope"}), {"member.email": "invalid"}),
        ("r:1", scoped(tenant), None),
        ("r:1", scoped(tenant, email="a@example.com", member={"email": "a@example.com"}), None),
        ("r:%02", scoped(tenant, member={"email": "a@example.com"}), {"source_object_key": "invalid"}),
        ("r" * 256, scoped(tenant, member={"email": "a@example.com"}), {"source_object_key": "too_long"}),
    ]
    for source, body, fields in cases:
        response = await api.put(f"{BASE}/hw/members/{source}", json=body, headers=tenant.headers)
        assert response.status_code == 400, (source, body, response.text)
        if fields is not None:
            assert response.json()["error"]["fields"] == fields
    assert await table_counts(session) == before
    assert int(await session.scalar(text("SELECT count(*) FROM recipient_lists")) or 0) == 0


async def test_another_clients_lists_are_invisible(
    api: AsyncClient, tenants: TenantFactory, session: AsyncSession
) -> None:
    a = await tenants.create(client="client-a")
    b = await tenants.create(client="client-b")
    c = await tenants.create(organization="other-org", audience="other-news", client="client-c")
    await put_member(api, b, "course:2025", "r:1", "b@example.com")
    before = await member_rows(session)

    assert (await get_list(api, a, "course:2025")).status_code == 404
    assert (await get_list(api, a, "course")).status_code == 404
    assert (await get_list(api, a, "<all>")).json()["member_count"] == 0
    as_b = scoped(b, member={"email": "x@example.com"})
    assert (await api.put(f"{BASE}/course:2025/members/r:1", json=as_b, headers=a.headers)).status_code == 403
    assert (await api.get(f"{BASE}/course:2025", params=scoped(b), headers=a.headers)).status_code == 403
    other_audience = {"audience": c.audience_slug, "client": a.client_slug}
    response = await api.put(f"{BASE}/course:2025", json=other_audience, headers=a.headers)
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"audience": "not_found"}
    # A's own list of the same key is a different list; B's members stay B's.
    await put_member(api, a, "course:2025", "r:1", "a@example.com", status="removed")
    assert await count(api, b, "course:2025") == 1
    assert [r for r in await member_rows(session) if r[2] == "b@example.com"] == before
    missing = await api.get(f"{BASE}/course", params={"audience": "newsletter"})
    assert missing.status_code == 401


async def test_bulk_bodies_may_exceed_the_default_one_mebibyte_limit(
    api: AsyncClient, tenant: Tenant
) -> None:
    padding = {"note": "x" * 60_000}
    items = members(*((f"r:{i}", f"big{i}@example.com") for i in range(20)), metadata=padding)
    for action in ("bulk-upsert", "reconcile"):
        response = await post_set(api, tenant, "big", action, items)
        assert response.status_code == 200, response.text[:200]
    assert (await count(api, tenant, "big")) == 20
    single = await api.put(
        f"{BASE}/big/members/r:1",
        json=scoped(tenant, member={"email": "big0@example.com"}, pad="x" * (1024 * 1024 + 1)),
        headers=tenant.headers,
    )
    assert single.status_code == 413  # the single-member route keeps the default limit
