"""Transactional send to a recipient list through the API: one message per member of the
list and its sublists, idempotent per member, suppression as a single send decides it,
tenant isolation, and bad input that writes nothing."""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_api.lists import send as send_service
from datamailer_core.models import EmailEvent, TransactionalMessage
from datamailer_core.repositories import contacts, scope
from datamailer_core.settings import Settings
from tests.api.contacts_factories import scoped
from tests.api.transactional_factories import put_template, queued_messages
from tests.factories import Tenant, TenantFactory

BASE = "/api/recipient-lists"
SENDERS = [{"id": "support", "email": "Support Team <support@app.example.com>"}]
CONTEXT = {"first_name": "Ada", "reset_url": "https://example.com/r/1"}


async def _tenant(
    tenants: TenantFactory, session: AsyncSession, api: AsyncClient, client: str = "app"
) -> Tenant:
    tenant = await tenants.create(client=client, senders=SENDERS)
    await scope.set_senders(session, tenant.scope.client, SENDERS, "support")
    await session.commit()
    await put_template(api, tenant)
    return tenant


@pytest.fixture
async def tenant(tenants: TenantFactory, session: AsyncSession, api: AsyncClient) -> Tenant:
    return await _tenant(tenants, session, api)


@pytest.fixture
def queue(api_app: FastAPI, settings: Settings) -> Callable[[], Any]:
    url = settings.queues.transactional_email_url
    assert url is not None
    return lambda: queued_messages(api_app.state.sqs, url)


async def add_members(api: AsyncClient, tenant: Tenant, key: str, *pairs: tuple[str, str]) -> None:
    items = [{"source_object_key": source, "email": email} for source, email in pairs]
    response = await api.post(
        f"{BASE}/{key}/members/bulk-upsert", json=scoped(tenant, members=items), headers=tenant.headers
    )
    assert response.status_code == 200, response.text


async def list_send(api: AsyncClient, tenant: Tenant, key: str, **overrides: Any) -> Response:
    body = scoped(tenant, template_key="reset", idempotency_key="score:hw1", context=CONTEXT)
    body.update(overrides)
    return await api.post(f"{BASE}/{key}/transactional-send", json=body, headers=tenant.headers)


async def messages(session: AsyncSession) -> list[TransactionalMessage]:
    stmt = select(TransactionalMessage).order_by(TransactionalMessage.contact_id)
    return list((await session.scalars(stmt.execution_options(populate_existing=True))).all())


async def written(session: AsyncSession) -> dict[str, int]:
    tables = ("transactional_messages", "email_events", "webhook_deliveries")
    return {t: int(await session.scalar(text(f"select count(*) from {t}")) or 0) for t in tables}


@pytest.fixture
async def course(api: AsyncClient, tenant: Tenant) -> None:
    """`course` holds one and two; its sublists hold two (again) and three."""
    await add_members(api, tenant, "course", ("r:1", "one@example.com"), ("r:2", "two@example.com"))
    await add_members(api, tenant, "course:hw1", ("s:2", "two@example.com"), ("s:3", "three@example.com"))
    await add_members(api, tenant, "course:hw1:late", ("s:4", "three@example.com"))


@pytest.mark.usefixtures("course")
async def test_every_member_of_the_list_and_its_sublists_gets_one_message(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, queue: Callable[[], Any]
) -> None:
    await add_members(api, tenant, "other", ("o:1", "outsider@example.com"))
    listed = await api.get(
        f"{BASE}/course", params={"audience": tenant.audience_slug}, headers=tenant.headers
    )
    assert listed.json()["member_count"] == 3

    response = await list_send(api, tenant, "course", metadata={"source": "cmp"})
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["counts"] == {"members": 3, "created": 3, "queued": 3, "skipped": 0, "enqueued": 3}
    assert out["idempotent_replay"] is False
    assert out["skipped"] == []

    rows = await messages(session)
    assert sorted(m.email for m in rows) == ["one@example.com", "three@example.com", "two@example.com"]
    assert {m.status for m in rows} == {"queued"}
    assert all(m.enqueued_at is not None for m in rows)
    assert {m.subject for m in rows} == {"Reset your password, Ada"}
    assert {m.idempotency_key for m in rows} == {f"score:hw1:contact-{m.contact_id}" for m in rows}
    assert rows[0].metadata_ == {"source": "cmp", "list_key": "course"}
    events = (await session.execute(select(EmailEvent.event_type, EmailEvent.transactional_message_id))).all()
    assert sorted(events) == sorted(("queued", m.id) for m in rows)

    queued = await queue()
    assert sorted(q.transactional_message_id for q in queued) == sorted(m.id for m in rows)
    assert {q.client_id for q in queued} == {tenant.scope.client.id}


@pytest.mark.usefixtures("course")
async def test_a_sublist_send_reaches_only_the_sublist(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    response = await list_send(api, tenant, "course:hw1")
    assert response.status_code == 200, response.text
    assert response.json()["counts"]["members"] == 2
    assert sorted(m.email for m in await messages(session)) == ["three@example.com", "two@example.com"]


@pytest.mark.usefixtures("course")
async def test_a_repeat_with_the_same_key_creates_and_enqueues_nothing_and_answers_the_same(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, queue: Callable[[], Any]
) -> None:
    first = await list_send(api, tenant, "course")
    assert first.status_code == 200, first.text
    before = await written(session)
    again = await list_send(api, tenant, "course")
    assert again.status_code == 200, again.text
    assert await written(session) == before
    assert again.json()["idempotent_replay"] is True
    assert again.json()["counts"] == {**first.json()["counts"], "created": 0, "enqueued": 0}
    assert len(await queue()) == 3

    # A member who joined since gets the one message that is missing, nothing more.
    await add_members(api, tenant, "course:hw1", ("s:5", "five@example.com"))
    third = await list_send(api, tenant, "course")
    assert third.json()["counts"] == {"members": 4, "created": 1, "queued": 4, "skipped": 0, "enqueued": 1}
    assert len(await messages(session)) == 4

    # Another key is another send.
    other = await list_send(api, tenant, "course", idempotency_key="score:hw2")
    assert other.json()["counts"]["created"] == 4


@pytest.mark.usefixtures("course")
async def test_suppressed_members_are_skipped_with_their_reason_and_not_enqueued(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, queue: Callable[[], Any]
) -> None:
    org = tenant.scope.organization.id
    bounced, _ = await contacts.get_or_create_contact(session, org, "two@example.com")
    bounced.hard_bounced_at = datetime.now(UTC)
    unsubscribed, _ = await contacts.get_or_create_contact(session, org, "three@example.com")
    unsubscribed.global_unsubscribed_at = datetime.now(UTC)
    await session.commit()

    # Without a category a global unsubscribe does not block a transactional message.
    response = await list_send(api, tenant, "course")
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["counts"] == {"members": 3, "created": 3, "queued": 2, "skipped": 1, "enqueued": 2}
    [skip] = out["skipped"]
    assert (skip["email"], skip["reason"], skip["contact_id"]) == (
        "two@example.com",
        "hard_bounce",
        bounced.id,
    )
    row = next(m for m in await messages(session) if m.email == "two@example.com")
    assert (row.status, row.status_reason, row.enqueued_at) == ("skipped", "hard_bounce", None)
    on_queue = {q.transactional_message_id for q in await queue()}
    assert on_queue == {m.id for m in await messages(session) if m.status == "queued"}
    assert len(on_queue) == 2

    # With a category, the global unsubscribe blocks as it does in a single send.
    tagged = await list_send(api, tenant, "course", idempotency_key="news:1", category_tag="news")
    reasons = {s["email"]: s["reason"] for s in tagged.json()["skipped"]}
    assert reasons == {"two@example.com": "hard_bounce", "three@example.com": "global_unsubscribe"}


@pytest.mark.usefixtures("course")
async def test_another_clients_list_is_404(
    api: AsyncClient, tenants: TenantFactory, session: AsyncSession
) -> None:
    # Same organization and audience, another client: the list is not its list.
    other = await _tenant(tenants, session, api, client="other")
    before = await written(session)
    response = await list_send(api, other, "course")
    assert response.status_code == 404, response.text
    assert response.json()["error"]["fields"] == {"list_key": "not_found"}
    assert await written(session) == before


@pytest.mark.usefixtures("course")
@pytest.mark.parametrize(
    ("overrides", "status", "fields"),
    [
        ({"template_key": "no such key!"}, 400, {"template_key": "invalid"}),
        ({"context": {"first_name": "Ada"}}, 400, {"context.reset_url": "required"}),
        ({"idempotency_key": ""}, 400, None),
        ({"members": []}, 400, None),
        ({"template_key": "missing"}, 404, {"template_key": "not_found"}),
    ],
)
async def test_bad_input_is_refused_and_writes_nothing(
    api: AsyncClient,
    tenant: Tenant,
    session: AsyncSession,
    queue: Callable[[], Any],
    overrides: dict[str, Any],
    status: int,
    fields: dict[str, str] | None,
) -> None:
    before = await written(session)
    response = await list_send(api, tenant, "course", **overrides)
    assert response.status_code == status, response.text
    if fields is not None:
        assert response.json()["error"]["fields"] == fields
    assert await written(session) == before
    assert await queue() == []


async def test_more_members_than_one_sqs_batch_are_all_enqueued(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, queue: Callable[[], Any]
) -> None:
    await add_members(api, tenant, "wide", *[(f"w:{i}", f"w{i}@example.com") for i in range(23)])
    response = await list_send(api, tenant, "wide")
    assert response.json()["counts"]["enqueued"] == 23
    assert sorted(q.transactional_message_id for q in await queue()) == sorted(
        m.id for m in await messages(session)
    )


async def test_a_list_whose_members_were_all_removed_sends_nothing(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, queue: Callable[[], Any]
) -> None:
    await add_members(api, tenant, "gone", ("g:1", "gone@example.com"))
    response = await api.put(
        f"{BASE}/gone/members/g:1",
        json=scoped(tenant, member={"email": "gone@example.com", "status": "removed"}),
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text
    out = (await list_send(api, tenant, "gone")).json()
    assert out["counts"] == {"members": 0, "created": 0, "queued": 0, "skipped": 0, "enqueued": 0}
    assert out["idempotent_replay"] is False
    assert await messages(session) == []
    assert await queue() == []


async def test_a_list_over_the_bound_is_refused_before_anything_is_written(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(send_service, "MAX_LIST_SEND_MEMBERS", 2)
    await add_members(api, tenant, "big", *[(f"b:{i}", f"b{i}@example.com") for i in range(3)])
    before = await written(session)
    response = await list_send(api, tenant, "big")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["fields"] == {"list_key": "too_many_members"}
    assert await written(session) == before
