"""Helpers for contact API tests."""

from typing import Any

from httpx import AsyncClient, Response
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.models import EmailEvent
from tests.factories import Tenant


def scoped(tenant: Tenant, **body: Any) -> dict[str, Any]:
    return {"audience": tenant.audience_slug, "client": tenant.client_slug, **body}


async def upsert(api: AsyncClient, tenant: Tenant, email: str, **body: Any) -> Response:
    response = await api.post(
        "/api/contacts", json=scoped(tenant, email=email, **body), headers=tenant.headers
    )
    assert response.status_code == 200, response.text
    return response


async def status(api: AsyncClient, tenant: Tenant, email: str) -> dict[str, Any]:
    response = await api.get(
        "/api/contacts/status", params=scoped(tenant, email=email), headers=tenant.headers
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def event_count(session: AsyncSession, event_type: str, contact_id: int | None = None) -> int:
    stmt = select(func.count()).select_from(EmailEvent).where(EmailEvent.event_type == event_type)
    if contact_id is not None:
        stmt = stmt.where(EmailEvent.contact_id == contact_id)
    return int(await session.scalar(stmt) or 0)


async def table_counts(session: AsyncSession) -> dict[str, int]:
    """Row counts of every audience table, to show a rejected request changed nothing."""
    tables = (
        "contacts",
        "subscriptions",
        "tags",
        "contact_tags",
        "category_preferences",
        "email_events",
        "suppressions",
    )
    return {t: int(await session.scalar(text(f"select count(*) from {t}")) or 0) for t in tables}


async def post_csv(api: AsyncClient, tenant: Tenant, content: bytes, **form: str) -> Response:
    """A multipart CSV import into the tenant's own scope."""
    return await api.post(
        "/api/contacts/imports/csv",
        data=scoped(tenant, **form),
        files={"file": ("contacts.csv", content, "text/csv")},
        headers=tenant.headers,
    )
