"""Campaign definitions over the API: upsert, read, validation before any write, tenant
isolation, queueing (off the request path), preview and test sends (through moto's SES)."""

import email
import email.policy
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from httpx import AsyncClient
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.models import Campaign, Suppression
from datamailer_core.repositories import contacts, scope
from tests.api.campaign_factories import CAMPAIGNS, campaign_body, put_campaign
from tests.factories import Tenant, TenantFactory

SENDERS = [
    {"id": "news", "email": "The News <news@app.example.com>"},
    {"id": "support", "email": "support@app.example.com"},
]


@pytest.fixture
async def tenant(tenants: TenantFactory, session: AsyncSession) -> Tenant:
    created = await tenants.create(senders=SENDERS)
    await scope.set_senders(session, created.scope.client, SENDERS, "news")
    await session.commit()
    return created


async def test_campaign_tags_are_slugified(api: AsyncClient, tenant: Tenant) -> None:
    created = await api.put(
        f"{CAMPAIGNS}/slugs",
        json=campaign_body(
            tenant,
            include_tags=["Weekly News", "VIP", "weekly-news"],
            exclude_tags=["Old Customers"],
            category_tag="Weekly News",
        ),
        headers=tenant.headers,
    )
    assert created.status_code == 201, created.text
    campaign = created.json()["campaign"]
    assert campaign["include_tags"] == ["vip", "weekly-news"]
    assert campaign["exclude_tags"] == ["old-customers"]
    assert campaign["category_tag"] == "weekly-news"


async def campaign_count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(Campaign)) or 0)


async def test_put_creates_then_replaces_a_draft_with_sorted_unique_tags(
    api: AsyncClient, tenant: Tenant
) -> None:
    created = await api.put(
        f"{CAMPAIGNS}/2026-11 news",
        json=campaign_body(
            tenant,
            include_tags=["vip", "customers", "vip"],
            exclude_tags=["churned", "bounced", "churned"],
            category_tag="newsletter",
            from_email="news",
            metadata={"owner": "marketing"},
        ),
        headers=tenant.headers,
    )
    assert created.status_code == 201, created.text
    campaign = created.json()["campaign"]
    assert created.json()["created"] is True
    assert campaign["external_key"] == "2026-11 news"
    assert campaign["status"] == "draft"
    assert campaign["include_tags"] == ["customers", "vip"]
    assert campaign["exclude_tags"] == ["bounced", "churned"]
    assert (campaign["from_email"], campaign["from_email_address"]) == (
        "news",
        "The News <news@app.example.com>",
    )
    assert campaign["metadata"] == {"owner": "marketing"}
    assert campaign["counters"]["recipient_count"] == 0
    assert campaign["rates"]["open_rate"] == 0.0

    replaced = await api.put(
        f"{CAMPAIGNS}/2026-11 news", json=campaign_body(tenant, subject="Changed"), headers=tenant.headers
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["created"] is False
    again = (await api.get(f"{CAMPAIGNS}/2026-11 news", headers=tenant.headers)).json()["campaign"]
    assert again["subject"] == "Changed"
    assert again["include_tags"] == []
    assert again["id"] == campaign["id"]
    # No sender named: the client's default.
    assert again["from_email"] == "news"


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"html_body": None, "text_body": None}, {"html_body": "required", "text_body": "required"}),
        ({"html_body": "  ", "text_body": None}, {"html_body": "required", "text_body": "required"}),
        ({"subject": "x" * 256}, {"subject": "too_long"}),
        ({"subject": " "}, {"subject": "required"}),
        ({"subject": "Hi\r\nBcc: evil@example.com"}, {"subject": "invalid"}),
        ({"subject": "Hi {{ email"}, {"subject": "invalid_template"}),
        ({"html_body": "{% for %}"}, {"html_body": "invalid_template"}),
        ({"from_email": "news@app.example.com"}, {"from_email": "invalid"}),
        ({"from_email": "nobody"}, {"from_email": "not_configured"}),
        ({"audience": "elsewhere"}, {"audience": "not_found"}),
        ({"include_tags": ["!!!"]}, {"include_tags.0": "invalid"}),
        ({"exclude_tags": ["ok", "Ab " * 30]}, {"exclude_tags.1": "too_long"}),
        ({"exclude_tags": "churned"}, {"exclude_tags": "invalid"}),
        ({"category_tag": ""}, {"category_tag": "invalid"}),
        ({"scheduled_at": "tomorrow"}, {"scheduled_at": "invalid"}),
        ({"metadata": ["a"]}, {"metadata": "invalid"}),
        ({"surprise": 1}, {"surprise": "unknown_field"}),
        ({"html_body": "<p>\u0000</p>"}, {"html_body": "invalid"}),
    ],
)
async def test_invalid_definitions_are_rejected_before_any_write(
    api: AsyncClient,
    session: AsyncSession,
    tenant: Tenant,
    overrides: dict[str, Any],
    fields: dict[str, str],
) -> None:
    response = await api.put(
        f"{CAMPAIGNS}/nov", json=campaign_body(tenant, **overrides), headers=tenant.headers
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert response.json()["error"]["fields"] == fields
    assert await campaign_count(session) == 0


@pytest.mark.parametrize(
    ("key", "status"),
    [("k" * 181, 400), ("a%2Fb", 404), ("a%00b", 400), ("tab%09key", 400)],
)
async def test_external_keys_are_limited_to_180_characters_without_slashes(
    api: AsyncClient, session: AsyncSession, tenant: Tenant, key: str, status: int
) -> None:
    response = await api.put(f"{CAMPAIGNS}/{key}", json=campaign_body(tenant), headers=tenant.headers)
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert await campaign_count(session) == 0
    assert (
        await api.put(f"{CAMPAIGNS}/{'k' * 180}", json=campaign_body(tenant), headers=tenant.headers)
    ).status_code == 201


async def test_a_body_that_is_not_a_json_object_is_400(api: AsyncClient, tenant: Tenant) -> None:
    headers = {**tenant.headers, "Content-Type": "application/json"}
    response = await api.put(f"{CAMPAIGNS}/nov", content=b"[1]", headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"body": "must_be_object"}


async def test_another_clients_campaign_is_not_found_on_every_route(
    api: AsyncClient, tenants: TenantFactory, tenant: Tenant
) -> None:
    await put_campaign(api, tenant, "shared-key")
    intruder = await tenants.create(organization="rival", audience="list", client="rival")
    paths = ["", "/queue", "/pause", "/resume", "/cancel", "/preview", "/recipients"]
    for path in paths:
        method = "GET" if path in ("", "/recipients") else "POST"
        response = await api.request(method, f"{CAMPAIGNS}/shared-key{path}", headers=intruder.headers)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    # Its own campaign under the same key is a different one.
    own = await put_campaign(api, intruder, "shared-key")
    assert own.status_code == 201
    mine = (await api.get(f"{CAMPAIGNS}/shared-key", headers=tenant.headers)).json()["campaign"]
    assert mine["id"] != own.json()["campaign"]["id"]
    assert mine["status"] == "draft"


async def test_naming_another_client_is_403_and_another_audience_is_404(
    api: AsyncClient, session: AsyncSession, tenant: Tenant
) -> None:
    await put_campaign(api, tenant)
    # A second audience of the same organization.
    await scope.provision(session, organization="acme", audience="second", client=tenant.client_slug)
    await session.commit()
    forbidden = await api.get(f"{CAMPAIGNS}/nov", params={"client": "someone"}, headers=tenant.headers)
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["fields"] == {"client": "forbidden"}
    other_audience = await api.get(f"{CAMPAIGNS}/nov", params={"audience": "second"}, headers=tenant.headers)
    assert other_audience.status_code == 404
    unknown = await api.post(f"{CAMPAIGNS}/nov/queue", json={"audience": "nope"}, headers=tenant.headers)
    assert unknown.status_code == 400
    assert unknown.json()["error"]["fields"] == {"audience": "not_found"}
    put_elsewhere = await api.put(
        f"{CAMPAIGNS}/nov", json=campaign_body(tenant, client="x"), headers=tenant.headers
    )
    assert put_elsewhere.status_code == 403
    assert (await api.get(f"{CAMPAIGNS}/nov", headers=tenant.headers)).json()["campaign"]["status"] == "draft"


async def test_queue_returns_202_at_once_and_a_second_queue_is_a_no_op(
    api: AsyncClient, tenant: Tenant
) -> None:
    await put_campaign(api, tenant)

    first = await api.post(f"{CAMPAIGNS}/nov/queue", headers=tenant.headers)
    second = await api.post(
        f"{CAMPAIGNS}/nov/queue", json={"client": tenant.client_slug}, headers=tenant.headers
    )

    assert first.status_code == 202, first.text
    body = first.json()
    assert body["queued"] is True
    assert body["campaign"]["status"] == "snapshotting"
    assert body["campaign"]["queued_at"] is not None
    # The snapshot runs in the scheduler: nothing counted yet.
    assert (body["recipient_count"], body["skipped_count"], body["batch_count"]) == (0, 0, 0)
    assert second.status_code == 202
    assert second.json()["queued"] is False
    assert second.json()["campaign"]["queued_at"] == body["campaign"]["queued_at"]


async def test_editing_after_queue_is_409_not_editable_and_changes_nothing(
    api: AsyncClient, tenant: Tenant
) -> None:
    await put_campaign(api, tenant, subject="Original")
    await api.post(f"{CAMPAIGNS}/nov/queue", headers=tenant.headers)

    response = await api.put(
        f"{CAMPAIGNS}/nov", json=campaign_body(tenant, subject="Edited"), headers=tenant.headers
    )

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_editable"
    assert (await api.get(f"{CAMPAIGNS}/nov", headers=tenant.headers)).json()["campaign"][
        "subject"
    ] == "Original"


async def test_queueing_with_a_future_scheduled_at_schedules_and_a_past_one_starts_now(
    api: AsyncClient, tenant: Tenant
) -> None:
    await put_campaign(api, tenant, "later", scheduled_at="2999-01-01T09:00:00+01:00")
    await put_campaign(api, tenant, "past", scheduled_at="2001-01-01T09:00:00Z")

    later = await api.post(f"{CAMPAIGNS}/later/queue", headers=tenant.headers)
    past = await api.post(f"{CAMPAIGNS}/past/queue", headers=tenant.headers)

    assert later.json()["campaign"]["status"] == "scheduled"
    assert later.json()["campaign"]["scheduled_at"] == "2999-01-01T08:00:00Z"
    assert past.json()["campaign"]["status"] == "snapshotting"


async def test_queue_refuses_a_campaign_whose_sender_was_removed(api: AsyncClient, tenant: Tenant) -> None:
    await put_campaign(api, tenant, from_email="support")
    senders = {"senders": [{"id": "news", "email": "news@app.example.com"}], "default_sender_id": "news"}
    assert (await api.put("/api/client/senders", json=senders, headers=tenant.headers)).status_code == 200

    response = await api.post(f"{CAMPAIGNS}/nov/queue", headers=tenant.headers)

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"from_email": "not_configured"}
    assert (await api.get(f"{CAMPAIGNS}/nov", headers=tenant.headers)).json()["campaign"]["status"] == "draft"


async def test_preview_renders_with_placeholder_tokens_and_escapes_values(
    api: AsyncClient, tenant: Tenant, api_app: Any
) -> None:
    await put_campaign(
        api,
        tenant,
        subject="Hello {{ first_name|default:'there' }}",
        html_body='<p>{{ first_name }}</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>',
        text_body="{{ first_name }} / {{ email }} / {{ preferences_url }}",
    )

    response = await api.post(
        f"{CAMPAIGNS}/nov/preview", json={"context": {"first_name": "<b>Ada</b>"}}, headers=tenant.headers
    )
    default = await api.post(f"{CAMPAIGNS}/nov/preview", headers=tenant.headers)

    assert response.status_code == 200, response.text
    preview = response.json()
    base = api_app.state.settings.tracking.public_base_url.rstrip("/")
    assert preview["subject"] == "Hello <b>Ada</b>"
    assert preview["html_body"] == (
        f'<p>&lt;b&gt;Ada&lt;/b&gt;</p><a href="{base}/unsubscribe/preview-token">Unsubscribe</a>'
        f'<img src="{base}/t/o/preview-token.gif" width="1" height="1" alt="" style="display:none">'
    )
    assert preview["text_body"] == f"<b>Ada</b> / recipient@example.com / {base}/unsubscribe/preview-token"
    assert preview["from_email"] == "news"
    assert preview["from_email_address"] == "The News <news@app.example.com>"
    assert preview["headers"] == {
        "List-Unsubscribe": f"<{base}/unsubscribe/preview-token>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert default.json()["subject"] == "Hello there"


async def test_get_of_an_unknown_key_is_404_with_the_field(api: AsyncClient, tenant: Tenant) -> None:
    response = await api.get(f"{CAMPAIGNS}/missing", headers=tenant.headers)
    assert response.status_code == 404
    assert response.json()["error"]["fields"] == {"external_key": "not_found"}


async def test_campaign_routes_need_an_api_key(api: AsyncClient) -> None:
    response = await api.get(f"{CAMPAIGNS}/nov")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_authorization"


def moto_ses_messages(api_app: Any) -> list[Any]:
    endpoint = api_app.state.settings.aws.endpoint_url
    data = httpx.get(f"{endpoint}/moto-api/data.json").json().get("ses", {})
    return [
        email.message_from_string(item["raw_data"], policy=email.policy.default)
        for item in data.get("RawMessage", [])
    ]


async def test_test_send_sends_at_once_to_each_address_and_writes_no_recipient_rows(
    api: AsyncClient, tenant: Tenant, api_app: Any, session: AsyncSession
) -> None:
    await api_app.state.sesv2.create_email_identity(EmailIdentity="news@app.example.com")
    await put_campaign(
        api, tenant, subject="News for {{ email }}", html_body='<a href="https://example.com/a">A</a>'
    )

    response = await api.post(
        f"{CAMPAIGNS}/nov/test-send",
        json={"emails": ["Editor@Example.com", "boss@example.com", "boss@example.com"]},
        headers=tenant.headers,
    )

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["email"], r["status"]) for r in results] == [
        ("Editor@Example.com", "sent"),
        ("boss@example.com", "sent"),
    ]
    assert all(r["message_id"] for r in results)
    messages = moto_ses_messages(api_app)
    assert sorted(m["To"] for m in messages) == ["Editor@Example.com", "boss@example.com"]
    assert {m["Subject"] for m in messages} == {
        "[Test] News for Editor@Example.com",
        "[Test] News for boss@example.com",
    }
    assert all(m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" for m in messages)
    html = messages[0].get_body(("html",)).get_content()
    assert "/t/c/preview-token?u=https%3A%2F%2Fexample.com%2Fa&amp;s=" in html
    assert await session.scalar(text("SELECT count(*) FROM campaign_recipients")) == 0
    assert await session.scalar(text("SELECT count(*) FROM email_events")) == 0
    assert (await api.get(f"{CAMPAIGNS}/nov", headers=tenant.headers)).json()["campaign"]["status"] == "draft"


async def test_test_send_limits_and_errors(api: AsyncClient, tenant: Tenant, api_app: Any) -> None:
    await put_campaign(api, tenant)
    url = f"{CAMPAIGNS}/nov/test-send"

    too_many = await api.post(
        url, json={"emails": [f"a{i}@example.com" for i in range(26)]}, headers=tenant.headers
    )
    empty = await api.post(url, json={"emails": []}, headers=tenant.headers)
    invalid = await api.post(
        url,
        json={"emails": ["ok@example.com", "not an address", "x@y.com\r\nBcc: z@z.com"]},
        headers=tenant.headers,
    )
    unverified = await api.post(url, json={"emails": ["ok@example.com"]}, headers=tenant.headers)

    assert too_many.status_code == 400
    assert too_many.json()["error"]["fields"] == {"emails": "too_long"}
    assert empty.status_code == 400
    assert invalid.status_code == 400
    assert invalid.json()["error"]["fields"] == {"emails.1": "invalid", "emails.2": "invalid"}
    assert unverified.status_code == 200, unverified.text
    [result] = unverified.json()["results"]
    assert (result["status"], result["reason"]) == ("failed", "MessageRejected")
    assert moto_ses_messages(api_app) == []


async def test_test_send_skips_suppressed_addresses_like_a_transactional_send(
    api: AsyncClient, tenant: Tenant, api_app: Any, session: AsyncSession
) -> None:
    await api_app.state.sesv2.create_email_identity(EmailIdentity="news@app.example.com")
    await put_campaign(api, tenant, category_tag=None)
    now = datetime.now(UTC)
    for address, column in [
        ("bounced@example.com", "hard_bounced_at"),
        ("complained@example.com", "complained_at"),
        ("gone@example.com", "global_unsubscribed_at"),
    ]:
        contact, _ = await contacts.get_or_create_contact(
            session, tenant.scope.client.organization_id, address
        )
        setattr(contact, column, now)
    # An erased address keeps its suppression without a contact row (a mailbox fact here).
    session.add(Suppression(address_hash=contacts.address_hash("erased@example.com"), reason="hard_bounce"))
    await session.commit()

    emails = ["Bounced@Example.com", "complained@example.com", "gone@example.com", "erased@example.com"]
    response = await api.post(
        f"{CAMPAIGNS}/nov/test-send", json={"emails": [*emails, "editor@example.com"]}, headers=tenant.headers
    )

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["email"], r["status"], r["reason"]) for r in results] == [
        ("Bounced@Example.com", "skipped", "hard_bounce"),
        ("complained@example.com", "skipped", "complaint"),
        ("gone@example.com", "skipped", "global_unsubscribe"),
        ("erased@example.com", "skipped", "hard_bounce"),
        ("editor@example.com", "sent", None),
    ]
    assert [m["To"] for m in moto_ses_messages(api_app)] == ["editor@example.com"]
    assert await session.scalar(text("SELECT count(*) FROM contacts")) == 3


async def test_the_campaign_says_whether_it_goes_out_in_bulk_and_why_not(
    api: AsyncClient, tenant: Tenant
) -> None:
    """Decided once per campaign from its content, as the workers' `plan_send` does."""
    simple = (await put_campaign(api, tenant, "simple")).json()["campaign"]
    assert (simple["send_mode"], simple["send_mode_reason"]) == ("bulk", None)
    logic = "<p>{% if email.endswith('.com') %}Hi{% endif %}</p>"
    per_recipient = (await put_campaign(api, tenant, "logic", html_body=logic)).json()["campaign"]
    assert per_recipient["send_mode"] == "per_recipient"
    assert per_recipient["send_mode_reason"] == "email used beyond {{ email }}"
    fetched = await api.get(f"{CAMPAIGNS}/logic", headers=tenant.headers)
    assert fetched.json()["campaign"]["send_mode"] == "per_recipient"
