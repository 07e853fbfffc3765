"""Recipient lists as a client sees them: key checks, the member writes in chunks
through the audience engine (contacts) and the list repository (memberships)."""

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_api.audience.service import ContactScope, require_email
from datamailer_api.lists.schemas import (
    MAX_LIST_KEY,
    MAX_SEGMENTS,
    BulkMemberIn,
    ListAttributes,
    ListOut,
    MemberCounts,
)
from datamailer_core.errors import NotFound, ValidationFailed
from datamailer_core.models import RecipientList
from datamailer_core.models.lists import ROOT_KEY
from datamailer_core.repositories import recipient_lists as repo
from datamailer_core.repositories.audience import ContactInput, apply_contacts
from datamailer_core.repositories.contacts import clean_email, normalize_email

CHUNK = 2000
MAX_REPORTED_FIELDS = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_list_key(raw: str, *, writable: bool = True) -> str:
    """A key is `:`-separated segments: none empty or edged with spaces, no control
    character, at most 255 characters and 16 segments. `<all>` (the audience root) is
    read-only."""

    def bad(reason: str) -> ValidationFailed:
        return ValidationFailed("invalid list key", fields={"list_key": reason})

    if raw == ROOT_KEY:
        if writable:
            raise bad("reserved")
        return raw
    if not raw:
        raise bad("required")
    if len(raw) > MAX_LIST_KEY:
        raise bad("too_long")
    if _CONTROL.search(raw):
        raise bad("invalid")
    segments = raw.split(repo.SEPARATOR)
    if len(segments) > MAX_SEGMENTS:
        raise bad("too_deep")
    if any(not s for s in segments):
        raise bad("empty_segment")
    if any(s != s.strip() for s in segments):
        raise bad("invalid")
    return raw


def check_source_key(raw: str) -> str:
    if not raw or len(raw) > 255 or _CONTROL.search(raw) or raw != raw.strip():
        reason = "too_long" if len(raw) > 255 else "invalid"
        raise ValidationFailed("invalid source object key", fields={"source_object_key": reason})
    return raw


def list_scope(scope: ContactScope) -> repo.ListScope:
    return repo.ListScope(client_id=scope.client_id, audience_id=scope.audience.id)


def parent_key(list_key: str) -> str | None:
    if list_key == ROOT_KEY:
        return None
    head, sep, _ = list_key.rpartition(repo.SEPARATOR)
    return head if sep else ROOT_KEY


async def list_out(
    session: AsyncSession,
    scope: ContactScope,
    list_key: str,
    found: RecipientList | None,
    created: bool = False,
) -> ListOut:
    numbers = await repo.counts(session, list_scope(scope), list_key, found.id if found else None)
    return ListOut(
        list_key=list_key,
        audience=scope.audience.slug,
        client=scope.client_slug,
        type=found.list_type if found else "all",
        name=found.name if found else "All members",
        metadata=found.metadata_ if found else {},
        parent_key=parent_key(list_key),
        created=created,
        created_at=found.created_at if found else None,
        updated_at=found.updated_at if found else None,
        **numbers,
    )


async def read_list(session: AsyncSession, scope: ContactScope, list_key: str) -> ListOut:
    """A stored list, or the audience root `<all>` (every list of this client's members)."""
    found = await repo.get_list(session, list_scope(scope), list_key)
    if found is None and list_key != ROOT_KEY:
        raise NotFound("recipient list not found", fields={"list_key": "not_found"})
    return await list_out(session, scope, list_key, found)


async def ensure_list(
    session: AsyncSession, scope: ContactScope, list_key: str, attributes: ListAttributes | None
) -> tuple[RecipientList, bool]:
    attrs = attributes or ListAttributes()
    return await repo.ensure_list(
        session, list_scope(scope), list_key, list_type=attrs.type, name=attrs.name, metadata=attrs.metadata
    )


@dataclass
class CheckedMember:
    source_object_key: str
    email: str
    normalized: str
    status: str
    metadata: dict[str, object]


def check_members(members: Sequence[BulkMemberIn]) -> list[CheckedMember]:
    """Every member checked before anything is written: an invalid address or a repeated
    source key rejects the whole request (a reconcile must never act on part of a set)."""
    fields: dict[str, str] = {}
    checked: list[CheckedMember] = []
    seen: set[str] = set()
    for index, member in enumerate(members):
        if len(fields) >= MAX_REPORTED_FIELDS:
            break
        email = clean_email(member.email)
        if email is None:
            fields[f"members.{index}.email"] = "invalid"
            continue
        if (
            _CONTROL.search(member.source_object_key)
            or member.source_object_key != member.source_object_key.strip()
        ):
            fields[f"members.{index}.source_object_key"] = "invalid"
            continue
        if member.source_object_key in seen:
            fields[f"members.{index}.source_object_key"] = "duplicate_input"
            continue
        seen.add(member.source_object_key)
        checked.append(
            CheckedMember(
                member.source_object_key, email, normalize_email(email), member.status, member.metadata
            )
        )
    if fields:
        raise ValidationFailed("some members are invalid; nothing was written", fields=fields)
    return checked


async def write_members(
    session: AsyncSession, scope: ContactScope, list_id: int, members: Sequence[CheckedMember]
) -> MemberCounts:
    """Chunk by chunk, each its own short transaction: the contacts the client already
    holds are looked up (one statement), the others go through the audience engine (a
    constant number of statements), then the memberships are written in one statement."""
    counts = MemberCounts(total=len(members))
    for start in range(0, len(members), CHUNK):
        chunk = members[start : start + CHUNK]
        ids = await repo.known_contacts(session, list_scope(scope), list({m.normalized for m in chunk}))
        missing: dict[str, ContactInput] = {}
        for m in chunk:
            if m.normalized not in ids:
                missing.setdefault(
                    m.normalized, ContactInput(email=m.email, normalized=m.normalized, source="list")
                )
        if missing:
            applied = await apply_contacts(
                session,
                audience_id=scope.audience.id,
                client_id=scope.client_id,
                items=list(missing.values()),
            )
            ids.update(zip(missing, applied.contact_ids, strict=True))
        written = await repo.upsert_members(
            session,
            list_id,
            [
                repo.MemberRow(ids[m.normalized], m.source_object_key, m.email, m.status, dict(m.metadata))
                for m in chunk
            ],
        )
        await session.commit()
        counts.created += written.created
        counts.updated += written.updated
        counts.unchanged += written.unchanged
    return counts


def single(source_object_key: str, email: str, status: str, metadata: dict[str, object]) -> CheckedMember:
    clean = require_email(email, "member.email")
    return CheckedMember(source_object_key, clean, normalize_email(clean), status, metadata)
