"""Hostile and sloppy input across the API (issue 15): JSON objects bounded in depth and
size, bodies the parser gives up on, content types, campaign keys, schedules without a
timezone, strict booleans, the CSV import's `dry_run`, and the campaign example of the
OpenAPI document against the demo tenant."""

from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_api.transactional.schemas import MAX_JSON_BYTES, MAX_JSON_DEPTH
from datamailer_core.models import Campaign, EmailTemplate
from datamailer_server.up import DEMO, DEMO_SENDER
from tests.api.campaign_factories import CAMPAIGNS, campaign_body, put_campaign
from tests.api.contacts_factories import scoped, table_counts, upsert
from tests.api.transactional_factories import SEND, TEMPLATES, send_body, template_body
from tests.factories import Tenant, TenantFactory

SENDERS = "/api/client/senders"
CSV_IMPORT = "/api/contacts/imports/csv"


@pytest.fixture
async def tenant(tenants: TenantFactory) -> Tenant:
    return await tenants.create()


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep (the object itself is level 1)."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def fields_of(response: Any) -> dict[str, str]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    return dict(error["fields"])


async def count(session: AsyncSession, model: Any) -> int:
    return int(await session.scalar(select(func.count()).select_from(model)) or 0)


# --- JSON objects: depth and size --------------------------------------------------


@pytest.mark.parametrize("field", ["context", "metadata"])
async def test_a_deeply_nested_send_object_is_a_field_error(
    api: AsyncClient, tenant: Tenant, field: str
) -> None:
    response = await api.post(SEND, json=send_body(**{field: nested(330)}), headers=tenant.headers)
    assert fields_of(response) == {field: "too_deep"}


async def test_a_deeply_nested_campaign_metadata_is_rejected_before_any_write(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    body = campaign_body(tenant, metadata=nested(330))
    response = await api.put(f"{CAMPAIGNS}/deep", json=body, headers=tenant.headers)
    assert fields_of(response) == {"metadata": "too_deep"}
    assert await count(session, Campaign) == 0


async def test_template_example_context_is_bounded_in_depth_and_size(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    deep = await api.put(
        f"{TEMPLATES}/deep", json=template_body(example_context=nested(330)), headers=tenant.headers
    )
    assert fields_of(deep) == {"example_context": "too_deep"}
    just_over = await api.put(
        f"{TEMPLATES}/deep",
        json=template_body(example_context=nested(MAX_JSON_DEPTH + 1)),
        headers=tenant.headers,
    )
    assert fields_of(just_over) == {"example_context": "too_deep"}
    large = await api.put(
        f"{TEMPLATES}/deep",
        json=template_body(example_context={"blob": "x" * MAX_JSON_BYTES}),
        headers=tenant.headers,
    )
    assert fields_of(large) == {"example_context": "too_large"}
    assert await count(session, EmailTemplate) == 0
    at_limit = await api.put(
        f"{TEMPLATES}/deep",
        json=template_body(example_context=nested(MAX_JSON_DEPTH)),
        headers=tenant.headers,
    )
    assert at_limit.status_code == 201, at_limit.text
    assert at_limit.json()["template"]["example_context"] == nested(MAX_JSON_DEPTH)


async def test_a_large_send_context_is_too_large(api: AsyncClient, tenant: Tenant) -> None:
    context = {f"k{i}": "é" * 1000 for i in range(40)}  # ~80 KB as UTF-8, under the body limit
    response = await api.post(SEND, json=send_body(context=context), headers=tenant.headers)
    assert fields_of(response) == {"context": "too_large"}


# --- the envelope: content types and unparsable bodies ------------------------------


@pytest.mark.parametrize("headers", [{}, {"Content-Type": "text/plain"}])
async def test_a_json_body_without_the_json_content_type_is_415(
    api: AsyncClient, tenant: Tenant, headers: dict[str, str]
) -> None:
    content = b'{"senders": [{"id": "a", "email": "a@example.com"}]}'
    response = await api.put(SENDERS, content=content, headers={**tenant.headers, **headers})
    assert response.status_code == 415
    assert response.json()["error"] == {
        "code": "unsupported_media_type",
        "message": "send application/json",
        "fields": {"body": "unsupported_media_type"},
    }


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 100_000 + b"]" * 100_000,  # past the decoder's recursion limit
        b'{"senders": ' + b"1" * 100_000 + b"}",  # past Python's integer digit limit
    ],
    ids=["deep", "huge-integer"],
)
async def test_a_body_the_decoder_gives_up_on_is_invalid_json(
    api: AsyncClient, tenant: Tenant, content: bytes
) -> None:
    response = await api.put(
        SENDERS, content=content, headers={**tenant.headers, "Content-Type": "application/json"}
    )
    assert response.json()["error"] == {
        "code": "validation_error",
        "message": "invalid request",
        "fields": {"body": "invalid_json"},
    }
    assert response.status_code == 400


async def test_multipart_without_a_boundary_is_a_field_error(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    before = await table_counts(session)
    response = await api.post(
        CSV_IMPORT,
        content=b"email\na@example.com\n",
        headers={**tenant.headers, "Content-Type": "multipart/form-data"},
    )
    assert fields_of(response) == {"body": "invalid_multipart"}
    assert await table_counts(session) == before


async def test_bodiless_actions_need_no_content_type(api: AsyncClient, tenant: Tenant) -> None:
    await put_campaign(api, tenant, "plain")
    queued = await api.post(f"{CAMPAIGNS}/plain/queue", headers=tenant.headers)
    assert queued.status_code == 202, queued.text
    paused = await api.post(f"{CAMPAIGNS}/plain/pause", headers=tenant.headers)
    assert paused.status_code in (200, 409), paused.text
    assert paused.json().get("error", {}).get("code") != "unsupported_media_type"


# --- campaign keys and schedules -----------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "%2E",
        "%2E%2E",
        "%20",
        "%20%20%09",
        "%20news",
        "news%20",
        "news\u00a0",
        "a\u202eb",
        "a\u202ab",
        "a\u2066b",
        "a\u2069b",
        "a\u200eb",
        "a\u200fb",
        "a\u200bb",
        "a\ufeffb",
    ],
)
async def test_unusable_campaign_keys_are_rejected(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, key: str
) -> None:
    response = await api.put(f"{CAMPAIGNS}/{key}", json=campaign_body(tenant), headers=tenant.headers)
    assert fields_of(response) == {"external_key": "invalid"}
    assert await count(session, Campaign) == 0


async def test_ordinary_keys_with_inner_spaces_and_dots_still_work(api: AsyncClient, tenant: Tenant) -> None:
    for key in ("2026.11 news", "...x", "ünïcode-key"):
        response = await api.put(f"{CAMPAIGNS}/{key}", json=campaign_body(tenant), headers=tenant.headers)
        assert response.status_code == 201, (key, response.text)
        assert response.json()["campaign"]["external_key"] == key


async def test_a_schedule_without_a_timezone_is_rejected(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    naive = campaign_body(tenant, scheduled_at="2999-01-01T09:00:00")
    response = await api.put(f"{CAMPAIGNS}/later", json=naive, headers=tenant.headers)
    assert fields_of(response) == {"scheduled_at": "timezone_required"}
    assert await count(session, Campaign) == 0
    aware = campaign_body(tenant, scheduled_at="2999-01-01T09:00:00+01:00")
    created = await api.put(f"{CAMPAIGNS}/later", json=aware, headers=tenant.headers)
    assert created.status_code == 201, created.text
    assert created.json()["campaign"]["scheduled_at"].startswith("2999-01-01T08:00:00")


# --- booleans ------------------------------------------------------------------------


async def test_booleans_given_as_numbers_or_strings_are_rejected(
    api: AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    template = await api.put(f"{TEMPLATES}/t", json=template_body(is_active=0), headers=tenant.headers)
    assert fields_of(template) == {"is_active": "invalid"}
    dry_send = await api.post(SEND, json=send_body(dry_run="true"), headers=tenant.headers)
    assert fields_of(dry_send) == {"dry_run": "invalid"}
    before = await table_counts(session)
    contact = await api.post(
        "/api/contacts", json=scoped(tenant, email="a@example.com", verified=1), headers=tenant.headers
    )
    assert fields_of(contact) == {"verified": "invalid"}
    flags = await api.post(
        "/api/contacts/imports",
        json=scoped(tenant, contacts=[{"email": "b@example.com"}], dry_run=0),
        headers=tenant.headers,
    )
    assert fields_of(flags) == {"dry_run": "invalid"}
    assert await table_counts(session) == before
    assert await count(session, EmailTemplate) == 0


async def test_category_enabled_must_be_a_boolean(api: AsyncClient, tenant: Tenant) -> None:
    await upsert(api, tenant, "a@example.com", status="subscribed")
    body = scoped(tenant, email="a@example.com", categories=[{"tag": "news", "enabled": "yes"}])
    response = await api.put("/api/contacts/preferences", json=body, headers=tenant.headers)
    assert fields_of(response) == {"categories.0.enabled": "invalid"}


async def _post_csv(api: AsyncClient, tenant: Tenant, dry_run: str) -> Any:
    return await api.post(
        CSV_IMPORT,
        data=scoped(tenant, dry_run=dry_run),
        files={"file": ("c.csv", b"email\nnew@example.com\n", "text/csv")},
        headers=tenant.headers,
    )


@pytest.mark.parametrize("dry_run", ["maybe", "2", "on", "truee"])
async def test_csv_dry_run_must_be_a_boolean_and_nothing_is_written(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, dry_run: str
) -> None:
    before = await table_counts(session)
    assert fields_of(await _post_csv(api, tenant, dry_run)) == {"dry_run": "invalid"}
    assert await table_counts(session) == before


@pytest.mark.parametrize(
    ("dry_run", "expected"),
    [("YES", True), ("true", True), ("1", True), ("No", False), ("0", False), ("", False)],
)
async def test_csv_dry_run_accepts_the_csv_booleans(
    api: AsyncClient, tenant: Tenant, session: AsyncSession, dry_run: str, expected: bool
) -> None:
    before = await table_counts(session)
    response = await _post_csv(api, tenant, dry_run)
    assert response.status_code == 200, response.text
    assert response.json()["dry_run"] is expected
    assert (await table_counts(session) == before) is expected


# --- the preferences query --------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"email": "a\x00@example.com"}, "email"),
        ({"email": "a@example.com\x01"}, "email"),
        ({"category_tags": "news,\x00"}, "category_tags"),
        ({"category_tags": "news\x1f"}, "category_tags"),
        ({"category_tags": "news,!?"}, "category_tags"),  # a name that slugifies to nothing
    ],
)
async def test_the_preferences_query_rejects_control_characters(
    api: AsyncClient, tenant: Tenant, params: dict[str, str], field: str
) -> None:
    query = scoped(tenant, **{"email": "a@example.com", **params})
    response = await api.get("/api/contacts/preferences", params=query, headers=tenant.headers)
    assert fields_of(response) == {field: "invalid"}


# --- the documented campaign example ------------------------------------------------------


async def test_the_documented_campaign_example_is_valid_for_the_demo_tenant(
    api: AsyncClient, api_app: FastAPI, tenants: TenantFactory
) -> None:
    demo = await tenants.create(**DEMO, senders=[DEMO_SENDER])
    example = api_app.openapi()["components"]["schemas"]["CampaignIn"]["examples"][0]
    response = await api.put(f"{CAMPAIGNS}/2026-11-newsletter", json=example, headers=demo.headers)
    assert response.status_code == 201, response.text
    assert response.json()["campaign"]["client"] == DEMO["client"]
