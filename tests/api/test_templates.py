from typing import Any

import pytest
from httpx import AsyncClient

from tests.api.transactional_factories import TEMPLATES, put_template, template_body
from tests.factories import Tenant, TenantFactory

MISSING = object()


@pytest.fixture
async def tenant(tenants: TenantFactory) -> Tenant:
    return await tenants.create()


async def test_put_creates_then_replaces_a_template(api: AsyncClient, tenant: Tenant) -> None:
    created = await api.put(f"{TEMPLATES}/reset", json=template_body(), headers=tenant.headers)
    assert created.status_code == 201, created.text
    assert created.json()["created"] is True
    assert created.json()["template"]["key"] == "reset"
    assert created.json()["template"]["is_active"] is True

    updated = await api.put(
        f"{TEMPLATES}/reset",
        json=template_body(subject="New subject", is_active=False),
        headers=tenant.headers,
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["created"] is False

    fetched = await api.get(f"{TEMPLATES}/reset", headers=tenant.headers)
    assert fetched.status_code == 200
    template = fetched.json()["template"]
    assert template["subject"] == "New subject"
    assert template["is_active"] is False
    assert template["required_context"] == [{"name": "reset_url", "description": None}]
    assert template["example_context"] == {"first_name": "Ada", "reset_url": "https://example.com/r/1"}


async def test_required_context_accepts_names_and_described_objects(api: AsyncClient, tenant: Tenant) -> None:
    response = await put_template(
        api, tenant, required_context=["reset_url", {"name": "user.first_name", "description": "Greeting"}]
    )
    assert response.json()["template"]["required_context"] == [
        {"name": "reset_url", "description": None},
        {"name": "user.first_name", "description": "Greeting"},
    ]


async def test_name_defaults_to_the_key(api: AsyncClient, tenant: Tenant) -> None:
    body = template_body()
    del body["name"]
    response = await api.put(f"{TEMPLATES}/welcome", json=body, headers=tenant.headers)
    assert response.json()["template"]["name"] == "welcome"


async def test_default_sender_must_be_configured(api: AsyncClient, tenant: Tenant) -> None:
    ok = await api.put(
        f"{TEMPLATES}/reset", json=template_body(default_sender_id="support"), headers=tenant.headers
    )
    assert ok.status_code == 201
    assert ok.json()["template"]["default_sender_id"] == "support"


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"subject": MISSING}, {"subject": "required"}),
        ({"subject": None}, {"subject": "invalid"}),
        ({"subject": "   "}, {"subject": "required"}),
        ({"html_body": "x" * (100 * 1024 + 1)}, {"html_body": "too_long"}),
        ({"text_body": "é" * (50 * 1024 + 1)}, {"text_body": "too_long"}),
        ({"html_body": "{% if x %}unclosed"}, {"html_body": "invalid_template"}),
        ({"subject": "{{ x|nosuchfilter }}"}, {"subject": "invalid_template"}),
        ({"text_body": "{% macro f() %}{% endmacro %}"}, {"text_body": "invalid_template"}),
        ({"html_body": "{% include 'other' %}"}, {"html_body": "invalid_template"}),
        ({"default_sender_id": "marketing"}, {"default_sender_id": "not_configured"}),
        ({"required_context": ["ok", "not a name"]}, {"required_context.1": "invalid"}),
        ({"required_context": [{"nom": "x"}]}, {"required_context.0": "invalid"}),
        ({"required_context": ["a", "a"]}, {"required_context.1": "duplicate"}),
        ({"required_context": ["name\n"]}, {"required_context.0": "invalid"}),
        ({"required_context": [{"name": "user.name\n"}]}, {"required_context.0": "invalid"}),
        ({"example_context": {"x": "nul\x00"}}, {"example_context": "invalid"}),
        ({"surprise": True}, {"surprise": "unknown_field"}),
    ],
)
async def test_invalid_templates_are_field_errors_and_store_nothing(
    api: AsyncClient, tenant: Tenant, overrides: dict[str, Any], fields: dict[str, str]
) -> None:
    body = {k: v for k, v in template_body(**overrides).items() if v is not MISSING}
    response = await api.put(f"{TEMPLATES}/reset", json=body, headers=tenant.headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert response.json()["error"]["fields"] == fields
    assert (await api.get(f"{TEMPLATES}/reset", headers=tenant.headers)).status_code == 404


async def test_a_key_that_cannot_be_a_template_key_is_rejected(api: AsyncClient, tenant: Tenant) -> None:
    response = await api.put(f"{TEMPLATES}/-bad%20key", json=template_body(), headers=tenant.headers)
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"key": "invalid"}
    assert (await api.get(f"{TEMPLATES}/-bad%20key", headers=tenant.headers)).status_code == 404


async def test_a_key_with_a_trailing_newline_is_rejected(api: AsyncClient, tenant: Tenant) -> None:
    response = await api.put(f"{TEMPLATES}/abc%0A", json=template_body(), headers=tenant.headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["fields"] == {"key": "invalid"}
    assert (
        await api.put(f"{TEMPLATES}/abc", json=template_body(), headers=tenant.headers)
    ).status_code == 201
    assert (await api.get(f"{TEMPLATES}/abc%0A", headers=tenant.headers)).status_code == 404


async def test_unknown_template_is_404_in_the_envelope(api: AsyncClient, tenant: Tenant) -> None:
    response = await api.get(f"{TEMPLATES}/nothing-here", headers=tenant.headers)
    assert response.status_code == 404
    assert response.json()["error"]["fields"] == {"template_key": "not_found"}


async def test_templates_are_private_to_their_client(
    api: AsyncClient, tenant: Tenant, tenants: TenantFactory
) -> None:
    other = await tenants.create(client="other-app")
    await put_template(api, tenant, subject="Mine")
    assert (await api.get(f"{TEMPLATES}/reset", headers=other.headers)).status_code == 404

    theirs = await api.put(f"{TEMPLATES}/reset", json=template_body(subject="Theirs"), headers=other.headers)
    assert theirs.status_code == 201  # same key, another client: a different template
    mine = await api.get(f"{TEMPLATES}/reset", headers=tenant.headers)
    assert mine.json()["template"]["subject"] == "Mine"


async def test_naming_another_client_is_forbidden(api: AsyncClient, tenant: Tenant) -> None:
    response = await api.put(
        f"{TEMPLATES}/reset", json=template_body(client="someone-else"), headers=tenant.headers
    )
    assert response.status_code == 403
    assert response.json()["error"]["fields"] == {"client": "forbidden"}


async def test_templates_need_an_api_key(api: AsyncClient) -> None:
    response = await api.get(f"{TEMPLATES}/reset")
    assert response.status_code == 401
