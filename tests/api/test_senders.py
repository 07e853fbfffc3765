from typing import Any

import pytest
from botocore.exceptions import ClientError
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


async def test_put_reports_whether_ses_will_send_from_each_sender(
    api: AsyncClient, tenant: Tenant, api_app: Any
) -> None:
    await api_app.state.sesv2.create_email_identity(EmailIdentity="news@verified.example.com")
    await api_app.state.sesv2.create_email_identity(EmailIdentity="domain.example.com")
    body = {
        "senders": [
            {"id": "news", "email": "News <news@verified.example.com>"},
            {"id": "support", "email": "support@domain.example.com"},
            {"id": "nobody", "email": "nobody@unknown.example.com"},
        ],
        "default_sender_id": "news",
    }

    response = await api.put(SENDERS, json=body, headers=tenant.headers)

    assert response.status_code == 200, response.text
    assert response.json()["senders"] == body["senders"]
    identities = {i["sender_id"]: i for i in response.json()["identities"]}
    assert identities["news"]["verified"] is True
    assert identities["news"]["identity"] == "news@verified.example.com"
    assert identities["support"]["verified"] is True
    assert identities["support"]["identity"] == "domain.example.com"
    assert identities["nobody"] == {
        "sender_id": "nobody",
        "address": "nobody@unknown.example.com",
        "verified": False,
        "status": "not_found",
        "identity": None,
    }


class FailingSes:
    async def get_email_identity(self, **_: Any) -> Any:
        raise ClientError(
            {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "GetEmailIdentity"
        )


async def test_an_ses_error_is_reported_not_a_500_and_the_senders_are_still_set(
    api: AsyncClient, tenant: Tenant, api_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_app.state, "sesv2", FailingSes())
    body = {"senders": [{"id": "news", "email": "news@example.com"}]}

    response = await api.put(SENDERS, json=body, headers=tenant.headers)

    assert response.status_code == 200, response.text
    assert response.json()["identities"][0]["verified"] is None
    assert response.json()["identities"][0]["status"] == "error:ThrottlingException"
    assert (await api.get(SENDERS, headers=tenant.headers)).json()["senders"] == body["senders"]
