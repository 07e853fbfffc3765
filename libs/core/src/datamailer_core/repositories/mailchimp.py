"""Mailchimp sync: the account and tag mappings (the client API), the outbox writes of
contact changes (in the caller's transaction, so a sync exists exactly when its change
was committed), and the dispatcher's claim and result."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.mailchimp import subscriber_hash, tag_changes
from datamailer_core.models import MailchimpAccount, MailchimpSync, MailchimpTagMapping
from datamailer_core.webhooks import backoff_seconds

ACCOUNT_FIELDS: Final = ("api_key", "list_id", "enabled")


def is_configured(account: MailchimpAccount | None) -> bool:
    return account is not None and bool(account.api_key) and bool(account.list_id)


async def get_account(session: AsyncSession, client_id: int) -> MailchimpAccount | None:
    return await session.get(MailchimpAccount, client_id, populate_existing=True)


async def update_account(session: AsyncSession, client_id: int, changes: dict[str, Any]) -> MailchimpAccount:
    """Set the given fields of the client's account (created on first use)."""
    unknown = set(changes) - set(ACCOUNT_FIELDS)
    if unknown:
        raise ValueError(f"unknown Mailchimp account fields {sorted(unknown)}")
    stmt = insert(MailchimpAccount).values(client_id=client_id, **changes)
    if changes:
        stmt = stmt.on_conflict_do_update(
            index_elements=[MailchimpAccount.client_id], set_={**changes, "updated_at": func.now()}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=[MailchimpAccount.client_id])
    await session.execute(stmt)
    account = await get_account(session, client_id)
    assert account is not None
    return account


async def list_mappings(session: AsyncSession, client_id: int, audience_id: int) -> list[MailchimpTagMapping]:
    rows = await session.scalars(
        select(MailchimpTagMapping)
        .where(MailchimpTagMapping.client_id == client_id, MailchimpTagMapping.audience_id == audience_id)
        .order_by(MailchimpTagMapping.list_key, MailchimpTagMapping.tag)
        .execution_options(populate_existing=True)
    )
    return list(rows.all())


async def replace_mappings(
    session: AsyncSession, client_id: int, audience_id: int, wanted: Sequence[tuple[str, str, bool]]
) -> list[MailchimpTagMapping]:
    """Make the client's mappings in the audience exactly `wanted` `(list_key, tag, enabled)`."""
    _m = MailchimpTagMapping
    await session.execute(delete(_m).where(_m.client_id == client_id, _m.audience_id == audience_id))
    if wanted:
        await session.execute(
            insert(_m),
            [
                {"client_id": client_id, "audience_id": audience_id, "list_key": k, "tag": t, "enabled": e}
                for k, t, e in wanted
            ],
        )
    return await list_mappings(session, client_id, audience_id)


# --- The outbox writes ----------------------------------------------------------------


@dataclass(frozen=True)
class MemberChange:
    """A contact changed; `added`/`removed` are the recipient-list keys (or audience tag
    slugs) it joined and left, `current` all it has now."""

    contact_id: int
    added: Sequence[str] = ()
    removed: Sequence[str] = ()
    current: Sequence[str] = ()


async def _enabled_account(session: AsyncSession, client_id: int) -> MailchimpAccount | None:
    account = await session.get(MailchimpAccount, client_id)
    return account if account is not None and account.enabled and is_configured(account) else None


async def record_changes(
    session: AsyncSession,
    *,
    client_id: int,
    audience_id: int,
    changes: Sequence[MemberChange],
    tags_only: bool = False,
) -> int:
    """Queue one `upsert` sync per changed contact when the client syncs to Mailchimp,
    with the tag operations its enabled mappings give. With `tags_only`, a change that
    maps to no tag queues nothing. Returns the syncs queued."""
    if not changes or await _enabled_account(session, client_id) is None:
        return 0
    mappings = [
        (m.list_key, m.tag) for m in await list_mappings(session, client_id, audience_id) if m.enabled
    ]
    rows = []
    for change in changes:
        tags = tag_changes(mappings, change.added, change.removed, change.current) if mappings else []
        if tags or not tags_only:
            rows.append(
                {
                    "client_id": client_id,
                    "audience_id": audience_id,
                    "contact_id": change.contact_id,
                    "action": "upsert",
                    "tags": tags,
                }
            )
    if rows:
        await session.execute(insert(MailchimpSync), rows)
    return len(rows)


_RECORD_SUPPRESSED = text(
    """
    INSERT INTO mailchimp_syncs (client_id, audience_id, contact_id, action)
    SELECT DISTINCT s.client_id, s.audience_id, s.contact_id, 'upsert'
    FROM subscriptions s
    JOIN mailchimp_accounts a ON a.client_id = s.client_id
         AND a.enabled AND a.api_key <> '' AND a.list_id <> ''
    WHERE s.contact_id = ANY(CAST(:ids AS bigint[]))
    """
)


async def record_suppressed(session: AsyncSession, contact_ids: Sequence[int]) -> None:
    """SES suppressed these contacts (hard bounce, complaint): every syncing client they
    are subscribed to pushes them again, now `unsubscribed`."""
    if contact_ids:
        await session.execute(_RECORD_SUPPRESSED, {"ids": list(contact_ids)})


_RECORD_DELETES = text(
    """
    INSERT INTO mailchimp_syncs (client_id, contact_id, action, subscriber_hash)
    SELECT a.client_id, NULL, 'delete', CAST(:hash AS text)
    FROM mailchimp_accounts a JOIN clients cl ON cl.id = a.client_id
    WHERE cl.organization_id = :organization_id AND a.enabled AND a.api_key <> '' AND a.list_id <> ''
    ORDER BY a.client_id
    """
)


async def record_erase(session: AsyncSession, *, organization_id: int, contact_id: int, email: str) -> None:
    """The address is being erased: drop its queued upserts and queue a permanent delete
    in the Mailchimp audience of every syncing client of the organization."""
    await session.execute(
        update(MailchimpSync)
        .where(MailchimpSync.contact_id == contact_id, MailchimpSync.status == "pending")
        .values(status="skipped", last_error="contact_erased")
    )
    await session.execute(
        _RECORD_DELETES, {"organization_id": organization_id, "hash": subscriber_hash(email)}
    )


# --- The dispatcher -------------------------------------------------------------------


@dataclass(frozen=True)
class DueSync:
    id: int
    client_id: int
    action: str
    tags: list[dict[str, Any]]
    attempt_count: int
    api_key: str
    list_id: str
    enabled: bool
    subscriber_hash: str | None
    # The contact as it is now (upsert; None once erased).
    email: str | None
    suppressed: bool
    unsubscribed: bool
    subscribed: bool


_CLAIM = text(
    """
    WITH picked AS (
        SELECT s.id, s.client_id, s.audience_id, s.contact_id FROM mailchimp_syncs s
        WHERE (s.status = 'pending' AND s.next_attempt_at <= now())
           OR (s.status = 'sending' AND s.lease_expires_at < now())
        ORDER BY s.next_attempt_at, s.id
        LIMIT :limit
        FOR UPDATE OF s SKIP LOCKED
    ), state AS (
        SELECT p.id, a.api_key, a.list_id, a.enabled, c.email,
               (c.global_unsubscribed_at IS NOT NULL OR c.hard_bounced_at IS NOT NULL
                OR c.complained_at IS NOT NULL) AS suppressed,
               (COALESCE(cs.status, '') = 'unsubscribed'
                OR COALESCE(aus.status, '') = 'unsubscribed') AS unsubscribed,
               COALESCE(cs.status, '') = 'subscribed' AS subscribed
        FROM picked p
        JOIN mailchimp_accounts a ON a.client_id = p.client_id
        LEFT JOIN contacts c ON c.id = p.contact_id
        LEFT JOIN subscriptions cs ON cs.contact_id = p.contact_id
             AND cs.audience_id = p.audience_id AND cs.client_id = p.client_id
        LEFT JOIN subscriptions aus ON aus.contact_id = p.contact_id
             AND aus.audience_id = p.audience_id AND aus.client_id IS NULL
    )
    UPDATE mailchimp_syncs s
    SET status = 'sending', lease_owner = :owner,
        lease_expires_at = now() + make_interval(secs => :lease_seconds)
    FROM state
    WHERE s.id = state.id
    RETURNING s.id, s.client_id, s.action, s.tags, s.attempt_count, state.api_key, state.list_id,
              state.enabled, s.subscriber_hash, state.email, state.suppressed, state.unsubscribed,
              state.subscribed
    """
)


async def claim_due(session: AsyncSession, *, owner: str, limit: int, lease_seconds: float) -> list[DueSync]:
    """Lease due syncs (and those whose lease expired mid-attempt), oldest first, with
    the account and the contact's current state."""
    rows = await session.execute(_CLAIM, {"owner": owner, "limit": limit, "lease_seconds": lease_seconds})
    return sorted((DueSync(**row._mapping) for row in rows), key=lambda d: d.id)


@dataclass(frozen=True)
class Outcome:
    """`ok`, `skipped` (nothing to send), or an error that is `permanent` or retried."""

    status_code: int | None = None
    error: str | None = None
    ok: bool = False
    skipped: bool = False
    permanent: bool = False


async def record_outcome(session: AsyncSession, claimed: DueSync, owner: str, outcome: Outcome) -> None:
    """Record an attempt of a leased sync: delivered, skipped, failed for good (a 4xx
    other than 429, or the last attempt), or retried after the webhook backoff. A lease
    no longer ours records nothing."""
    values: dict[str, Any] = {
        "last_status_code": outcome.status_code,
        "last_error": outcome.error,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if outcome.skipped:
        values["status"] = "skipped"
    else:
        number = claimed.attempt_count + 1
        values["attempt_count"] = number
        wait = None if outcome.permanent else backoff_seconds(number)
        if outcome.ok:
            values |= {"status": "delivered", "delivered_at": func.now()}
        elif wait is None:
            values["status"] = "failed"
        else:
            values |= {
                "status": "pending",
                "next_attempt_at": func.now() + func.make_interval(0, 0, 0, 0, 0, 0, wait),
            }
    await session.execute(
        update(MailchimpSync)
        .where(
            MailchimpSync.id == claimed.id,
            MailchimpSync.status == "sending",
            MailchimpSync.lease_owner == owner,
        )
        .values(**values)
    )
