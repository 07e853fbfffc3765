import pytest
from httpx import AsyncClient
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.models import Client, ClientApiKey
from tests.factories import TenantFactory

SENDERS = "/api/client/senders"


async def test_a_valid_key_reads_its_own_client(api: AsyncClient, tenants: TenantFactory) -> None:
    tenant = await tenants.create()
    response = await api.get(SENDERS, headers=tenant.headers)
    assert response.status_code == 200
    assert response.json()["client"] == {"organization": "acme", "slug": "app", "name": "app"}


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_authorization"),
        ("", "missing_authorization"),
        ("Basic dXNlcjpwYXNz", "invalid_authorization"),
        ("Bearer", "invalid_authorization"),
        ("Bearer    ", "invalid_authorization"),
        ("Bearer not-a-key", "invalid_api_key"),
        ("Bearer dm_abcdef012345_" + "x" * 43, "invalid_api_key"),
    ],
)
async def test_bad_credentials_get_401_with_their_code(
    api: AsyncClient, tenants: TenantFactory, header: str | None, code: str
) -> None:
    await tenants.create()
    headers = {} if header is None else {"Authorization": header}
    response = await api.get(SENDERS, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code


async def test_a_known_public_id_with_a_wrong_secret_is_rejected(
    api: AsyncClient, tenants: TenantFactory
) -> None:
    tenant = await tenants.create()
    public_part = "_".join(tenant.key.split("_", 2)[:2])
    forged = public_part + "_" + "A" * 43
    response = await api.get(SENDERS, headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


async def test_a_revoked_key_stops_working(
    api: AsyncClient, tenants: TenantFactory, session: AsyncSession
) -> None:
    tenant = await tenants.create()
    assert (await api.get(SENDERS, headers=tenant.headers)).status_code == 200
    await session.execute(update(ClientApiKey).values(revoked_at=text("now()")))
    await session.commit()
    response = await api.get(SENDERS, headers=tenant.headers)
    assert response.json()["error"]["code"] == "invalid_api_key"


async def test_an_inactive_client_is_refused(
    api: AsyncClient, tenants: TenantFactory, session: AsyncSession
) -> None:
    tenant = await tenants.create()
    await session.execute(update(Client).values(is_active=False))
    await session.commit()
    response = await api.get(SENDERS, headers=tenant.headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "inactive_client"


async def test_the_raw_key_is_nowhere_in_the_database(tenants: TenantFactory, session: AsyncSession) -> None:
    tenant = await tenants.create()
    secret = tenant.key.split("_", 2)[2]
    rows = (await session.execute(text("select row_to_json(k)::text from client_api_keys k"))).scalars().all()
    assert rows
    for row in rows:
        assert tenant.key not in row
        assert secret not in row
    key = (await session.execute(select(ClientApiKey))).scalar_one()
    assert len(key.key_hash) == 64


async def test_last_used_is_recorded_at_most_once_a_minute(
    api: AsyncClient, tenants: TenantFactory, session: AsyncSession
) -> None:
    tenant = await tenants.create()
    await api.get(SENDERS, headers=tenant.headers)
    first = await session.scalar(select(ClientApiKey.last_used_at).execution_options(populate_existing=True))
    assert first is not None
    await api.get(SENDERS, headers=tenant.headers)
    second = await session.scalar(select(ClientApiKey.last_used_at))
    assert second == first


async def test_naming_another_client_is_forbidden(api: AsyncClient, tenants: TenantFactory) -> None:
    tenant = await tenants.create()
    await tenants.create(client="other")
    response = await api.get(SENDERS, params={"client": "other"}, headers=tenant.headers)
    assert response.status_code == 403
    assert response.json()["error"]["fields"] == {"client": "forbidden"}
