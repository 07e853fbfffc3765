"""Sending a campaign's recipients (spec/queues.md, "Idempotency"): claim a batch with a
lease, record the outcomes, expire leases left by dead workers. Each function is a
fixed number of statements whatever the batch size, in the caller's transaction.

The claim is one UPDATE that takes only `pending` rows of a campaign that is still
`sending` (a pause or cancel committed before it stops it), and re-checks each contact
with the snapshot's own eligibility rule: a contact that bounced, complained or
unsubscribed after the snapshot is `skipped` there and then. Rows another worker holds
or that are already terminal are left alone (their batch is acknowledged).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.campaigns.snapshot import skip_reason_sql
from datamailer_core.models import Campaign, CampaignRecipient, Client
from datamailer_core.repositories.events import NewEvent, append_events
from datamailer_core.settings import ExpiredLeasePolicy

OUTCOME_UNKNOWN: Final = "send_outcome_unknown"
# A recipient whose contact was erased, or whose client subscription is gone.
NO_CONTACT_REASON: Final = "suppressed"

_r = CampaignRecipient
_c = Campaign


@dataclass(frozen=True)
class SendingCampaign:
    """What the handler needs of a campaign to build its messages."""

    campaign: Campaign
    client: Client


async def load_sending_campaign(session: AsyncSession, campaign_id: int) -> SendingCampaign | None:
    row = (
        await session.execute(
            select(_c, Client).join(Client, Client.id == _c.client_id).where(_c.id == campaign_id)
        )
    ).one_or_none()
    return None if row is None else SendingCampaign(row[0], row[1])


@dataclass(frozen=True)
class ClaimedRecipient:
    id: int
    contact_id: int
    email: str
    tracking_token: str
    unsubscribe_token: str


@dataclass(frozen=True)
class TokenPair:
    """The raw tokens go into the message; only their hashes are stored."""

    tracking: str
    tracking_hash: str
    unsubscribe: str
    unsubscribe_hash: str


def _claim_statement(category: bool) -> Any:
    reason = skip_reason_sql(category=category)
    return text(
        f"""
        WITH batch AS (
            SELECT r.id, r.contact_id, t.tracking_hash, t.unsubscribe_hash
            FROM unnest(CAST(:ids AS bigint[]), CAST(:tracking AS text[]), CAST(:unsubscribe AS text[]))
                 AS t(id, tracking_hash, unsubscribe_hash)
            JOIN campaign_recipients r ON r.id = t.id
            -- `= ANY` lets the primary key drive the lookup whatever the statistics say
            -- about a campaign's fresh rows (else: a scan of every pending row).
            WHERE r.id = ANY(CAST(:ids AS bigint[]))
              AND r.campaign_id = :campaign_id AND r.status = 'pending'
              AND EXISTS (SELECT 1 FROM campaigns WHERE id = :campaign_id AND status = 'sending')
            FOR UPDATE OF r SKIP LOCKED
        ), checked AS (
            SELECT b.*,
                   CASE WHEN c.id IS NULL OR s.id IS NULL THEN '{NO_CONTACT_REASON}' ELSE {reason} END
                       AS reason
            FROM batch b
            LEFT JOIN contacts c ON c.id = b.contact_id
            LEFT JOIN subscriptions s
                   ON s.contact_id = b.contact_id AND s.audience_id = :audience_id AND s.client_id = :client_id
            LEFT JOIN subscriptions a
                   ON a.contact_id = b.contact_id AND a.audience_id = :audience_id AND a.client_id IS NULL
        )
        UPDATE campaign_recipients r SET
            status = CASE WHEN k.reason IS NULL THEN 'sending' ELSE 'skipped' END,
            skip_reason = k.reason,
            lease_owner = CASE WHEN k.reason IS NULL THEN CAST(:owner AS text) END,
            lease_expires_at = CASE WHEN k.reason IS NULL THEN now() + make_interval(secs => :lease) END,
            attempt_count = r.attempt_count + 1,
            tracking_token_hash = CASE WHEN k.reason IS NULL THEN k.tracking_hash END,
            unsubscribe_token_hash = CASE WHEN k.reason IS NULL THEN k.unsubscribe_hash END,
            updated_at = now()
        FROM checked k
        WHERE r.id = k.id
        RETURNING r.id, r.contact_id, r.email, k.reason
        """
    )


_CLAIM: Final = {category: _claim_statement(category) for category in (False, True)}


@dataclass(frozen=True)
class BatchClaim:
    claimed: list[ClaimedRecipient]
    skipped: dict[int, str]


async def claim_recipients(
    session: AsyncSession,
    campaign: Campaign,
    ids: Sequence[int],
    tokens: Sequence[TokenPair],
    *,
    owner: str,
    lease_seconds: float,
) -> BatchClaim:
    """Claim the `pending` ones among `ids` (`tokens[i]` for `ids[i]`): eligible ones
    become `sending` under `owner`'s lease with the token hashes, the others `skipped`
    with their reason (counted, with a `skipped` event)."""
    rows = await session.execute(
        _CLAIM[campaign.category_tag is not None],
        {
            "ids": list(ids),
            "tracking": [t.tracking_hash for t in tokens],
            "unsubscribe": [t.unsubscribe_hash for t in tokens],
            "campaign_id": campaign.id,
            "audience_id": campaign.audience_id,
            "client_id": campaign.client_id,
            "category_tag": campaign.category_tag,
            "owner": owner,
            "lease": lease_seconds,
        },
    )
    by_id = dict(zip(ids, tokens, strict=True))
    claimed: list[ClaimedRecipient] = []
    skipped: dict[int, str] = {}
    events: list[NewEvent] = []
    for row in rows:
        if row.reason is None:
            pair = by_id[row.id]
            claimed.append(
                ClaimedRecipient(row.id, row.contact_id, row.email, pair.tracking, pair.unsubscribe)
            )
        else:
            skipped[row.id] = row.reason
            events.append(_event(campaign, "skipped", row.id, row.contact_id, reason=row.reason))
    if skipped:
        await append_events(session, events)
        await _add_counts(session, campaign.id, skipped_count=len(skipped))
    return BatchClaim(claimed, skipped)


def _event(
    campaign: Campaign, event_type: str, recipient_id: int, contact_id: int | None, **meta: Any
) -> NewEvent:
    return NewEvent(
        event_type,
        contact_id=contact_id,
        client_id=campaign.client_id,
        audience_id=campaign.audience_id,
        campaign_id=campaign.id,
        campaign_recipient_id=recipient_id,
        metadata={k: v for k, v in meta.items() if v is not None},
    )


async def _add_counts(session: AsyncSession, campaign_id: int, **counts: int) -> None:
    values = {name: getattr(_c, name) + n for name, n in counts.items() if n}
    if values:
        await session.execute(update(_c).where(_c.id == campaign_id).values(**values))


@dataclass(frozen=True)
class Outcomes:
    """What happened to claimed recipients: sent (id → SES message id), failed for good
    (id → (reason, detail)), or to retry (id → error)."""

    sent: dict[int, str]
    failed: dict[int, tuple[str, str | None]]
    retry: dict[int, str]


_SENT = text(
    """
    UPDATE campaign_recipients r SET status = 'sent', ses_message_id = t.message_id, sent_at = now(),
           lease_owner = NULL, lease_expires_at = NULL, last_error = NULL, updated_at = now()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:message_ids AS text[])) AS t(id, message_id)
    WHERE r.id = t.id AND r.status = 'sending' AND r.lease_owner = :owner
    RETURNING r.id, r.contact_id, r.ses_message_id
    """
)
_FAILED = text(
    """
    UPDATE campaign_recipients r SET status = 'failed', skip_reason = t.reason, last_error = t.detail,
           lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:reasons AS text[]), CAST(:details AS text[]))
         AS t(id, reason, detail)
    WHERE r.id = t.id AND r.status = 'sending' AND r.lease_owner = :owner
    RETURNING r.id, r.contact_id, r.skip_reason
    """
)
_RELEASE = text(
    """
    UPDATE campaign_recipients r SET status = 'pending', last_error = t.error,
           lease_owner = NULL, lease_expires_at = NULL, tracking_token_hash = NULL,
           unsubscribe_token_hash = NULL, updated_at = now()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:errors AS text[])) AS t(id, error)
    WHERE r.id = t.id AND r.status = 'sending' AND r.lease_owner = :owner
    """
)


async def record_outcomes(session: AsyncSession, campaign: Campaign, owner: str, outcomes: Outcomes) -> int:
    """Record a claimed batch's outcomes under `owner`'s lease (rows whose lease was
    taken over are left alone): `sent`/`failed` with their events and counters, retries
    back to `pending`. Returns how many `sent` were recorded."""
    events: list[NewEvent] = []
    sent = failed = 0
    if outcomes.sent:
        rows = await session.execute(
            _SENT, {"ids": list(outcomes.sent), "message_ids": list(outcomes.sent.values()), "owner": owner}
        )
        for row in rows:
            sent += 1
            events.append(_event(campaign, "sent", row.id, row.contact_id, ses_message_id=row.ses_message_id))
    if outcomes.failed:
        rows = await session.execute(
            _FAILED,
            {
                "ids": list(outcomes.failed),
                "reasons": [reason for reason, _ in outcomes.failed.values()],
                "details": [detail for _, detail in outcomes.failed.values()],
                "owner": owner,
            },
        )
        for row in rows:
            failed += 1
            events.append(_event(campaign, "failed", row.id, row.contact_id, reason=row.skip_reason))
    if outcomes.retry:
        await session.execute(
            _RELEASE, {"ids": list(outcomes.retry), "errors": list(outcomes.retry.values()), "owner": owner}
        )
    await append_events(session, events)
    await _add_counts(session, campaign.id, sent_count=sent, failed_count=failed)
    return sent


async def expire_stale_leases(session: AsyncSession, *, policy: ExpiredLeasePolicy, limit: int) -> int:
    """Recipients left `sending` past their lease (the worker died inside the SES
    window). `fail` (the default): `failed` with `send_outcome_unknown`, a `failed`
    event and the counter, visible to the operator who may `retry-failed`. `resend`:
    back to `pending`, so the feed enqueues them again. Returns how many."""
    stale = (
        select(_r.id)
        .where(_r.status == "sending", _r.lease_expires_at < func.now())
        .order_by(_r.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    cleared = {"lease_owner": None, "lease_expires_at": None, "updated_at": func.now()}
    if policy == "resend":
        values: dict[str, Any] = {"status": "pending", "last_error": "lease expired while sending"}
    else:
        values = {
            "status": "failed",
            "skip_reason": OUTCOME_UNKNOWN,
            "last_error": "lease expired while sending",
        }
    rows = (
        await session.execute(
            update(_r)
            .where(_r.id.in_(stale))
            .values(**values, **cleared)
            .returning(_r.id, _r.campaign_id, _r.contact_id)
        )
    ).all()
    if policy == "fail" and rows:
        campaigns = {
            c.id: c for c in await session.scalars(select(_c).where(_c.id.in_({r.campaign_id for r in rows})))
        }
        await append_events(
            session,
            [
                _event(campaigns[r.campaign_id], "failed", r.id, r.contact_id, reason=OUTCOME_UNKNOWN)
                for r in rows
            ],
        )
        for campaign_id in campaigns:
            await _add_counts(
                session, campaign_id, failed_count=sum(1 for r in rows if r.campaign_id == campaign_id)
            )
    return len(rows)
