import pytest
from httpx import AsyncClient

from tests.factories import Tenant, TenantFactory

SENDERS = "/api/client/senders"


@pytest.fixture
async def tenant(tenants: TenantFactory) -> Tenant:
    return await tenants.create()


async def test_put_replaces_senders_and_default(api: AsyncClient, tenant: Tenant) -> None:
    body = {
        "senders": [
            {"id": "news", "email": "The News <news@example.com>"},
            {"id": "noreply", "email": "noreply@example.com"},
        ],
        "default_sender_id": "news",
    }
    response = await api.put(SENDERS, json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    assert response.json()["senders"] == body["senders"]
    again = (await api.get(SENDERS, headers=tenant.headers)).json()
    assert again["default_sender_id"] == "news"
    assert again["senders"] == body["senders"]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"senders": [{"id": "a", "email": "not an email"}]}, {"senders.0.email": "invalid"}),
        (
            {"senders": [{"id": "a", "email": "Evil\r\nBcc: x@example.com <a@example.com>"}]},
            {"senders.0.email": "invalid"},
        ),
        ({"senders": [{"id": "a", "email": "a@example.com, b@example.com"}]}, {"senders.0.email": "invalid"}),
        ({"senders": [{"id": "Bad Id", "email": "a@example.com"}]}, {"senders.0.id": "invalid"}),
        ({"senders": [{"id": "sb\n", "email": "a@example.com"}]}, {"senders.0.id": "invalid"}),
        *(
            ({"senders": [{"id": "a", "email": email}]}, {"senders.0.email": "invalid"})
            for email in (
                "Sib\u000bBcc: e3@evil.com <sib@example.net>",
                "Sib <sib@example.net> trailing",
                "sib@example.net> trailing",
                "Sib: <sib@example.net>",
                "sib@example.net\n",
                "Sib\x0c <sib@example.net>",
                "Sib\x85 <sib@example.net>",
                "Sib\u2028 <sib@example.net>",
                "Sib\u2029 <sib@example.net>",
                "Sib\u202e <sib@example.net>",
                "Sib\t <sib@example.net>",
            )
        ),
        (
            {"senders": [{"id": "a", "email": "a@example.com"}, {"id": "a", "email": "b@example.com"}]},
            {"senders.1.id": "duplicate"},
        ),
        (
            {"senders": [{"id": "a", "email": "a@example.com"}], "default_sender_id": "b"},
            {"default_sender_id": "not_found"},
        ),
        ({"senders": [{"id": "a"}]}, {"senders.0.email": "required"}),
        ({"senders": "a@example.com"}, {"senders": "invalid"}),
        ({}, {"senders": "required"}),
        ({"senders": [], "surprise": 1}, {"surprise": "unknown_field"}),
    ],
)
async def test_invalid_senders_are_rejected_and_nothing_changes(
    api: AsyncClient, tenant: Tenant, body: dict[str, object], fields: dict[str, str]
) -> None:
    before = (await api.get(SENDERS, headers=tenant.headers)).json()
    response = await api.put(SENDERS, json=body, headers=tenant.headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert response.json()["error"]["fields"] == fields
    assert (await api.get(SENDERS, headers=tenant.headers)).json() == before


async def test_a_quoted_display_name_is_one_mailbox(api: AsyncClient, tenant: Tenant) -> None:
    body = {"senders": [{"id": "acme", "email": '"Acme, Inc." <news@example.com>'}]}
    response = await api.put(SENDERS, json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    assert response.json()["senders"] == body["senders"]
    assert response.json()["default_sender_id"] == "acme"
