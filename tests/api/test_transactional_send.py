import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from datamailer_api.main import create_app
from datamailer_core.contracts import TransactionalEmailV1
from datamailer_core.models import CategoryPreference, Contact, EmailEvent, TransactionalMessage
from datamailer_core.repositories import contacts, scope
from datamailer_core.settings import Settings
from tests.api.transactional_factories import (
    MESSAGES,
    SEND,
    put_template,
    queued_messages,
    send,
    send_body,
)
from tests.conftest import settings_for
from tests.factories import Tenant, TenantFactory

SENDERS = [
    {"id": "support", "email": "Support Team <support@app.example.com>"},
    {"id": "news", "email": "News <news@app.example.com>"},
]


async def _tenant_with_senders(factory: TenantFactory, session: AsyncSession) -> Tenant:
    tenant = await factory.create(senders=SENDERS)
    await scope.set_senders(session, tenant.scope.client, SENDERS, "support")
    await session.commit()
    return tenant


@pytest.fixture
async def tenant(tenants: TenantFactory, session: AsyncSession, api: AsyncClient) -> Tenant:
    tenant = await _tenant_with_senders(tenants, session)
    await put_template(api, tenant)
    return tenant


@pytest.fixture
def queue(api_app: FastAPI, settings: Settings) -> Callable[[], Any]:
    """Everything on moto's transactional-email queue, parsed."""
    url = settings.queues.transactional_email_url
    assert url is not None
    return lambda: queued_messages(api_app.state.sqs, url)


async def _messages(session: AsyncSession) -> list[TransactionalMessage]:
    stmt = select(TransactionalMessage).order_by(TransactionalMessage.id)
    return list((await session.scalars(stmt.execution_options(populate_existing=True))).all())


async def _events(session: AsyncSession, message_id: int) -> list[tuple[str, dict[str, Any]]]:
    rows = await session.execute(
        select(EmailEvent.event_type, EmailEvent.metadata_)
        .where(EmailEvent.transactional_message_id == message_id)
        .order_by(EmailEvent.id)
    )
    return [(t, m) for t, m in rows.all()]


async def _contact(session: AsyncSession, tenant: Tenant, email: str, **state: Any) -> Contact:
    contact, _ = await contacts.get_or_create_contact(session, tenant.scope.organization.id, email)
    for name, value in state.items():
        setattr(contact, name, value)
    await session.commit()
    return contact


# --- accepted -------------------------------------------------------------------------


async def test_accepted_send_stores_the_rendered_message_then_enqueues_it(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, queue: Callable[[], Any]
) -> None:
    response = await send(
        api,
        tenant,
        idempotency_key="reset-1",
        context={"first_name": "<Ada>", "reset_url": "https://example.com/r/1"},
        reply_to="Help <help@app.example.com>",
        cc=["cc@example.com"],
        bcc=["Audit <audit@example.com>"],
        headers={"X-Entity-Ref-ID": "abc-1"},
        metadata={"user_id": 7},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["idempotent_replay"] is False
    assert body["enqueued"] is True
    message = body["message"]
    assert message["email"] == "ada@example.com"
    assert message["from_email"] == "support"
    assert message["from_email_address"] == "Support Team <support@app.example.com>"
    assert message["reply_to"] == "Help <help@app.example.com>"
    assert message["cc"] == ["cc@example.com"]
    assert message["bcc"] == ["Audit <audit@example.com>"]
    assert message["status"] == "queued"
    assert message["template_key"] == "reset"
    assert message["idempotency_key"] == "reset-1"

    [row] = await _messages(session)
    assert row.id == message["id"]
    assert row.subject == "Reset your password, <Ada>"
    assert row.html_body == '<p>Hi &lt;Ada&gt;,</p><p><a href="https://example.com/r/1">Reset</a></p>'
    assert row.text_body == "Hi <Ada>,\nReset: https://example.com/r/1"
    assert row.headers == {"X-Entity-Ref-ID": "abc-1"}
    assert row.metadata_ == {"user_id": 7}
    assert row.enqueued_at is not None
    assert await _events(session, row.id) == [("queued", {"template_key": "reset"})]

    [queued] = await queue()
    assert isinstance(queued, TransactionalEmailV1)
    assert queued.transactional_message_id == row.id
    assert queued.client_id == tenant.scope.client.id == row.client_id
    assert queued.idempotency_key == "reset-1"
    assert queued.contact_id == row.contact_id is not None
    assert queued.template_id == row.template_id
    assert queued.template_key == "reset"


async def test_without_an_idempotency_key_each_send_is_a_new_message(
    api: AsyncClient, tenant: Tenant, queue: Callable[[], Any]
) -> None:
    first = (await send(api, tenant)).json()["message"]
    second = (await send(api, tenant)).json()["message"]
    assert first["id"] != second["id"]
    assert first["idempotency_key"]
    assert first["idempotency_key"] != second["idempotency_key"]
    assert len(await queue()) == 2


async def test_a_publish_failure_after_commit_answers_202_and_leaves_the_row_queued(
    api: AsyncClient, api_app: FastAPI, tenant: Tenant, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(message: Any) -> str:
        raise ConnectionError("SQS is down")

    monkeypatch.setattr(api_app.state.publisher, "publish", broken)
    response = await send(api, tenant)
    assert response.status_code == 202
    assert response.json()["enqueued"] is False
    [row] = await _messages(session)
    assert (row.status, row.enqueued_at) == ("queued", None)


# --- the order of checks --------------------------------------------------------------


async def test_an_unknown_template_is_404_even_with_a_known_idempotency_key(
    api: AsyncClient, tenant: Tenant
) -> None:
    assert (await send(api, tenant, idempotency_key="k-1")).status_code == 202
    response = await send(api, tenant, idempotency_key="k-1", template_key="nope")
    assert response.status_code == 404
    assert response.json()["error"]["fields"] == {"template_key": "not_found"}


async def test_an_inactive_template_cannot_be_sent(api: AsyncClient, tenant: Tenant) -> None:
    await put_template(api, tenant, is_active=False)
    response = await send(api, tenant)
    assert response.status_code == 404
    assert response.json()["error"]["fields"] == {"template_key": "not_found"}


async def test_a_replay_returns_the_same_message_and_enqueues_nothing(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, queue: Callable[[], Any]
) -> None:
    first = await send(api, tenant, idempotency_key="once")
    # A replay wins over checks that come later in the order: a now-missing context
    # value and another sender do not matter.
    again = await send(api, tenant, idempotency_key="once", context={}, from_email="news")
    assert again.status_code == 202, again.text
    assert again.json()["idempotent_replay"] is True
    assert again.json()["enqueued"] is False
    assert again.json()["message"] == first.json()["message"]
    [row] = await _messages(session)
    assert [e for e, _ in await _events(session, row.id)] == ["queued"]
    assert len(await queue()) == 1


async def test_missing_required_context_is_400_before_any_write(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, queue: Callable[[], Any]
) -> None:
    response = await send(api, tenant, email="new-person@example.com", context={"first_name": "Ada"})
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"context.reset_url": "required"}
    assert (
        await contacts.get_contact_by_email(session, tenant.scope.organization.id, "new-person@example.com")
        is None
    )
    assert await _messages(session) == []
    assert await queue() == []


async def test_a_template_that_fails_to_render_is_400_before_any_write(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    await put_template(api, tenant, key="huge", html_body="{{ 'x' * 10**9 }}", required_context=[])
    response = await send(api, tenant, template_key="huge", email="new-person@example.com")
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"html_body": "output_too_large"}
    assert (
        await contacts.get_contact_by_email(session, tenant.scope.organization.id, "new-person@example.com")
        is None
    )


async def test_injection_through_context_values_renders_harmlessly(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    await put_template(
        api,
        tenant,
        key="inj",
        subject="{{ s }}",
        html_body="{{ s }}{{ ''.__class__.__mro__ }}",
        text_body="{{ s }}",
        required_context=[],
    )
    payload = "<script>alert(1)</script>\r\nBcc: victim@example.com {{ ''.__class__ }}"
    response = await send(api, tenant, template_key="inj", context={"s": payload})
    assert response.status_code == 202, response.text
    [row] = await _messages(session)
    assert row.subject == "<script>alert(1)</script> Bcc: victim@example.com {{ ''.__class__ }}"
    assert row.html_body is not None
    assert "<script>" not in row.html_body
    assert row.html_body.startswith("&lt;script&gt;alert(1)&lt;/script&gt;")
    assert "class" not in row.html_body.replace("__class__ }}", "")
    assert row.text_body == payload


# --- sender ---------------------------------------------------------------------------


async def test_sender_comes_from_payload_then_template_then_client(api: AsyncClient, tenant: Tenant) -> None:
    explicit = await send(api, tenant, from_email="news")
    assert explicit.json()["message"]["from_email_address"] == "News <news@app.example.com>"

    from_client = await send(api, tenant)
    assert from_client.json()["message"]["from_email"] == "support"

    await put_template(api, tenant, default_sender_id="news")
    from_template = await send(api, tenant)
    assert from_template.json()["message"]["from_email"] == "news"
    overridden = await send(api, tenant, from_email="support")
    assert overridden.json()["message"]["from_email"] == "support"


@pytest.mark.parametrize(
    ("from_email", "reason"),
    [
        ("support@app.example.com", "invalid"),
        ("Support <support@app.example.com>", "invalid"),
        ("marketing", "not_configured"),
    ],
)
async def test_from_email_must_be_a_configured_sender_id(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, from_email: str, reason: str
) -> None:
    response = await send(api, tenant, from_email=from_email)
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"from_email": reason}
    assert await _messages(session) == []


async def test_no_sender_configured_is_400(api: AsyncClient, tenant: Tenant, session: AsyncSession) -> None:
    await scope.set_senders(session, tenant.scope.client, [], None)
    await session.commit()
    response = await send(api, tenant)
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"from_email": "not_configured"}


# --- payload validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"email": "not-an-address"}, {"email": "invalid"}),
        ({"email": "Ada <ada@example.com>"}, {"email": "invalid"}),
        ({"email": "ada@example.com\r\nBcc: x@example.com"}, {"email": "invalid"}),
        ({"reply_to": "a@example.com\r\nBcc: x@example.com"}, {"reply_to": "invalid"}),
        ({"reply_to": "a@example.com, b@example.com"}, {"reply_to": "invalid"}),
        ({"cc": ["ok@example.com", "nope"]}, {"cc.1": "invalid"}),
        ({"bcc": ["x@example.com\nTo: y@example.com"]}, {"bcc.0": "invalid"}),
        ({"cc": [f"c{i}@example.com" for i in range(21)]}, {"cc": "too_long"}),
        ({"headers": {"From": "ceo@example.com"}}, {"headers.From": "reserved"}),
        ({"headers": {"content-type": "text/plain"}}, {"headers.content-type": "reserved"}),
        ({"headers": {"REPLY-TO": "x@example.com"}}, {"headers.REPLY-TO": "reserved"}),
        ({"headers": {"Message-ID": "<x@example.com>"}}, {"headers.Message-ID": "reserved"}),
        ({"headers": {"X-Ok": "a\r\nBcc: x@example.com"}}, {"headers.X-Ok": "invalid"}),
        ({"headers": {"X Bad": "v"}}, {"headers.X Bad": "invalid"}),
        ({"headers": {"X-" + "a" * 200: "v"}}, {"headers": "invalid"}),
        ({"headers": {f"X-H{i}": "v" for i in range(21)}}, {"headers": "too_long"}),
        ({"category_tag": "billing"}, {"audience": "required"}),
        ({"audience": "no-such-audience"}, {"audience": "not_found"}),
        ({"metadata": {"x": float("nan")}}, {"metadata": "invalid"}),
        ({"context": {"x": "nul\x00"}}, {"context": "invalid"}),
        ({"context": {"x": "lone \ud800 surrogate"}}, {"context": "invalid"}),
        ({"headers": {"X-A": "nul\x00"}}, {"headers.X-A": "invalid"}),
        ({"email": None}, {"email": "invalid"}),
    ],
)
async def test_invalid_payloads_are_400_and_write_nothing(
    api: AsyncClient,
    tenant: Tenant,
    session: AsyncSession,
    overrides: dict[str, Any],
    fields: dict[str, str],
) -> None:
    content = json.dumps(send_body(**overrides))  # NaN included: Python's JSON parser accepts it
    response = await api.post(
        SEND, content=content, headers={**tenant.headers, "content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["fields"] == fields
    assert await _messages(session) == []


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        # A trailing newline must not slip past a `$` anchor, nor any other control character.
        ({"headers": {"Bcc\n": "victim@example.com"}}, {"headers": "invalid"}),
        ({"headers": {"X-Ref\n": "1"}}, {"headers": "invalid"}),
        ({"from_email": "sender\n"}, {"from_email": "invalid"}),
        ({"email": "ada@example.com\u2028"}, {"email": "invalid"}),
        *(
            ({"headers": {"X-Ok": f"a{ch}Bcc: x@example.com"}}, {"headers.X-Ok": "invalid"})
            for ch in ("\x0b", "\x0c", "\x85", "\u2028", "\u2029", "\t", "\x1b", "\u202e")
        ),
        ({"reply_to": "Help\x0bBcc: x@example.com <help@example.com>"}, {"reply_to": "invalid"}),
        ({"reply_to": "help@example.com\n"}, {"reply_to": "invalid"}),
        ({"reply_to": "Help <help@example.com> trailing"}, {"reply_to": "invalid"}),
        ({"cc": ["Copy\u2028 <copy@example.com>"]}, {"cc.0": "invalid"}),
        ({"cc": ["<copy@example.com> eve@example.com"]}, {"cc.0": "invalid"}),
        ({"bcc": ["blind@example.com\x85"]}, {"bcc.0": "invalid"}),
        ({"bcc": ["Blind: <blind@example.com>"]}, {"bcc.0": "invalid"}),
    ],
)
async def test_control_characters_and_trailing_text_in_headers_are_400(
    api: AsyncClient,
    tenant: Tenant,
    session: AsyncSession,
    overrides: dict[str, Any],
    fields: dict[str, str],
) -> None:
    response = await send(api, tenant, **overrides)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert response.json()["error"]["fields"] == fields
    assert await _messages(session) == []


async def test_one_mailbox_with_a_quoted_display_name_is_accepted(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    response = await send(
        api, tenant, reply_to='"Help, Desk" <help@example.com>', cc=["Dr. Who <who@example.com>"]
    )
    assert response.status_code == 202, response.text
    assert response.json()["message"]["reply_to"] == '"Help, Desk" <help@example.com>'
    assert response.json()["message"]["cc"] == ['"Dr. Who" <who@example.com>']  # canonical: quoted


async def test_payload_errors_come_before_the_template_lookup(api: AsyncClient, tenant: Tenant) -> None:
    response = await send(api, tenant, template_key="nope", email="bad")
    assert response.status_code == 400


async def test_naming_another_client_is_forbidden(api: AsyncClient, tenant: Tenant) -> None:
    response = await send(api, tenant, client="someone-else")
    assert response.status_code == 403


# --- delivery decision ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ({"hard_bounced_at": datetime.now(UTC)}, "hard_bounce"),
        ({"complained_at": datetime.now(UTC)}, "complaint"),
    ],
)
async def test_a_suppressed_contact_gets_409_and_a_stored_skipped_message(
    api: AsyncClient,
    tenant: Tenant,
    session: AsyncSession,
    queue: Callable[[], Any],
    state: dict[str, Any],
    reason: str,
) -> None:
    await _contact(session, tenant, "ada@example.com", **state)
    response = await send(api, tenant, idempotency_key="s-1")
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["error"]["code"] == "transactional_suppressed"
    assert body["error"]["reason"] == reason
    assert body["message"]["status"] == "skipped"
    assert body["enqueued"] is False
    [row] = await _messages(session)
    assert (row.id, row.status, row.status_reason) == (body["message"]["id"], "skipped", reason)
    assert await _events(session, row.id) == [("skipped", {"reason": reason})]
    assert await queue() == []

    replay = await send(api, tenant, idempotency_key="s-1")
    assert replay.status_code == 409
    assert replay.json()["idempotent_replay"] is True
    assert replay.json()["message"]["id"] == row.id


async def test_a_global_unsubscribe_blocks_only_categorized_mail(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    await _contact(session, tenant, "ada@example.com", global_unsubscribed_at=datetime.now(UTC))
    assert (await send(api, tenant)).status_code == 202
    scoped = {"audience": tenant.audience_slug, "client": tenant.client_slug}
    response = await send(api, tenant, category_tag="tips", **scoped)
    assert response.status_code == 409
    assert response.json()["error"]["reason"] == "global_unsubscribe"


async def test_a_disabled_category_blocks_mail_of_that_category(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    contact = await _contact(session, tenant, "ada@example.com")
    session.add(
        CategoryPreference(
            contact_id=contact.id,
            audience_id=tenant.scope.audience.id,
            client_id=tenant.scope.client.id,
            tag="tips",
            enabled=False,
        )
    )
    await session.commit()
    scoped = {"audience": tenant.audience_slug, "client": tenant.client_slug}
    blocked = await send(api, tenant, category_tag="tips", **scoped)
    assert blocked.status_code == 409
    assert blocked.json()["error"]["reason"] == "category_unsubscribe"
    assert (await send(api, tenant, category_tag="billing", **scoped)).status_code == 202
    assert (await send(api, tenant)).status_code == 202
    # The category is the tag's slug, as everywhere a tag enters.
    named = await send(api, tenant, category_tag="Tips", **scoped)
    assert named.status_code == 409
    assert named.json()["error"]["reason"] == "category_unsubscribe"
    refused = await send(api, tenant, category_tag="!!!", **scoped)
    assert refused.status_code == 400
    assert refused.json()["error"]["fields"] == {"category_tag": "invalid"}


async def test_no_subscription_is_needed_for_transactional_mail(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    response = await send(api, tenant, email="Stranger@Example.com ")
    assert response.status_code == 202
    contact = await contacts.get_contact_by_email(
        session, tenant.scope.organization.id, "stranger@example.com"
    )
    assert contact is not None
    [row] = await _messages(session)
    assert row.contact_id == contact.id


# --- dry run --------------------------------------------------------------------------


async def test_dry_run_renders_and_decides_but_stores_and_sends_nothing(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, queue: Callable[[], Any]
) -> None:
    response = await send(api, tenant, email="fresh@example.com", dry_run=True, idempotency_key="d-1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"]["id"] is None
    assert body["message"]["from_email_address"] == "Support Team <support@app.example.com>"
    assert body["rendered"] == {
        "subject": "Reset your password, Ada",
        "html_body": '<p>Hi Ada,</p><p><a href="https://example.com/r/1">Reset</a></p>',
        "text_body": "Hi Ada,\nReset: https://example.com/r/1",
    }
    assert body["would_deliver"] is True
    assert body["delivery_decision"] == {"allowed": True, "reason": ""}
    assert body["message"]["reply_to"] == ""  # Datamailer's empty values, not null
    assert (
        await contacts.get_contact_by_email(session, tenant.scope.organization.id, "fresh@example.com")
        is None
    )
    assert await _messages(session) == []
    assert await queue() == []
    # The key was not used up.
    assert (await send(api, tenant, email="fresh@example.com", idempotency_key="d-1")).json()[
        "idempotent_replay"
    ] is False


async def test_dry_run_reports_a_blocked_delivery(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    await _contact(session, tenant, "ada@example.com", hard_bounced_at=datetime.now(UTC))
    body = (await send(api, tenant, dry_run=True)).json()
    assert body["would_deliver"] is False
    assert body["delivery_decision"] == {"allowed": False, "reason": "hard_bounce"}
    assert await _messages(session) == []


async def test_dry_run_still_validates(api: AsyncClient, tenant: Tenant) -> None:
    response = await send(api, tenant, dry_run=True, context={})
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"context.reset_url": "required"}


# --- message status -------------------------------------------------------------------


async def test_message_status_shows_events_oldest_first(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    message_id = (await send(api, tenant)).json()["message"]["id"]
    row = (await _messages(session))[0]
    session.add(
        EmailEvent(
            event_type="sent",
            transactional_message_id=message_id,
            client_id=row.client_id,
            contact_id=row.contact_id,
            metadata_={"ses_message_id": "ses-1"},
            created_at=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, 1),
        )
    )
    await session.commit()
    response = await api.get(f"{MESSAGES}/{message_id}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"]["id"] == message_id
    assert body["message"]["subject"] == "Reset your password, Ada"
    assert body["message"]["status"] == "queued"
    assert body["message"]["from_email"] == "support"
    assert body["message"]["contact_id"] == row.contact_id
    assert [e["event_type"] for e in body["events"]] == ["queued", "sent"]
    assert body["events"][1]["metadata"] == {"ses_message_id": "ses-1"}


async def test_another_clients_message_is_404(
    api: AsyncClient, tenant: Tenant, tenants: TenantFactory
) -> None:
    other = await tenants.create(client="other-app")
    message_id = (await send(api, tenant)).json()["message"]["id"]
    response = await api.get(f"{MESSAGES}/{message_id}", headers=other.headers)
    assert response.status_code == 404
    assert response.json()["error"]["fields"] == {"message_id": "not_found"}
    assert (await api.get(f"{MESSAGES}/{message_id + 1000}", headers=tenant.headers)).status_code == 404
    assert (await api.get(f"{MESSAGES}/{2**63}", headers=tenant.headers)).status_code == 400


# --- concurrency ----------------------------------------------------------------------


@pytest.fixture
async def committed_apps(
    make_database: Callable[[], str], settings: Settings
) -> AsyncIterator[tuple[list[AsyncClient], Tenant, AsyncEngine]]:
    """Two API instances on a fresh database, so each request really commits."""
    url = make_database()
    queue_url = settings.queues.transactional_email_url
    assert queue_url is not None
    real = settings_for(url, settings.aws.endpoint_url, SQS_TRANSACTIONAL_EMAIL_QUEUE_URL=queue_url)
    engine = create_async_engine(url)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            factory = TenantFactory(session, real.security.secret_key.get_secret_value())
            tenant = await _tenant_with_senders(factory, session)
        apps = [create_app(real), create_app(real)]
        async with LifespanManager(apps[0]), LifespanManager(apps[1]):
            clients = [
                AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test")
                for app in apps
            ]
            await put_template(clients[0], tenant)
            yield clients, tenant, engine
            for client in clients:
                await client.aclose()
    finally:
        await engine.dispose()


async def test_concurrent_sends_with_one_key_create_one_message(
    committed_apps: tuple[list[AsyncClient], Tenant, AsyncEngine], api_app: FastAPI, settings: Settings
) -> None:
    (first, second), tenant, engine = committed_apps
    keys = [f"race-{i}" for i in range(5)]
    responses = await asyncio.gather(
        *(
            client.post(SEND, json=send_body(idempotency_key=key), headers=tenant.headers)
            for key in keys
            for client in (first, second)
        )
    )
    assert [r.status_code for r in responses] == [202] * 10, [r.text for r in responses]
    for i, key in enumerate(keys):
        pair = [responses[2 * i].json(), responses[2 * i + 1].json()]
        assert pair[0]["message"]["id"] == pair[1]["message"]["id"]
        assert sorted(p["idempotent_replay"] for p in pair) == [False, True], key
    async with engine.connect() as conn:
        stored = await conn.execute(select(TransactionalMessage.idempotency_key).order_by("idempotency_key"))
        assert [key for (key,) in stored] == keys
    url = settings.queues.transactional_email_url
    assert url is not None
    assert sorted(m.idempotency_key for m in await queued_messages(api_app.state.sqs, url)) == keys
