"""Opens and clicks of campaign messages (the `email-events` queue), applied once each.

One transaction per event: the recipient row is locked (so two events of one recipient
cannot both be its first), the event is appended with its deduplication key, and only
when that insert took place are the recipient's and the campaign's counters moved, by
increments in the same transaction. A redelivered queue message finds its key taken and
changes nothing; a second open of the same recipient adds to the totals only.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Table, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.models import Campaign, CampaignRecipient, EmailEvent

# First-party events share `provider_event_id` (unique when present) with SES
# notifications, whose keys are SNS MessageIds (UUIDs); the prefix keeps them apart.
DEDUPE_PREFIX: Final = "email-events:"

_EVENTS: Table = EmailEvent.__table__  # type: ignore[assignment]
_c = Campaign
_r = CampaignRecipient


@dataclass(frozen=True)
class TrackedRecipient:
    id: int
    campaign_id: int
    contact_id: int | None
    client_id: int
    audience_id: int
    sent_at: datetime | None
    first_opened_at: datetime | None
    first_human_opened_at: datetime | None
    first_clicked_at: datetime | None


async def lock_recipient(session: AsyncSession, tracking_token_hash: str) -> TrackedRecipient | None:
    """The recipient whose message carries the token, locked until the transaction ends."""
    row = (
        await session.execute(
            select(
                _r.id,
                _r.campaign_id,
                _r.contact_id,
                _c.client_id,
                _c.audience_id,
                _r.sent_at,
                _r.first_opened_at,
                _r.first_human_opened_at,
                _r.first_clicked_at,
            )
            .join(_c, _c.id == _r.campaign_id)
            .where(_r.tracking_token_hash == tracking_token_hash)
            .with_for_update(of=_r)
        )
    ).one_or_none()
    return None if row is None else TrackedRecipient(**row._mapping)


async def _append_once(
    session: AsyncSession,
    recipient: TrackedRecipient,
    event_type: str,
    dedupe_key: str,
    occurred_at: datetime,
    url: str | None,
    metadata: dict[str, Any],
) -> bool:
    statement = (
        insert(_EVENTS)
        .values(
            event_type=event_type,
            campaign_id=recipient.campaign_id,
            campaign_recipient_id=recipient.id,
            contact_id=recipient.contact_id,
            client_id=recipient.client_id,
            audience_id=recipient.audience_id,
            url=url,
            metadata=metadata,
            provider_event_id=DEDUPE_PREFIX + dedupe_key,
            occurred_at=occurred_at,
        )
        .on_conflict_do_nothing(
            index_elements=[_EVENTS.c.provider_event_id],
            index_where=text("provider_event_id IS NOT NULL"),
        )
        .returning(_EVENTS.c.id)
    )
    return (await session.execute(statement)).first() is not None


async def record_open(
    session: AsyncSession,
    recipient: TrackedRecipient,
    *,
    dedupe_key: str,
    occurred_at: datetime,
    machine: bool,
    metadata: dict[str, Any],
) -> bool:
    """Append the `open` and count it; False when `dedupe_key` was already recorded.
    A machine open counts in `open_count` and `unique_open_count`, never in the human
    figures."""
    event_metadata = {**metadata, "machine": machine}
    if not await _append_once(session, recipient, "open", dedupe_key, occurred_at, None, event_metadata):
        return False
    first = recipient.first_opened_at is None
    first_human = not machine and recipient.first_human_opened_at is None
    values: dict[str, Any] = {"open_count": _r.open_count + 1}
    if first:
        values["first_opened_at"] = occurred_at
    if first_human:
        values["first_human_opened_at"] = occurred_at
    await session.execute(update(_r).where(_r.id == recipient.id).values(**values))
    await session.execute(
        update(_c)
        .where(_c.id == recipient.campaign_id)
        .values(
            open_count=_c.open_count + 1,
            unique_open_count=_c.unique_open_count + int(first),
            unique_human_open_count=_c.unique_human_open_count + int(first_human),
        )
    )
    return True


async def record_click(
    session: AsyncSession,
    recipient: TrackedRecipient,
    *,
    dedupe_key: str,
    occurred_at: datetime,
    url: str,
    metadata: dict[str, Any],
) -> bool:
    """Append the `click` and count it; False when `dedupe_key` was already recorded."""
    if not await _append_once(session, recipient, "click", dedupe_key, occurred_at, url, metadata):
        return False
    first = recipient.first_clicked_at is None
    values: dict[str, Any] = {"click_count": _r.click_count + 1}
    if first:
        values["first_clicked_at"] = occurred_at
    await session.execute(update(_r).where(_r.id == recipient.id).values(**values))
    await session.execute(
        update(_c)
        .where(_c.id == recipient.campaign_id)
        .values(click_count=_c.click_count + 1, unique_click_count=_c.unique_click_count + int(first))
    )
    return True
