"""Email templates, keyed by `(client_id, key)`."""

from typing import Any

from sqlalchemy import func, literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.models import EmailTemplate

# What a PUT replaces; everything else (id, client, key, created_at) is fixed.
TEMPLATE_FIELDS = (
    "name",
    "description",
    "subject",
    "html_body",
    "text_body",
    "required_context",
    "example_context",
    "is_active",
    "default_sender_id",
)


async def get_template(
    session: AsyncSession, client_id: int, key: str, *, active_only: bool = False
) -> EmailTemplate | None:
    stmt = select(EmailTemplate).where(EmailTemplate.client_id == client_id, EmailTemplate.key == key)
    if active_only:
        stmt = stmt.where(EmailTemplate.is_active.is_(True))
    return await session.scalar(stmt)


async def upsert_template(
    session: AsyncSession, client_id: int, key: str, values: dict[str, Any]
) -> tuple[EmailTemplate, bool]:
    """Create or replace the template; returns it and whether it was created. One
    statement, so two concurrent PUTs of a new key both succeed (one creates)."""
    unknown = set(values) - set(TEMPLATE_FIELDS)
    if unknown:
        raise ValueError(f"not template fields: {sorted(unknown)}")
    stmt = insert(EmailTemplate).values(client_id=client_id, key=key, **values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[EmailTemplate.client_id, EmailTemplate.key],
        set_={**{name: stmt.excluded[name] for name in values}, "updated_at": func.now()},
    )
    # xmax is 0 on a freshly inserted row version, non-zero on an updated one.
    row: Any = (await session.execute(stmt.returning(EmailTemplate.id, literal_column("xmax = 0")))).one()
    template = await session.scalar(
        select(EmailTemplate).where(EmailTemplate.id == row[0]).execution_options(populate_existing=True)
    )
    assert template is not None
    return template, bool(row[1])
