"""SES notifications applied once (spec/queues.md, "SES notifications" and
"Idempotency").

Everything runs in the caller's single transaction, event row first: the `email_events`
row is inserted with `ON CONFLICT (provider_event_id) DO NOTHING`, and only the
transaction that inserted it applies the effects. A concurrent duplicate waits on the
unique index until the first commits and then inserts nothing, so two workers handling
one notification at once make one change. Each effect is also a guarded UPDATE
(`... WHERE delivered_at IS NULL`, ...) whose returned row decides the counter and the
outbound webhook, so two different notifications about one message (an SNS redelivery
with a new MessageId, a delivery then a bounce) cannot count twice either.

Correlation is by `ses_message_id` (the id SendEmail returned): a campaign recipient,
else a transactional message. An uncorrelated notification is kept as an event row with
no recipient or message and changes nothing else (no suppression either: nothing says
the address was ever ours).

Effects, for the correlated row:
- bounce `Permanent` (any subtype, `OnAccountSuppressionList` included): every address in
  `bouncedRecipients` becomes a mailbox fact (`record_mailbox_fact`, all organizations)
  and gets `contact.hard_bounced`; the row, when its address is among them, gets
  `bounced_at` (status `sent` → `bounced`) and its campaign `bounce_count` +1. Other
  bounce types (`Transient`, `Undetermined`) are recorded only.
- complaint: the same with `complainedRecipients`, `complained_at` / `complained`,
  `complaint_count`, `contact.complained` (the feedback type in the event and webhook).
- delivery: `delivered_at` once, `delivered_count` +1, `message.delivered`.
- reject / rendering failure: a `sent` row becomes `failed` (`ses_reject`,
  `ses_rendering_failure`), `failed_count` +1.
- send, open, click, delivery delay, subscription: recorded only. SES's own open and
  click tracking is recorded as `ses_open` / `ses_click`: the counters come from
  first-party tracking, which these would double.
After a hard bounce or complaint on a campaign, its rate guard may pause it
(`campaigns.pause_if_rates_exceeded`, webhook `campaign.paused`).
"""

from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from typing import Any, Final, Literal

from sqlalchemy import Table, case, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.contracts import SesWebhookV1
from datamailer_core.models import Campaign, CampaignRecipient, EmailEvent, TransactionalMessage
from datamailer_core.repositories import campaigns, mailchimp, webhooks
from datamailer_core.repositories.contacts import normalize_email, record_mailbox_fact
from datamailer_core.ses_notifications import occurred_at

Outcome = Literal["applied", "duplicate", "uncorrelated"]

EVENT_TYPES: Final = {
    "send": "ses_send",
    "reject": "reject",
    "delivery": "delivered",
    "bounce": "bounce",
    "complaint": "complaint",
    "open": "ses_open",
    "click": "ses_click",
    "delivery_delay": "delivery_delay",
    "rendering_failure": "rendering_failure",
    "subscription": "ses_subscription",
}
FAILURE_REASONS: Final = {"reject": "ses_reject", "rendering_failure": "ses_rendering_failure"}
HARD_BOUNCE_TYPE: Final = "Permanent"

_EVENTS: Table = EmailEvent.__table__  # type: ignore[assignment]
_c = Campaign
_r = CampaignRecipient
_t = TransactionalMessage


@dataclass(frozen=True)
class RateGuard:
    max_bounce_rate: float
    max_complaint_rate: float
    min_sample: int


@dataclass(frozen=True)
class Target:
    """The row a notification reports on: a campaign recipient or a transactional message."""

    client_id: int
    contact_id: int | None
    email: str
    campaign_recipient_id: int | None = None
    campaign_id: int | None = None
    campaign_key: str | None = None
    audience_id: int | None = None
    transactional_message_id: int | None = None

    def reference(self) -> dict[str, Any]:
        """What the outbound webhooks name the message by."""
        if self.campaign_id is not None:
            return {"campaign_id": self.campaign_id, "campaign_key": self.campaign_key}
        return {"transactional_message_id": self.transactional_message_id}


async def correlate(session: AsyncSession, ses_message_id: str | None) -> Target | None:
    if ses_message_id is None:
        return None
    row = (
        await session.execute(
            select(
                _r.id, _r.campaign_id, _r.contact_id, _r.email, _c.client_id, _c.audience_id, _c.external_key
            )
            .join(_c, _c.id == _r.campaign_id)
            .where(_r.ses_message_id == ses_message_id)
            .order_by(_r.id)
            .limit(1)
        )
    ).one_or_none()
    if row is not None:
        return Target(
            client_id=row.client_id,
            contact_id=row.contact_id,
            email=row.email,
            campaign_recipient_id=row.id,
            campaign_id=row.campaign_id,
            campaign_key=row.external_key,
            audience_id=row.audience_id,
        )
    message = (
        await session.execute(
            select(_t.id, _t.client_id, _t.contact_id, _t.email)
            .where(_t.ses_message_id == ses_message_id)
            .order_by(_t.id)
            .limit(1)
        )
    ).one_or_none()
    if message is None:
        return None
    return Target(
        client_id=message.client_id,
        contact_id=message.contact_id,
        email=message.email,
        transactional_message_id=message.id,
    )


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _addresses(part: dict[str, Any], key: str) -> list[str]:
    """Normalized, de-duplicated addresses of `bouncedRecipients` / `complainedRecipients`."""
    found: list[str] = []
    for item in part.get(key) or []:
        address = _text(_object(item).get("emailAddress"))
        if address is None:
            continue
        normalized = normalize_email(parseaddr(address)[1] or address)
        if "@" in normalized and normalized not in found:
            found.append(normalized)
    return found


def summary(msg: SesWebhookV1) -> dict[str, Any]:
    """The facts of the notification worth querying, next to the SES message itself."""
    ses = _object(msg.metadata.get("ses"))
    facts: dict[str, Any] = {}
    if msg.notification_type == "bounce":
        bounce = _object(ses.get("bounce"))
        facts = {
            "bounce_type": _text(bounce.get("bounceType")),
            "bounce_subtype": _text(bounce.get("bounceSubType")),
            "hard": bounce.get("bounceType") == HARD_BOUNCE_TYPE,
            "recipients": _addresses(bounce, "bouncedRecipients"),
        }
    elif msg.notification_type == "complaint":
        complaint = _object(ses.get("complaint"))
        facts = {
            "feedback_type": _text(complaint.get("complaintFeedbackType")),
            "complaint_subtype": _text(complaint.get("complaintSubType")),
            "recipients": _addresses(complaint, "complainedRecipients"),
        }
    return {**{k: v for k, v in facts.items() if v is not None}, **msg.metadata}


async def _insert_event(
    session: AsyncSession, msg: SesWebhookV1, target: Target | None, when: datetime
) -> bool:
    values: dict[str, Any] = {
        "event_type": EVENT_TYPES[msg.notification_type],
        "provider": msg.provider,
        "provider_event_id": msg.provider_event_id,
        "ses_message_id": msg.ses_message_id,
        "metadata": summary(msg),
        "occurred_at": when,
    }
    if target is not None:
        values.update(
            contact_id=target.contact_id,
            client_id=target.client_id,
            audience_id=target.audience_id,
            campaign_id=target.campaign_id,
            campaign_recipient_id=target.campaign_recipient_id,
            transactional_message_id=target.transactional_message_id,
        )
    inserted = await session.execute(
        insert(_EVENTS)
        .values(values)
        .on_conflict_do_nothing(
            index_elements=["provider_event_id"], index_where=_EVENTS.c.provider_event_id.is_not(None)
        )
        .returning(_EVENTS.c.id)
    )
    return inserted.first() is not None


async def apply_notification(session: AsyncSession, msg: SesWebhookV1, guard: RateGuard) -> Outcome:
    """Record the notification and apply its effects, once per `provider_event_id`."""
    when = occurred_at(_object(msg.metadata.get("ses")), msg.notification_type) or msg.received_at
    target = await correlate(session, msg.ses_message_id)
    if not await _insert_event(session, msg, target, when):
        return "duplicate"
    if target is None:
        return "uncorrelated"
    facts = summary(msg)
    kind = msg.notification_type
    if kind == "bounce" and facts.get("hard"):
        await _mailbox_fact(session, target, facts, when, "hard_bounce", guard)
    elif kind == "complaint":
        await _mailbox_fact(session, target, facts, when, "complaint", guard)
    elif kind == "delivery":
        if await _mark(
            session, target, {"delivered_at": when}, once="delivered_at", counter="delivered_count"
        ):
            await webhooks.record_event(
                session,
                client_id=target.client_id,
                event_type="message.delivered",
                data={**_base(target, msg, when), "email": target.email},
            )
    elif kind in FAILURE_REASONS:
        await _fail(session, target, FAILURE_REASONS[kind])
    return "applied"


def _base(target: Target, msg: SesWebhookV1, when: datetime) -> dict[str, Any]:
    return {
        **target.reference(),
        "contact_id": target.contact_id,
        "ses_message_id": msg.ses_message_id,
        "occurred_at": when,
    }


async def _mailbox_fact(
    session: AsyncSession,
    target: Target,
    facts: dict[str, Any],
    when: datetime,
    reason: Literal["hard_bounce", "complaint"],
    guard: RateGuard,
) -> None:
    hard = reason == "hard_bounce"
    column, status, counter = (
        ("bounced_at", "bounced", "bounce_count")
        if hard
        else ("complained_at", "complained", "complaint_count")
    )
    addresses: list[str] = facts.get("recipients", [])
    for address in addresses:
        await mailchimp.record_suppressed(session, await record_mailbox_fact(session, address, reason))
    if normalize_email(target.email) in addresses:
        await _mark(session, target, {column: when}, once=column, counter=counter, status=status)
    details = (
        {"bounce_type": facts.get("bounce_type"), "bounce_subtype": facts.get("bounce_subtype")}
        if hard
        else {"feedback_type": facts.get("feedback_type")}
    )
    ref = {**target.reference(), "occurred_at": when, **details}
    for address in addresses:
        contact_id = target.contact_id if address == normalize_email(target.email) else None
        await webhooks.record_event(
            session,
            client_id=target.client_id,
            event_type="contact.hard_bounced" if hard else "contact.complained",
            data={**ref, "email": address, "contact_id": contact_id},
        )
    if target.campaign_id is not None:
        paused = await campaigns.pause_if_rates_exceeded(
            session,
            target.campaign_id,
            max_bounce_rate=guard.max_bounce_rate,
            max_complaint_rate=guard.max_complaint_rate,
            min_sample=guard.min_sample,
        )
        if paused is not None:
            await _campaign_paused(session, target, paused)


async def _campaign_paused(session: AsyncSession, target: Target, reason: str) -> None:
    assert target.campaign_id is not None
    counts = (
        await session.execute(
            select(_c.sent_count, _c.bounce_count, _c.complaint_count).where(_c.id == target.campaign_id)
        )
    ).one()
    await webhooks.record_event(
        session,
        client_id=target.client_id,
        event_type="campaign.paused",
        data={**target.reference(), "reason": reason, **counts._mapping},
    )


async def _mark(
    session: AsyncSession,
    target: Target,
    values: dict[str, Any],
    *,
    once: str,
    counter: str,
    status: str | None = None,
) -> bool:
    """Set `values` on the row unless `once` is already set (or, with `status`, the row is
    already in it); a `sent` row moves to `status`. True when the row changed, and then
    the campaign's `counter` moved by one."""
    table = _r if target.campaign_recipient_id is not None else _t
    row_id = target.campaign_recipient_id or target.transactional_message_id
    guard = [table.id == row_id, getattr(table, once).is_(None)]
    if status is not None:
        guard.append(table.status != status)
        values = {**values, "status": case((table.status == "sent", status), else_=table.status)}
    changed = await session.execute(
        update(table).where(*guard).values(**values, updated_at=func.now()).returning(table.id)
    )
    if changed.first() is None:
        return False
    if target.campaign_id is not None:
        await session.execute(
            update(_c).where(_c.id == target.campaign_id).values({counter: getattr(_c, counter) + 1})
        )
    return True


async def _fail(session: AsyncSession, target: Target, reason: str) -> None:
    if target.campaign_recipient_id is not None:
        changed = await session.execute(
            update(_r)
            .where(_r.id == target.campaign_recipient_id, _r.status == "sent")
            .values(status="failed", skip_reason=reason, last_error=reason, updated_at=func.now())
            .returning(_r.id)
        )
        if changed.first() is not None:
            await session.execute(
                update(_c).where(_c.id == target.campaign_id).values(failed_count=_c.failed_count + 1)
            )
        return
    await session.execute(
        update(_t)
        .where(_t.id == target.transactional_message_id, _t.status == "sent")
        .values(status="failed", status_reason=reason, last_error=reason, updated_at=func.now())
    )
