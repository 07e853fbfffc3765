"""Recipient lists: the list rows (created with their ancestors), direct members written
set-based per chunk, and the subtree reads that give ancestor and `<all>` membership.

A list's effective members are the active direct members of every list in its subtree:
`SUBTREE_CONTACTS` is that one set-based query, the shape a campaign snapshot joins."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.models import RecipientList
from datamailer_core.models.lists import ROOT_KEY

SEPARATOR = ":"


def ancestors(list_key: str) -> list[str]:
    """`a:b:c` → `["a", "a:b", "a:b:c"]` (the key itself last)."""
    parts = list_key.split(SEPARATOR)
    return [SEPARATOR.join(parts[: n + 1]) for n in range(len(parts))]


# Lists of one client in one audience whose key is :key or under it; `<all>` takes every
# list of the scope. starts_with() needs no LIKE escaping of `_` or `%` in keys.
IN_SUBTREE: Final = """
    l.client_id = :client_id AND l.audience_id = :audience_id
    AND (CAST(:root AS boolean) OR l.list_key = :key OR starts_with(l.list_key, :prefix))
"""

SUBTREE_CONTACTS = text(
    f"""
    SELECT DISTINCT m.contact_id
    FROM recipient_lists l
    JOIN recipient_list_members m ON m.list_id = l.id AND m.status = 'active'
    WHERE {IN_SUBTREE}
    """
)

# Contacts this client already holds (a client subscription exists): nothing of theirs
# changes when they join a list, so the audience engine is only run for the others. The
# key-share lock keeps an erasure from deleting them before the membership is written.
_KNOWN_CONTACTS = text(
    """
    SELECT c.normalized_email, c.id
    FROM unnest(CAST(:norms AS text[])) AS wanted(norm)
    JOIN contacts c ON c.normalized_email = wanted.norm
         AND c.organization_id = (SELECT organization_id FROM audiences WHERE id = :audience_id)
    JOIN subscriptions s ON s.contact_id = c.id AND s.audience_id = :audience_id AND s.client_id = :client_id
    FOR KEY SHARE OF c
    """
)

_ENSURE_LISTS = text(
    """
    INSERT INTO recipient_lists (client_id, audience_id, list_key)
    SELECT :client_id, :audience_id, k FROM unnest(CAST(:keys AS text[])) AS k
    ON CONFLICT (client_id, audience_id, list_key) DO NOTHING
    """
)

# Only the attributes given change; a repeat changes nothing, not even updated_at.
_SET_ATTRIBUTES = text(
    """
    UPDATE recipient_lists SET type = COALESCE(CAST(:type AS text), type),
        name = COALESCE(CAST(:name AS text), name),
        metadata = COALESCE(CAST(:metadata AS jsonb), metadata), updated_at = now()
    WHERE client_id = :client_id AND audience_id = :audience_id AND list_key = :key
      AND (type, name, metadata) IS DISTINCT FROM
          (COALESCE(CAST(:type AS text), type), COALESCE(CAST(:name AS text), name),
           COALESCE(CAST(:metadata AS jsonb), metadata))
    """
)

_UPSERT_MEMBERS = text(
    """
    INSERT INTO recipient_list_members AS m (list_id, contact_id, source_object_key, email, status, metadata,
                                             removed_at)
    SELECT CAST(:list_id AS bigint), v.contact_id, v.source_object_key, v.email, v.status,
           CAST(v.metadata AS jsonb), CASE WHEN v.status = 'removed' THEN now() END
    FROM unnest(CAST(:contact_ids AS bigint[]), CAST(:keys AS text[]), CAST(:emails AS text[]),
                CAST(:statuses AS text[]), CAST(:metadata AS text[]))
         AS v(contact_id, source_object_key, email, status, metadata)
    ON CONFLICT (list_id, source_object_key) DO UPDATE SET contact_id = excluded.contact_id,
        email = excluded.email, status = excluded.status, metadata = excluded.metadata,
        removed_at = CASE WHEN excluded.status = 'removed' THEN COALESCE(m.removed_at, now()) END,
        updated_at = now()
    WHERE (m.contact_id, m.email, m.status, m.metadata)
          IS DISTINCT FROM (excluded.contact_id, excluded.email, excluded.status, excluded.metadata)
    RETURNING (xmax = 0) AS created
    """
)

# A hash anti-join against the wanted keys: one statement whatever the list's size.
_REMOVE_ABSENT = text(
    """
    UPDATE recipient_list_members m SET status = 'removed', removed_at = now(), updated_at = now()
    WHERE m.list_id = :list_id AND m.status = 'active'
      AND NOT EXISTS (SELECT 1 FROM unnest(CAST(:keys AS text[])) AS k(key) WHERE k.key = m.source_object_key)
    """
)

_COUNTS = text(
    f"""
    SELECT
        (SELECT count(DISTINCT m.contact_id) FROM recipient_lists l
         JOIN recipient_list_members m ON m.list_id = l.id AND m.status = 'active'
         WHERE {IN_SUBTREE}) AS member_count,
        (SELECT count(*) FROM recipient_list_members WHERE list_id = :list_id AND status = 'active')
            AS direct_member_count,
        (SELECT count(*) FROM recipient_list_members WHERE list_id = :list_id AND status = 'removed')
            AS removed_member_count
    """
)


@dataclass(frozen=True)
class ListScope:
    client_id: int
    audience_id: int


@dataclass
class MemberRow:
    contact_id: int
    source_object_key: str
    email: str
    status: str
    metadata: dict[str, Any]


@dataclass
class WriteCounts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


def subtree_params(scope: ListScope, list_key: str) -> dict[str, Any]:
    return {
        "client_id": scope.client_id,
        "audience_id": scope.audience_id,
        "root": list_key == ROOT_KEY,
        "key": list_key,
        "prefix": list_key + SEPARATOR,
    }


async def get_list(session: AsyncSession, scope: ListScope, list_key: str) -> RecipientList | None:
    return await session.scalar(
        select(RecipientList).where(
            RecipientList.client_id == scope.client_id,
            RecipientList.audience_id == scope.audience_id,
            RecipientList.list_key == list_key,
        )
    )


async def ensure_list(
    session: AsyncSession,
    scope: ListScope,
    list_key: str,
    *,
    list_type: str | None = None,
    name: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[RecipientList, bool]:
    """The list (created with any missing ancestor), its given attributes set; True when
    the list itself was created."""
    existed = await get_list(session, scope, list_key) is not None
    params = {"client_id": scope.client_id, "audience_id": scope.audience_id}
    await session.execute(_ENSURE_LISTS, {**params, "keys": ancestors(list_key)})
    await session.execute(
        _SET_ATTRIBUTES,
        {
            **params,
            "key": list_key,
            "type": list_type,
            "name": name,
            "metadata": None if metadata is None else json.dumps(metadata),
        },
    )
    found = await get_list(session, scope, list_key)
    assert found is not None
    await session.refresh(found)
    return found, not existed


async def known_contacts(session: AsyncSession, scope: ListScope, norms: Sequence[str]) -> dict[str, int]:
    """Normalized email → contact id, for the contacts the client already holds."""
    rows = await session.execute(
        _KNOWN_CONTACTS,
        {"norms": list(norms), "audience_id": scope.audience_id, "client_id": scope.client_id},
    )
    return {row[0]: row[1] for row in rows}


async def upsert_members(session: AsyncSession, list_id: int, rows: Sequence[MemberRow]) -> WriteCounts:
    """One statement for the chunk (distinct source keys); unchanged rows are not written."""
    if not rows:
        return WriteCounts()
    result = await session.execute(
        _UPSERT_MEMBERS,
        {
            "list_id": list_id,
            "contact_ids": [r.contact_id for r in rows],
            "keys": [r.source_object_key for r in rows],
            "emails": [r.email for r in rows],
            "statuses": [r.status for r in rows],
            "metadata": [json.dumps(r.metadata, sort_keys=True) for r in rows],
        },
    )
    flags = list(result.scalars())
    created = sum(1 for f in flags if f)
    return WriteCounts(created=created, updated=len(flags) - created, unchanged=len(rows) - len(flags))


async def remove_absent(session: AsyncSession, list_id: int, keep_keys: Sequence[str]) -> int:
    """Active direct members whose source key is not kept become `removed`."""
    result = await session.execute(_REMOVE_ABSENT, {"list_id": list_id, "keys": list(keep_keys)})
    return int(result.rowcount)  # type: ignore[attr-defined]


async def counts(
    session: AsyncSession, scope: ListScope, list_key: str, list_id: int | None
) -> dict[str, int]:
    row = (await session.execute(_COUNTS, {**subtree_params(scope, list_key), "list_id": list_id or 0})).one()
    return dict(row._mapping)


async def subtree_contact_ids(session: AsyncSession, scope: ListScope, list_key: str) -> list[int]:
    return list((await session.execute(SUBTREE_CONTACTS, subtree_params(scope, list_key))).scalars())
