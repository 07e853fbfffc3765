import pytest
from httpx import AsyncClient

from tests.factories import Tenant, TenantFactory

SENDERS = "/api/client/senders"


@pytest.fixture
async def tenant(tenants: TenantFactory) -> Tenant:
    return await tenants.create()


async def test_unknown_route_is_json_404(api: AsyncClient) -> None:
    response = await api.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_wrong_method_is_json_405_with_allowed_methods(api: AsyncClient) -> None:
    response = await api.delete(SENDERS)
    assert response.status_code == 405
    error = response.json()["error"]
    assert error["code"] == "method_not_allowed"
    assert sorted(error["allowed_methods"]) == ["GET", "PUT"]


@pytest.mark.parametrize(
    ("content", "field", "reason"),
    [
        (b"{not json", "body", "invalid_json"),
        (b"[1, 2]", "body", "must_be_object"),
        (b'"text"', "body", "must_be_object"),
    ],
)
async def test_malformed_bodies_get_the_envelope(
    api: AsyncClient, tenant: Tenant, content: bytes, field: str, reason: str
) -> None:
    headers = {**tenant.headers, "Content-Type": "application/json"}
    response = await api.put(SENDERS, content=content, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "validation_error",
        "message": "invalid request",
        "fields": {field: reason},
    }


async def test_a_non_json_content_type_is_415(api: AsyncClient, tenant: Tenant) -> None:
    headers = {**tenant.headers, "Content-Type": "text/plain"}
    response = await api.put(SENDERS, content=b"senders=a", headers=headers)
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


async def test_an_oversized_body_is_413_and_changes_nothing(api: AsyncClient, tenant: Tenant) -> None:
    before = (await api.get(SENDERS, headers=tenant.headers)).json()
    huge = b'{"senders": [' + b'{"id": "a", "email": "a@example.com"},' * 40_000 + b"]}"
    response = await api.put(
        SENDERS, content=huge, headers={**tenant.headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert (await api.get(SENDERS, headers=tenant.headers)).json() == before


async def test_a_streamed_oversized_body_without_length_is_413(api: AsyncClient, tenant: Tenant) -> None:
    async def chunks():
        for _ in range(300):
            yield b" " * 8192

    response = await api.put(
        SENDERS, content=chunks(), headers={**tenant.headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 413


async def test_responses_carry_a_request_id(api: AsyncClient) -> None:
    response = await api.get("/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
