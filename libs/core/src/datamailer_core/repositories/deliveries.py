"""Transactional deliveries under at-least-once queues (spec/queues.md, "Idempotency").

A worker claims a row with one short UPDATE that moves it to `sending` with a lease
(owner, expiry) and counts the attempt; the SES call happens outside any transaction;
the outcome is recorded with one more statement that also appends the timeline event.
Each function here runs in the caller's transaction; the worker (the boundary) commits.
Every write after the claim is conditioned on the lease owner, so a worker whose lease
was taken over cannot overwrite the new owner's result.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, Protocol

from sqlalchemy import ColumnElement, and_, case, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.contracts import TransactionalEmailV1
from datamailer_core.models import Client, Contact, EmailEvent, TransactionalMessage
from datamailer_core.models.transactional import MESSAGE_STATUSES, UNFINISHED_MESSAGE_STATUSES
from datamailer_core.repositories import webhooks
from datamailer_core.settings import ExpiredLeasePolicy

TERMINAL_STATUSES: Final = tuple(s for s in MESSAGE_STATUSES if s not in UNFINISHED_MESSAGE_STATUSES)
PAYLOAD_MISMATCH: Final = "queue_payload_mismatch"
OUTCOME_UNKNOWN: Final = "send_outcome_unknown"
MAX_ERROR_LENGTH: Final = 1000

ClaimOutcome = Literal[
    # The row is ours: send it.
    "claimed",
    # Acknowledge, nothing to do: no such row, or already in a terminal state.
    "missing",
    "terminal",
    # Acknowledge: the claim itself finished the row (`skipped` or `failed` + event).
    "suppressed",
    "mismatch",
    "outcome_unknown",
    # Another worker holds a live lease: try again after `retry_after` seconds.
    "in_progress",
]

_tm = TransactionalMessage


@dataclass(frozen=True)
class TransactionalDelivery:
    """What a worker needs to send one claimed message, read in the claim statement."""

    id: int
    client_id: int
    client_slug: str
    contact_id: int | None
    audience_id: int | None
    email: str
    sender_id: str
    from_address: str
    # The client's configured `Name <address>` for `sender_id`, when still configured.
    sender_email: str | None
    reply_to: str | None
    cc: list[str]
    bcc: list[str]
    headers: dict[str, str]
    subject: str
    html_body: str | None
    text_body: str | None
    attempt_count: int
    lease_owner: str
    lease_expires_at: datetime


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    delivery: TransactionalDelivery | None = None
    row_status: str | None = None
    reason: str | None = None
    retry_after: float = 0.0


@dataclass(frozen=True)
class Requeue:
    """Enough to publish `TransactionalEmailV1` again for a row."""

    id: int
    client_id: int
    idempotency_key: str
    contact_id: int | None
    template_id: int | None
    template_key: str

    def as_contract(self) -> TransactionalEmailV1:
        return queue_message(self)


class Queueable(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def client_id(self) -> int: ...
    @property
    def idempotency_key(self) -> str: ...
    @property
    def contact_id(self) -> int | None: ...
    @property
    def template_id(self) -> int | None: ...
    @property
    def template_key(self) -> str: ...


def queue_message(row: Queueable) -> TransactionalEmailV1:
    """The `transactional-email` message for a row: stable ids and routing hints only."""
    return TransactionalEmailV1(
        transactional_message_id=row.id,
        client_id=row.client_id,
        idempotency_key=row.idempotency_key,
        contact_id=row.contact_id,
        template_id=row.template_id,
        template_key=row.template_key or None,
    )


def _seconds(value: float) -> ColumnElement[Any]:
    return func.make_interval(0, 0, 0, 0, 0, 0, value)


def _expired_lease() -> ColumnElement[bool]:
    return and_(_tm.status == "sending", _tm.lease_expires_at < func.now())


def _suppression_reason() -> Any:
    """Why the contact may no longer receive this message (re-checked at claim time):
    a hard bounce or complaint always; a global unsubscribe when the message carries a
    category (spec/api.md, "Transactional send")."""
    reason = case(
        (Contact.hard_bounced_at.is_not(None), "hard_bounce"),
        (Contact.complained_at.is_not(None), "complaint"),
        (
            and_(_tm.category_tag.is_not(None), Contact.global_unsubscribed_at.is_not(None)),
            "global_unsubscribe",
        ),
        else_=None,
    )
    return select(reason).where(Contact.id == _tm.contact_id).scalar_subquery()


def _sender_email(senders: Any, sender_id: str) -> str | None:
    for sender in senders or []:
        if (
            isinstance(sender, dict)
            and sender.get("id") == sender_id
            and isinstance(sender.get("email"), str)
        ):
            return str(sender["email"])
    return None


async def claim_transactional(
    session: AsyncSession,
    message_id: int,
    *,
    client_id: int,
    idempotency_key: str,
    owner: str,
    lease_seconds: float,
    expired_policy: ExpiredLeasePolicy,
) -> Claim:
    """Claim the row for sending, or say why not. The common case is one statement."""
    claimable: ColumnElement[bool] = _tm.status == "queued"
    if expired_policy == "resend":
        claimable = or_(claimable, _expired_lease())
    claim = (
        update(_tm)
        .where(
            _tm.id == message_id,
            _tm.client_id == client_id,
            _tm.idempotency_key == idempotency_key,
            claimable,
        )
        .values(
            status="sending",
            lease_owner=owner,
            lease_expires_at=func.now() + _seconds(lease_seconds),
            attempt_count=_tm.attempt_count + 1,
        )
        .returning(
            _tm.id,
            _tm.client_id,
            _tm.contact_id,
            _tm.audience_id,
            _tm.email,
            _tm.sender_id,
            _tm.from_address,
            _tm.reply_to,
            _tm.cc,
            _tm.bcc,
            _tm.headers,
            _tm.subject,
            _tm.html_body,
            _tm.text_body,
            _tm.attempt_count,
            _tm.lease_owner,
            _tm.lease_expires_at,
            select(Client.slug).where(Client.id == _tm.client_id).scalar_subquery().label("client_slug"),
            select(Client.sender_emails).where(Client.id == _tm.client_id).scalar_subquery().label("senders"),
            _suppression_reason().label("suppression"),
        )
    )
    row = (await session.execute(claim)).one_or_none()
    if row is not None:
        if row.suppression is not None:
            await _finish(
                session,
                [_tm.id == message_id, _tm.lease_owner == owner],
                status="skipped",
                event_type="skipped",
                reason=row.suppression,
            )
            return Claim("suppressed", row_status="skipped", reason=row.suppression)
        delivery = TransactionalDelivery(
            id=row.id,
            client_id=row.client_id,
            client_slug=row.client_slug or str(row.client_id),
            contact_id=row.contact_id,
            audience_id=row.audience_id,
            email=row.email,
            sender_id=row.sender_id,
            from_address=row.from_address,
            sender_email=_sender_email(row.senders, row.sender_id),
            reply_to=row.reply_to,
            cc=list(row.cc or []),
            bcc=list(row.bcc or []),
            headers=dict(row.headers or {}),
            subject=row.subject,
            html_body=row.html_body,
            text_body=row.text_body,
            attempt_count=row.attempt_count,
            lease_owner=row.lease_owner,
            lease_expires_at=row.lease_expires_at,
        )
        return Claim("claimed", delivery=delivery, row_status="sending")
    return await _explain_unclaimed(
        session,
        message_id,
        client_id=client_id,
        idempotency_key=idempotency_key,
        expired_policy=expired_policy,
    )


async def _explain_unclaimed(
    session: AsyncSession,
    message_id: int,
    *,
    client_id: int,
    idempotency_key: str,
    expired_policy: ExpiredLeasePolicy,
) -> Claim:
    found = (
        await session.execute(
            select(
                _tm.status,
                _tm.client_id,
                _tm.idempotency_key,
                func.extract("epoch", _tm.lease_expires_at - func.now()).label("lease_left"),
            ).where(_tm.id == message_id)
        )
    ).one_or_none()
    if found is None:
        return Claim("missing")
    if found.status in TERMINAL_STATUSES:
        return Claim("terminal", row_status=found.status)
    lease_left = float(found.lease_left) if found.lease_left is not None else 0.0
    open_row = or_(_tm.status == "queued", _expired_lease())
    if found.client_id != client_id or found.idempotency_key != idempotency_key:
        # Only a row nobody is working on is failed; a live lease means the legitimate
        # message is being sent right now.
        if await _finish(
            session,
            [_tm.id == message_id, open_row],
            status="failed",
            event_type="failed",
            reason=PAYLOAD_MISMATCH,
        ):
            return Claim("mismatch", row_status="failed", reason=PAYLOAD_MISMATCH)
        return Claim("in_progress", row_status=found.status, retry_after=max(lease_left, 1.0))
    if found.status == "sending" and lease_left <= 0 and expired_policy == "fail":
        if await _finish(
            session,
            [_tm.id == message_id, _expired_lease()],
            status="failed",
            event_type="failed",
            reason=OUTCOME_UNKNOWN,
        ):
            return Claim("outcome_unknown", row_status="failed", reason=OUTCOME_UNKNOWN)
    # A live lease elsewhere (or a row that changed under us): look again later.
    return Claim("in_progress", row_status=found.status, retry_after=max(lease_left, 1.0))


async def _finish(
    session: AsyncSession,
    where: Sequence[ColumnElement[bool]],
    *,
    status: str,
    event_type: str,
    reason: str | None = None,
    values: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> list[int]:
    """Move matching rows to a final status, clear the lease and append one event per
    row, in one statement; returns the ids that changed."""
    done = (
        update(_tm)
        .where(*where)
        .values(
            status=status,
            status_reason=reason,
            lease_owner=None,
            lease_expires_at=None,
            **(values or {}),
        )
        .returning(_tm.id, _tm.contact_id, _tm.client_id, _tm.audience_id, _tm.ses_message_id)
        .cte("done")
    )
    metadata = {**({"reason": reason} if reason else {}), **(details or {})}
    event = (
        insert(EmailEvent)
        .from_select(
            [
                EmailEvent.event_type,
                EmailEvent.transactional_message_id,
                EmailEvent.contact_id,
                EmailEvent.client_id,
                EmailEvent.audience_id,
                EmailEvent.ses_message_id,
                EmailEvent.metadata_,
            ],
            select(
                literal(event_type),
                done.c.id,
                done.c.contact_id,
                done.c.client_id,
                done.c.audience_id,
                done.c.ses_message_id,
                literal(metadata, JSONB),
            ),
        )
        .add_cte(done)
        .returning(EmailEvent.transactional_message_id)
    )
    ids = [int(i) for i in (await session.scalars(event)).all() if i is not None]
    await webhooks.record_transactional_events(session, ids, status, metadata)
    return ids


async def record_sent(session: AsyncSession, message_id: int, owner: str, ses_message_id: str) -> bool:
    """`sent` + `ses_message_id` + `sent_at` and a `sent` event; False when the lease is
    no longer ours (the result then stays unrecorded, and the caller logs it)."""
    changed = await _finish(
        session,
        [_tm.id == message_id, _tm.status == "sending", _tm.lease_owner == owner],
        status="sent",
        event_type="sent",
        values={"ses_message_id": ses_message_id, "sent_at": func.now(), "last_error": None},
    )
    return bool(changed)


async def record_failed(
    session: AsyncSession, message_id: int, owner: str, reason: str, error: str | None = None
) -> bool:
    """`failed` with the reason and a `failed` event (a permanent error)."""
    changed = await _finish(
        session,
        [_tm.id == message_id, _tm.status == "sending", _tm.lease_owner == owner],
        status="failed",
        event_type="failed",
        reason=reason,
        values={"last_error": (error or reason)[:MAX_ERROR_LENGTH]},
        details={"error": error[:MAX_ERROR_LENGTH]} if error else None,
    )
    return bool(changed)


async def release(session: AsyncSession, message_id: int, owner: str, error: str) -> bool:
    """Back to `queued` after a transient error, so the queue's redelivery sends it."""
    result = await session.execute(
        update(_tm)
        .where(_tm.id == message_id, _tm.status == "sending", _tm.lease_owner == owner)
        .values(status="queued", lease_owner=None, lease_expires_at=None, last_error=error[:MAX_ERROR_LENGTH])
        .returning(_tm.id)
    )
    return result.one_or_none() is not None


_REQUEUE_COLUMNS = (
    _tm.id,
    _tm.client_id,
    _tm.idempotency_key,
    _tm.contact_id,
    _tm.template_id,
    _tm.template_key,
)


def _requeues(rows: Sequence[Any]) -> list[Requeue]:
    return [
        Requeue(
            id=r.id,
            client_id=r.client_id,
            idempotency_key=r.idempotency_key,
            contact_id=r.contact_id,
            template_id=r.template_id,
            template_key=r.template_key,
        )
        for r in rows
    ]


async def claim_stale_queued(session: AsyncSession, *, older_than: float, limit: int) -> list[Requeue]:
    """`queued` rows untouched for `older_than` seconds (their queue message was lost, or
    is late): touched now so the next sweep leaves them alone, returned for publishing."""
    stale = (
        select(_tm.id)
        .where(_tm.status == "queued", _tm.updated_at < func.now() - _seconds(older_than))
        .order_by(_tm.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = await session.execute(
        update(_tm)
        .where(_tm.id.in_(stale.scalar_subquery()))
        .values(enqueued_at=func.now())
        .returning(*_REQUEUE_COLUMNS)
    )
    return _requeues(rows.all())


async def expire_stale_leases(
    session: AsyncSession, *, policy: ExpiredLeasePolicy, limit: int
) -> tuple[list[Requeue], list[int]]:
    """Rows left `sending` with an expired lease (the worker died inside the SES window).
    `resend`: back to `queued`, returned for publishing. `fail`: `failed` with
    `send_outcome_unknown` and a `failed` event. Returns (to publish, failed ids)."""
    expired = (
        select(_tm.id)
        .where(_expired_lease())
        .order_by(_tm.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    if policy == "fail":
        failed = await _finish(
            session, [_tm.id.in_(expired)], status="failed", event_type="failed", reason=OUTCOME_UNKNOWN
        )
        return [], failed
    rows = await session.execute(
        update(_tm)
        .where(_tm.id.in_(expired))
        .values(
            status="queued",
            lease_owner=None,
            lease_expires_at=None,
            last_error="lease expired while sending",
            enqueued_at=func.now(),
        )
        .returning(*_REQUEUE_COLUMNS)
    )
    return _requeues(rows.all()), []
