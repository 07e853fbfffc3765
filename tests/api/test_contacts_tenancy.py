"""Organizations are tenants: the same address in two organizations is two contacts.

Organization A has two clients (a1, a2) sharing one audience; organization B has its own.
B upserting, changing and erasing an address that A also has never reads, changes or
removes anything of A's, on any contact route. What SES reports about the mailbox (a hard
bounce, a complaint) is the one thing that holds in every organization."""

from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.repositories.contacts import record_mailbox_fact
from tests.api.contacts_factories import scoped, status, upsert
from tests.api.transactional_factories import MESSAGES, put_template, send
from tests.factories import Tenant, TenantFactory

SHARED = "Shared.Person@Example.com"


@pytest.fixture
async def orgs(tenants: TenantFactory) -> tuple[Tenant, Tenant, Tenant]:
    a1 = await tenants.create(organization="org-a", audience="news", client="a1")
    a2 = await tenants.create(organization="org-a", audience="news", client="a2")
    b = await tenants.create(organization="org-b", audience="news", client="b")
    return a1, a2, b


async def _a_knows_the_address(api: AsyncClient, a1: Tenant) -> dict[str, Any]:
    """A's contact: subscribed, verified, validated with a note, tagged, with a
    category preference, a transactional message and history."""
    contact = (
        await upsert(
            api,
            a1,
            SHARED,
            status="subscribed",
            verified=True,
            tags=["vip"],
            email_validation={"status": "valid", "reason": "checked by A's vendor"},
        )
    ).json()
    response = await api.put(
        "/api/contacts/preferences",
        json={**scoped(a1, email=SHARED), "categories": [{"tag": "digest", "enabled": False}]},
        headers=a1.headers,
    )
    assert response.status_code == 200, response.text
    await put_template(api, a1)
    sent = await send(api, a1, email=SHARED, idempotency_key="a-1")
    assert sent.status_code == 202, sent.text
    return {"contact": contact, "message_id": sent.json()["message"]["id"]}


async def _a_view(api: AsyncClient, a1: Tenant, contact_id: int, message_id: int) -> dict[str, Any]:
    """Everything A can read about the address."""
    history = await api.get(f"/api/contacts/{contact_id}/history", headers=a1.headers)
    prefs = await api.get(
        "/api/contacts/preferences",
        params=scoped(a1, email=SHARED, category_tags="digest"),
        headers=a1.headers,
    )
    listing = await api.get("/api/contacts", params=scoped(a1), headers=a1.headers)
    message = await api.get(f"{MESSAGES}/{message_id}", headers=a1.headers)
    for response in (history, prefs, listing, message):
        assert response.status_code == 200, response.text
    return {
        "status": await status(api, a1, SHARED),
        "history": history.json(),
        "preferences": prefs.json(),
        "listing": listing.json(),
        "message": message.json()["message"],
    }


async def test_another_organization_never_reads_changes_or_erases_a_contact(
    api: AsyncClient, orgs: tuple[Tenant, Tenant, Tenant]
) -> None:
    a1, _, b = orgs
    known = await _a_knows_the_address(api, a1)
    a_id = known["contact"]["contact_id"]
    before = await _a_view(api, a1, a_id, known["message_id"])
    assert before["status"]["can_send_marketing"] is True

    # B's first sight of the address shows nothing of A's.
    first = (await upsert(api, b, SHARED)).json()
    assert first["contact_id"] != a_id
    assert first["verified"] is False
    assert first["email_validation"] == {"status": "unknown", "reason": None, "validated_at": None}
    assert first["tags"] == []

    # B writes every client-writable field, then unsubscribes globally and erases.
    written = (
        await upsert(
            api,
            b,
            SHARED,
            status="subscribed",
            verified=True,
            tags=["b-only"],
            email_validation={"status": "manually_invalid", "reason": "B's note"},
            suppression={"hard_bounced": True, "complained": True, "global_unsubscribed": True},
        )
    ).json()
    assert written["email_validation"]["reason"] == "B's note"
    assert written["can_send_transactional"] is False
    b_id = written["contact_id"]
    for method, path, body in (
        ("PATCH", f"/api/contacts/{b_id}/verification", {"verified": False}),
        ("PATCH", f"/api/contacts/{b_id}/validation", {"status": "risky", "reason": "again"}),
        ("PATCH", f"/api/contacts/{b_id}/suppression", {"hard_bounced": True, "reason": "b"}),
        ("PUT", f"/api/contacts/{b_id}/tags", {"tags": ["b-two"]}),
    ):
        response = await api.request(method, path, json=body, headers=b.headers)
        assert response.status_code == 200, (path, response.text)
    response = await api.post(
        "/api/subscriptions/unsubscribe",
        json={**scoped(b, email=SHARED), "scope": "global"},
        headers=b.headers,
    )
    assert response.status_code == 200, response.text
    assert (
        await api.post("/api/contacts/erase", json=scoped(b, email=SHARED), headers=b.headers)
    ).json() == {
        "erased": True,
        "suppressed": True,
    }

    # B's key cannot reach A's contact through its id either.
    for method, path in (
        ("PATCH", f"/api/contacts/{a_id}/verification"),
        ("GET", f"/api/contacts/{a_id}/history"),
        ("PUT", f"/api/contacts/{a_id}/tags"),
        ("POST", f"/api/contacts/{a_id}/tags/x"),
        ("DELETE", f"/api/contacts/{a_id}/tags/vip"),
    ):
        payload: dict[str, Any] | None = {"verified": False} if method == "PATCH" else None
        if method == "PUT":
            payload = {"tags": []}
        response = await api.request(method, path, json=payload, headers=b.headers)
        assert response.status_code == 404, (path, response.text)

    # A sees exactly what it saw before.
    assert await _a_view(api, a1, a_id, known["message_id"]) == before

    # B's erasure kept B's suppression for B only: the address comes back suppressed in B.
    again = (await upsert(api, b, SHARED, status="subscribed")).json()
    assert again["global_unsubscribed"] is True
    assert again["hard_bounced"] is True
    assert again["can_send_marketing"] is False
    assert again["contact_id"] not in (a_id, b_id)
    assert (await status(api, a1, SHARED))["can_send_marketing"] is True


async def test_clients_of_one_organization_share_its_contact(
    api: AsyncClient, orgs: tuple[Tenant, Tenant, Tenant]
) -> None:
    a1, a2, b = orgs
    from_a1 = (await upsert(api, a1, SHARED, status="subscribed", verified=True)).json()
    from_a2 = (await upsert(api, a2, SHARED, status="subscribed", verified=True)).json()
    from_b = (await upsert(api, b, SHARED, status="subscribed", verified=True)).json()
    assert from_a1["contact_id"] == from_a2["contact_id"] != from_b["contact_id"]

    response = await api.patch(
        f"/api/contacts/{from_a1['contact_id']}/suppression",
        json={"hard_bounced": True, "reason": "seen bouncing by a1"},
        headers=a1.headers,
    )
    assert response.status_code == 200, response.text
    assert (await status(api, a2, SHARED))["can_send_transactional"] is False
    assert (await status(api, b, SHARED))["can_send_transactional"] is True

    # Erasure is the organization's: a1's erase removes a2's subscription too, not B's.
    response = await api.post("/api/contacts/erase", json=scoped(a1, email=SHARED), headers=a1.headers)
    assert response.status_code == 200, response.text
    assert (await status(api, a2, SHARED))["exists"] is False
    assert (await status(api, b, SHARED))["exists"] is True


async def test_a_mailbox_fact_from_ses_holds_in_every_organization(
    api: AsyncClient, session: AsyncSession, orgs: tuple[Tenant, Tenant, Tenant], tenants: TenantFactory
) -> None:
    a1, _, b = orgs
    await upsert(api, a1, SHARED, status="subscribed", verified=True)
    await upsert(api, b, SHARED, status="subscribed", verified=True)

    changed = await record_mailbox_fact(session, "shared.person@example.com", "hard_bounce")
    await session.commit()
    assert len(changed) == 2
    assert await record_mailbox_fact(session, "shared.person@example.com", "hard_bounce") == []
    await session.commit()

    assert (await status(api, a1, SHARED))["hard_bounced"] is True
    assert (await status(api, b, SHARED))["hard_bounced"] is True
    c = await tenants.create(organization="org-c", audience="news", client="c")
    assert (await upsert(api, c, SHARED, status="subscribed")).json()["hard_bounced"] is True
    # A client cannot clear what the mailbox reported for everyone else.
    response = await api.post(
        "/api/contacts",
        json={**scoped(c, email=SHARED), "suppression": {"hard_bounced": False}},
        headers=c.headers,
    )
    assert response.status_code == 200
    assert (await status(api, a1, SHARED))["hard_bounced"] is True
    rows = await session.scalar(text("SELECT count(*) FROM suppressions WHERE organization_id IS NULL"))
    assert rows == 1
