"""Contacts: one row per normalized address in each organization.

Creating a contact consults the suppression list first: the mailbox facts (SES hard
bounces and complaints, kept without an organization) and the organization's own list,
so an address erased after it bounced, complained or unsubscribed globally comes back
suppressed, and one that bounced for any organization starts suppressed everywhere."""

import hashlib
import re
from typing import Any

import idna
from pydantic import EmailStr, TypeAdapter, ValidationError
from sqlalchemy import Select, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import func

from datamailer_core.models import Contact, Suppression

# Which contact column each suppression reason restores.
SUPPRESSION_COLUMNS = {
    "hard_bounce": "hard_bounced_at",
    "complaint": "complained_at",
    "global_unsubscribe": "global_unsubscribed_at",
    "manual": "global_unsubscribed_at",
}


def normalize_email(email: str) -> str:
    """The identity of an address: trimmed, the local part lowercased with `str.lower`
    (not casefold: `SS@x` and `ß@x` are two mailboxes) and the domain in its lowercase
    ASCII (IDNA) form, so `  Alice@Example.COM ` and `alice@example.com` are one contact,
    and so are `user@exämple.com` and `user@xn--exmple-cua.com`."""
    local, at, domain = email.strip().rpartition("@")
    if not at:
        return domain.lower()
    return f"{local.lower()}@{_ascii_domain(domain) or domain.lower()}"


def _ascii_domain(domain: str) -> str | None:
    """Lowercase A-labels (IDNA 2008 with the UTS #46 mapping); None for a domain that is
    not a valid IDN, e.g. a malformed `xn--` label."""
    if domain.isascii() and "xn--" not in domain.lower():
        return domain.lower()
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None


def address_hash(normalized_email: str) -> str:
    return hashlib.sha256(normalized_email.encode()).hexdigest()


def applicable_suppressions(organization_id: Any, hashes: Any) -> Select[str, str]:
    """(address hash, reason) of the suppressions that hold for these hashes in this
    organization: the mailbox facts and the organization's own rows."""
    return select(Suppression.address_hash, Suppression.reason).where(
        Suppression.address_hash.in_(hashes),
        or_(Suppression.organization_id.is_(None), Suppression.organization_id == organization_id),
    )


async def get_contact_by_email(session: AsyncSession, organization_id: int, email: str) -> Contact | None:
    normalized = normalize_email(email)
    return await session.scalar(
        select(Contact).where(
            Contact.organization_id == organization_id, Contact.normalized_email == normalized
        )
    )


async def get_or_create_contact(
    session: AsyncSession, organization_id: int, email: str
) -> tuple[Contact, bool]:
    """The organization's contact for an address and whether it was created now; safe
    under concurrency (INSERT ... ON CONFLICT DO NOTHING, then read)."""
    normalized = normalize_email(email)
    mine = (Contact.organization_id == organization_id, Contact.normalized_email == normalized)
    existing = await session.scalar(select(Contact).where(*mine))
    if existing is not None:
        return existing, False
    reasons = (
        await session.execute(applicable_suppressions(organization_id, [address_hash(normalized)]))
    ).all()
    values: dict[str, object] = {
        "organization_id": organization_id,
        "email": email.strip(),
        "normalized_email": normalized,
    }
    for _, reason in reasons:
        values[SUPPRESSION_COLUMNS[reason]] = func.now()
    inserted = await session.scalar(
        insert(Contact)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["organization_id", "normalized_email"])
        .returning(Contact.id)
    )
    contact = await session.scalar(select(Contact).where(*mine).execution_options(populate_existing=True))
    assert contact is not None
    return contact, inserted is not None


MAILBOX_FACTS = {"hard_bounce": Contact.hard_bounced_at, "complaint": Contact.complained_at}
# What an operator may suppress by hand: the mailbox facts, and a global unsubscribe.
MANUAL_SUPPRESSIONS = {**MAILBOX_FACTS, "global_unsubscribe": Contact.global_unsubscribed_at}


async def record_mailbox_fact(session: AsyncSession, normalized_email: str, reason: str) -> list[int]:
    """SES reported a hard bounce or complaint for the mailbox: every organization's
    contact for the address is suppressed (once), and so is any contact created later.
    Returns the ids of the contacts that changed."""
    return await suppress_address(session, normalized_email, reason, column=MAILBOX_FACTS[reason])


async def suppress_address(
    session: AsyncSession,
    normalized_email: str,
    reason: str,
    *,
    organization_id: int | None = None,
    column: Any = None,
) -> list[int]:
    """Suppress an address for `reason` in one organization, or in every organization
    (None): the suppression row (kept once), and the contacts' column set where it is not
    yet, so contacts created later start suppressed too. Returns the contacts changed."""
    column = MANUAL_SUPPRESSIONS[reason] if column is None else column
    hashed = address_hash(normalized_email)
    row = insert(Suppression).values(organization_id=organization_id, address_hash=hashed, reason=reason)
    if organization_id is None:
        row = row.on_conflict_do_nothing(
            index_elements=["address_hash", "reason"], index_where=Suppression.organization_id.is_(None)
        )
    else:
        row = row.on_conflict_do_nothing(
            index_elements=["organization_id", "address_hash", "reason"],
            index_where=Suppression.organization_id.is_not(None),
        )
    await session.execute(row)
    which = [Contact.normalized_email == normalized_email, column.is_(None)]
    if organization_id is not None:
        which.append(Contact.organization_id == organization_id)
    changed = await session.scalars(
        update(Contact)
        .where(*which)
        .values({column: func.now(), Contact.updated_at: func.now()})
        .returning(Contact.id)
    )
    return list(changed)


_EMAIL = TypeAdapter(EmailStr)
MAX_EMAIL_LENGTH = 254
MAX_LOCAL_OCTETS = 64
_SPECIAL_USE = {"arpa", "invalid", "local", "localhost", "onion", "test"}  # as the full validator
# Plain ASCII addresses (nearly all of them) are checked with this dot-atom pattern;
# anything else goes through the full validator, which is ~50x slower.
_ASCII_EMAIL = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)


def clean_email(raw: str) -> str | None:
    """The trimmed address when it is one valid address, else None: at most 254
    characters (in its ASCII-domain form too), a local part of at most 64 octets (UTF-8)
    and a domain that is a valid IDN."""
    email = raw.strip()
    if not email or len(email) > MAX_EMAIL_LENGTH or any(ch in email for ch in "\r\n\0 ,;<>"):
        return None
    local, _, domain = email.rpartition("@")
    if len(local.encode()) > MAX_LOCAL_OCTETS:
        return None
    ascii_domain = _ascii_domain(domain)
    if ascii_domain is None or len(local) + 1 + len(ascii_domain) > MAX_EMAIL_LENGTH:
        return None
    tld = email.rsplit(".", 1)[-1].lower()
    if email.isascii() and tld not in _SPECIAL_USE and _ASCII_EMAIL.match(email):
        return email
    try:
        _EMAIL.validate_python(email)
    except ValidationError:
        return None
    return email
