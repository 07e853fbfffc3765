"""Organizations, audiences, clients and their API keys."""

from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.errors import Conflict, NotFound
from datamailer_core.models import Audience, Client, ClientApiKey, Organization
from datamailer_core.security import IssuedKey, issue_api_key

LAST_USED_RESOLUTION_SECONDS = 60
_M = TypeVar("_M", Organization, Audience, Client)


@dataclass(frozen=True)
class Scope:
    organization: Organization
    audience: Audience
    client: Client


async def get_key_with_client(
    session: AsyncSession, public_id: str
) -> tuple[ClientApiKey, Client, Organization] | None:
    row = (
        await session.execute(
            select(ClientApiKey, Client, Organization)
            .join(Client, Client.id == ClientApiKey.client_id)
            .join(Organization, Organization.id == Client.organization_id)
            .where(ClientApiKey.public_id == public_id, ClientApiKey.revoked_at.is_(None))
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1], row[2])


async def touch_key(session: AsyncSession, key_id: int, last_used_at: datetime | None) -> bool:
    """Record use at most once a minute per key; returns whether a write happened."""
    if last_used_at is not None and (
        (datetime.now(last_used_at.tzinfo) - last_used_at).total_seconds() < LAST_USED_RESOLUTION_SECONDS
    ):
        return False
    result = await session.execute(
        update(ClientApiKey)
        .where(
            ClientApiKey.id == key_id,
            or_(
                ClientApiKey.last_used_at.is_(None),
                ClientApiKey.last_used_at
                < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, LAST_USED_RESOLUTION_SECONDS),
            ),
        )
        .values(last_used_at=func.now())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def _upsert_returning(
    session: AsyncSession, model: type[_M], keys: dict[str, object], values: dict[str, object]
) -> _M:
    stmt = insert(model).values(**keys, **values)
    stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
    await session.execute(stmt)
    found = (await session.execute(select(model).filter_by(**keys))).scalar_one()
    return found


async def provision(
    session: AsyncSession,
    *,
    organization: str,
    audience: str,
    client: str,
    client_name: str | None = None,
) -> Scope:
    """Create the organization, audience and client when missing; safe to run twice."""
    org = await _upsert_returning(session, Organization, {"slug": organization}, {"name": organization})
    aud = await _upsert_returning(
        session, Audience, {"organization_id": org.id, "slug": audience}, {"name": audience}
    )
    cli = await _upsert_returning(
        session, Client, {"organization_id": org.id, "slug": client}, {"name": client_name or client}
    )
    return Scope(org, aud, cli)


async def get_client_by_slug(session: AsyncSession, slug: str, organization: str | None = None) -> Client:
    stmt = select(Client).where(Client.slug == slug)
    if organization is not None:
        stmt = stmt.join(Organization).where(Organization.slug == organization)
    clients = (await session.execute(stmt)).scalars().all()
    if not clients:
        raise NotFound(f"client {slug!r} not found", fields={"client": "not_found"})
    if len(clients) > 1:
        raise Conflict(f"client slug {slug!r} exists in several organizations: name the organization")
    return clients[0]


async def get_organization(session: AsyncSession, organization_id: int) -> Organization:
    return (
        await session.execute(select(Organization).where(Organization.id == organization_id))
    ).scalar_one()


async def set_senders(
    session: AsyncSession, client: Client, senders: list[dict[str, str]], default_sender_id: str | None
) -> Client:
    client.sender_emails = senders
    client.default_sender_id = default_sender_id
    await session.flush()
    return client


async def create_key(
    session: AsyncSession, client: Client, name: str, secret_key: str, notes: str | None = None
) -> tuple[ClientApiKey, IssuedKey]:
    taken = await session.scalar(
        select(ClientApiKey.id).where(
            ClientApiKey.client_id == client.id, ClientApiKey.name == name, ClientApiKey.revoked_at.is_(None)
        )
    )
    if taken is not None:
        raise Conflict(
            f"client {client.slug!r} already has an active key named {name!r}", fields={"name": "taken"}
        )
    issued = issue_api_key(secret_key)
    key = ClientApiKey(
        client_id=client.id, name=name, public_id=issued.public_id, key_hash=issued.key_hash, notes=notes
    )
    session.add(key)
    await session.flush()
    return key, issued


async def list_keys(session: AsyncSession, client: Client | None = None) -> list[tuple[ClientApiKey, Client]]:
    stmt = select(ClientApiKey, Client).join(Client).order_by(Client.slug, ClientApiKey.created_at)
    if client is not None:
        stmt = stmt.where(ClientApiKey.client_id == client.id)
    return [(k, c) for k, c in (await session.execute(stmt)).all()]


async def revoke_key(session: AsyncSession, public_id: str) -> ClientApiKey:
    public_id = public_id.removeprefix("dm_")
    key = await session.scalar(select(ClientApiKey).where(ClientApiKey.public_id == public_id))
    if key is None:
        raise NotFound(f"no key dm_{public_id}", fields={"public_id": "not_found"})
    if key.revoked_at is None:
        key.revoked_at = datetime.now().astimezone()
        await session.flush()
    return key
