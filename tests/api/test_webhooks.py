"""`/api/client/webhooks`: endpoints per client with a signing secret shown once,
validation in the error envelope, deliveries with their attempts, replay, and tenant
isolation."""

import base64
import uuid
from datetime import timedelta
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.models import WebhookDelivery, WebhookEndpoint
from datamailer_core.repositories import webhooks
from datamailer_core.webhooks import MAX_ENDPOINTS, url_problem
from tests.factories import Tenant, TenantFactory

WEBHOOKS = "/api/client/webhooks"
DELIVERIES = f"{WEBHOOKS}/deliveries"
HOOK = "https://app.example.com/hooks/datamailer"
ATTEMPT = {"at": "2026-12-03T10:00:00+00:00", "status_code": 500, "error": "HTTP 500", "duration_ms": 7}


@pytest.fixture
async def tenant(tenants: TenantFactory) -> Tenant:
    return await tenants.create()


@pytest.fixture
async def other(tenants: TenantFactory) -> Tenant:
    return await tenants.create(organization="globex", audience="news", client="rival")


async def put(api: AsyncClient, tenant: Tenant, *endpoints: dict[str, Any]) -> dict[str, Any]:
    response = await api.put(WEBHOOKS, json={"endpoints": list(endpoints)}, headers=tenant.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def stored(session: AsyncSession, tenant: Tenant) -> list[WebhookEndpoint]:
    rows = await session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.client_id == tenant.scope.client.id)
        .order_by(WebhookEndpoint.id)
        .execution_options(populate_existing=True)
    )
    return list(rows.all())


async def test_a_new_endpoint_gets_a_secret_shown_once(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    body = await put(api, tenant, {"url": HOOK, "event_types": ["message.opened", "contact.complained"]})

    (endpoint,) = body["endpoints"]
    secret = endpoint["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    # Kept in the order of EVENT_TYPES, deduplicated.
    assert endpoint["event_types"] == ["contact.complained", "message.opened"]
    assert (endpoint["status"], endpoint["failure_count"], endpoint["has_bearer_token"]) == (
        "active",
        0,
        False,
    )
    assert [e.secret for e in await stored(session, tenant)] == [secret]

    listed = (await api.get(WEBHOOKS, headers=tenant.headers)).json()
    assert listed["event_types"] == list(webhooks.EVENT_TYPES)
    assert "secret" not in listed["endpoints"][0]
    assert secret not in str(listed)
    assert listed["client"]["slug"] == tenant.client_slug

    # The same URL again keeps the secret, which is not shown again.
    again = await put(api, tenant, {"url": HOOK})
    assert again["endpoints"][0]["secret"] is None
    assert again["endpoints"][0]["event_types"] is None
    assert [e.secret for e in await stored(session, tenant)] == [secret]


async def test_rotating_the_secret_shows_the_new_one(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    first = (await put(api, tenant, {"url": HOOK}))["endpoints"][0]["secret"]
    rotated = (await put(api, tenant, {"url": HOOK, "rotate_secret": True}))["endpoints"][0]["secret"]

    assert rotated.startswith("whsec_")
    assert rotated != first
    assert [e.secret for e in await stored(session, tenant)] == [rotated]


async def test_bearer_token_is_kept_when_omitted_and_removed_with_null(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    saved = await put(api, tenant, {"url": HOOK, "bearer_token": "tok-123"})
    assert saved["endpoints"][0]["has_bearer_token"] is True
    listed = (await api.get(WEBHOOKS, headers=tenant.headers)).text
    assert "tok-123" not in listed

    await put(api, tenant, {"url": HOOK, "event_types": ["message.clicked"]})
    assert [e.bearer_token for e in await stored(session, tenant)] == ["tok-123"]

    cleared = await put(api, tenant, {"url": HOOK, "bearer_token": None})
    assert cleared["endpoints"][0]["has_bearer_token"] is False
    assert [e.bearer_token for e in await stored(session, tenant)] == [None]


async def test_an_endpoint_left_out_is_removed(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    second = "https://backup.example.com/hook"
    await put(api, tenant, {"url": HOOK}, {"url": second})
    await put(api, tenant, {"url": second})

    assert [e.url for e in await stored(session, tenant)] == [second]
    assert (await put(api, tenant))["endpoints"] == []
    assert await stored(session, tenant) == []


@pytest.mark.parametrize(
    ("endpoints", "fields"),
    [
        ([{"url": "http://app.example.com/hook"}], {"endpoints.0.url": "https_required"}),
        ([{"url": "ftp://app.example.com/hook"}], {"endpoints.0.url": "https_required"}),
        ([{"url": "https://user:pw@app.example.com/hook"}], {"endpoints.0.url": "credentials_not_allowed"}),
        ([{"url": "https://token@app.example.com/hook"}], {"endpoints.0.url": "credentials_not_allowed"}),
        ([{"url": "https:///hook"}], {"endpoints.0.url": "invalid"}),
        ([{"url": "not a url"}], {"endpoints.0.url": "invalid"}),
        ([{"url": "https://app.example.com:99999/"}], {"endpoints.0.url": "invalid"}),
        ([{"url": "https://app.example.com/a\r\nX: y"}], {"endpoints.0.url": "invalid"}),
        ([{"url": "https://app.example.com/#frag"}], {"endpoints.0.url": "invalid"}),
        ([{"url": "https://a.example.com/" + "x" * 2100}], {"endpoints.0.url": "too_long"}),
        ([{"url": HOOK}, {"url": HOOK}], {"endpoints.1.url": "duplicate"}),
        (
            [{"url": HOOK, "event_types": ["message.opened", "message.exploded"]}],
            {"endpoints.0.event_types.1": "invalid"},
        ),
        ([{"url": HOOK, "event_types": []}], {"endpoints.0.event_types": "too_short"}),
        ([{"url": HOOK, "event_types": "message.opened"}], {"endpoints.0.event_types": "invalid"}),
        ([{"url": HOOK, "bearer_token": "two words"}], {"endpoints.0.bearer_token": "invalid"}),
        ([{"url": HOOK, "bearer_token": "line\nbreak"}], {"endpoints.0.bearer_token": "invalid"}),
        ([{"url": HOOK, "bearer_token": ""}], {"endpoints.0.bearer_token": "too_short"}),
        ([{"url": HOOK, "secret": "whsec_mine"}], {"endpoints.0.secret": "unknown_field"}),
        ([{"event_types": None}], {"endpoints.0.url": "required"}),
        (
            [{"url": f"https://h{n}.example.com/"} for n in range(MAX_ENDPOINTS + 1)],
            {"endpoints": "too_long"},
        ),
    ],
)
async def test_invalid_endpoints_are_rejected_and_nothing_changes(
    api: AsyncClient,
    tenant: Tenant,
    session: AsyncSession,
    endpoints: list[dict[str, Any]],
    fields: dict[str, str],
) -> None:
    await put(api, tenant, {"url": "https://kept.example.com/hook", "bearer_token": "kept"})
    before = (await api.get(WEBHOOKS, headers=tenant.headers)).json()

    response = await api.put(WEBHOOKS, json={"endpoints": endpoints}, headers=tenant.headers)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert response.json()["error"]["fields"] == fields
    assert (await api.get(WEBHOOKS, headers=tenant.headers)).json() == before


@pytest.mark.parametrize("body", [{}, {"endpoints": None}, [], {"endpoints": [], "extra": 1}])
async def test_a_malformed_body_is_a_validation_error(api: AsyncClient, tenant: Tenant, body: Any) -> None:
    response = await api.put(WEBHOOKS, json=body, headers=tenant.headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


async def test_plain_http_is_for_a_local_receiver_outside_production(
    api: AsyncClient, tenant: Tenant
) -> None:
    body = await put(api, tenant, {"url": "http://127.0.0.1:9000/hook"}, {"url": "http://localhost/hook"})
    assert len(body["endpoints"]) == 2
    assert url_problem("http://127.0.0.1:9000/hook", production=True) == "https_required"
    assert url_problem("http://localhost/hook", production=True) == "https_required"
    assert url_problem("https://localhost/hook", production=True) is None
    assert url_problem("http://10.0.0.5/hook", production=False) == "https_required"


async def test_requests_need_a_key_and_the_own_client(
    api: AsyncClient, tenant: Tenant, other: Tenant
) -> None:
    assert (await api.get(WEBHOOKS)).status_code == 401
    response = await api.get(WEBHOOKS, params={"client": other.client_slug}, headers=tenant.headers)
    assert response.status_code == 403
    assert response.json()["error"]["fields"] == {"client": "forbidden"}
    response = await api.put(
        WEBHOOKS, json={"client": other.client_slug, "endpoints": []}, headers=tenant.headers
    )
    assert response.status_code == 403


async def record(session: AsyncSession, tenant: Tenant, event_type: str, **data: Any) -> None:
    await webhooks.record_event(session, client_id=tenant.scope.client.id, event_type=event_type, data=data)
    await session.commit()


async def test_events_are_queued_for_the_endpoints_that_take_them(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    await put(
        api,
        tenant,
        {"url": HOOK, "event_types": ["message.opened"]},
        {"url": "https://all.example.com/hook"},
    )
    await record(session, tenant, "message.opened", campaign_id=1)
    await record(session, tenant, "message.clicked", url="https://shop.example.com")

    listed = (await api.get(DELIVERIES, headers=tenant.headers)).json()

    assert [(d["url"], d["event_type"]) for d in listed["deliveries"]] == [
        ("https://all.example.com/hook", "message.clicked"),
        ("https://all.example.com/hook", "message.opened"),
        (HOOK, "message.opened"),
    ]
    first = listed["deliveries"][-1]
    assert (first["status"], first["attempt_count"], first["attempts"]) == ("pending", 0, [])
    assert first["data"] == {"campaign_id": 1}
    with pytest.raises(ValueError, match="unknown webhook event type"):
        await webhooks.record_event(session, client_id=tenant.scope.client.id, event_type="nope", data={})


async def test_deliveries_page_by_cursor_and_filter_by_status(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    await put(api, tenant, {"url": HOOK})
    for n in range(5):
        await record(session, tenant, "message.opened", n=n)
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.payload["n"].as_integer() == 1)
        .values(
            status="failed",
            attempt_count=8,
            last_status_code=500,
            attempts=[ATTEMPT],
        )
    )
    await session.commit()

    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get(DELIVERIES, params=params, headers=tenant.headers)).json()
        seen.extend(d["data"]["n"] for d in page["deliveries"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [4, 3, 2, 1, 0]

    failed = (await api.get(DELIVERIES, params={"status": "failed"}, headers=tenant.headers)).json()
    (row,) = failed["deliveries"]
    assert row["attempts"] == [
        {"at": "2026-12-03T10:00:00Z", "status_code": 500, "error": "HTTP 500", "duration_ms": 7}
    ]
    assert row["last_status_code"] == 500


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "lost"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WyJ4Il0"}, "cursor"),  # ["x"]
    ],
)
async def test_bad_delivery_queries_are_validation_errors(
    api: AsyncClient, tenant: Tenant, params: dict[str, Any], field: str
) -> None:
    response = await api.get(DELIVERIES, params=params, headers=tenant.headers)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["fields"]


async def test_replay_queues_a_failed_event_again(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    await put(api, tenant, {"url": HOOK})
    await record(session, tenant, "contact.complained", email="ada@example.com")
    await session.execute(
        update(WebhookDelivery).values(
            status="failed",
            attempt_count=8,
            next_attempt_at=WebhookDelivery.created_at + timedelta(days=1),
            attempts=[ATTEMPT],
        )
    )
    await session.commit()
    (delivery,) = (await api.get(DELIVERIES, headers=tenant.headers)).json()["deliveries"]

    response = await api.post(f"{DELIVERIES}/{delivery['event_id']}/replay", headers=tenant.headers)

    assert response.status_code == 200, response.text
    replayed = response.json()
    assert (replayed["event_id"], replayed["status"], replayed["attempt_count"]) == (
        delivery["event_id"],
        "pending",
        0,
    )
    assert replayed["next_attempt_at"] < delivery["next_attempt_at"]  # due now
    row = await session.scalar(select(WebhookDelivery).execution_options(populate_existing=True))
    assert row is not None
    assert row.attempts == [ATTEMPT]


async def test_replay_of_an_unknown_or_malformed_event(api: AsyncClient, tenant: Tenant) -> None:
    response = await api.post(f"{DELIVERIES}/{uuid.uuid4()}/replay", headers=tenant.headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = await api.post(f"{DELIVERIES}/not-a-uuid/replay", headers=tenant.headers)
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"event_id": "invalid"}


async def test_a_client_sees_and_replays_only_its_own(
    api: AsyncClient, tenant: Tenant, other: Tenant, session: AsyncSession
) -> None:
    await put(api, tenant, {"url": HOOK})
    await put(api, other, {"url": HOOK, "bearer_token": "rival-token"})
    await record(session, tenant, "message.opened", who="tenant")
    await record(session, other, "message.opened", who="other")

    mine = (await api.get(DELIVERIES, headers=tenant.headers)).json()["deliveries"]
    theirs = (await api.get(DELIVERIES, headers=other.headers)).json()["deliveries"]
    assert [d["data"] for d in mine] == [{"who": "tenant"}]
    assert [d["data"] for d in theirs] == [{"who": "other"}]
    assert (await api.get(WEBHOOKS, headers=tenant.headers)).json()["endpoints"][0][
        "has_bearer_token"
    ] is False

    response = await api.post(f"{DELIVERIES}/{theirs[0]['event_id']}/replay", headers=tenant.headers)
    assert response.status_code == 404

    # Replacing its endpoints leaves the other client's alone.
    await put(api, tenant)
    assert len(await stored(session, other)) == 1
    assert len((await api.get(DELIVERIES, headers=other.headers)).json()["deliveries"]) == 1
