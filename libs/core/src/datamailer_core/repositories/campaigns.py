"""Campaigns and their recipient rows: definition upserts, status transitions, the
progressive enqueue feed, counters and listings.

Every status change is one guarded UPDATE (`... WHERE status IN (allowed)`), so two
racing requests or processes cannot both move a campaign, and the caller learns from
the returned row whether it did. Each function runs in the caller's transaction; the
boundary (request, job, command) commits.

Lifecycle: `draft` → (queue) `scheduled` → (due) `snapshotting` → (snapshot done)
`sending` → (nothing pending or sending) `sent`. `paused` stops the snapshot and the
feed at once; resume picks up where it stopped and feeds again only recipients still
`pending`. A `sending` campaign also pauses itself when its hard bounces or complaints
pass a rate (`pause_if_rates_exceeded`, `paused_reason`); resume clears the reason.
`cancelled` ends it: pending recipients become `skipped` (`campaign_cancelled`).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, case, exists, func, literal_column, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.contracts import CampaignEmailV1
from datamailer_core.errors import Conflict
from datamailer_core.models import Audience, Campaign, CampaignRecipient

EDITABLE_STATUSES: Final = ("draft",)
PAUSABLE_STATUSES: Final = ("scheduled", "snapshotting", "sending")
CANCELLABLE_STATUSES: Final = ("draft", "scheduled", "snapshotting", "sending", "paused", "failed")
RETRYABLE_STATUSES: Final = ("sending", "paused", "sent", "failed")
# Statuses in which nothing more will ever happen to the campaign on its own.
FINISHED_STATUSES: Final = ("sent", "cancelled", "failed")
# Recipients still to be sent; `sending` ones are inside a worker's SES call.
UNFINISHED_RECIPIENT_STATUSES: Final = ("pending", "sending")
CANCELLED_REASON: Final = "campaign_cancelled"

_c = Campaign
_r = CampaignRecipient


def batch_id(campaign_id: int, sequence: int) -> str:
    """`campaign-55-batch-0001`: unique per campaign, also the message's idempotency key."""
    return f"campaign-{campaign_id}-batch-{sequence:04d}"


# Definition


async def get_campaign(session: AsyncSession, client_id: int, external_key: str) -> Campaign | None:
    return await session.scalar(
        select(_c)
        .where(_c.client_id == client_id, _c.external_key == external_key)
        .execution_options(populate_existing=True)
    )


async def find_campaign(
    session: AsyncSession, client_id: int, external_key: str
) -> tuple[Campaign, str] | None:
    """The client's campaign and its audience's slug."""
    row = (
        await session.execute(
            select(_c, Audience.slug)
            .join(Audience, Audience.id == _c.audience_id)
            .where(_c.client_id == client_id, _c.external_key == external_key)
            .execution_options(populate_existing=True)
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1])


async def get_campaign_by_id(session: AsyncSession, campaign_id: int) -> Campaign | None:
    return await session.scalar(
        select(_c).where(_c.id == campaign_id).execution_options(populate_existing=True)
    )


async def upsert_campaign(
    session: AsyncSession, client_id: int, external_key: str, values: Mapping[str, Any]
) -> tuple[Campaign, bool]:
    """Create the campaign or replace its definition while it is a `draft`; one
    statement, so a concurrent queue cannot slip between the check and the write.
    Raises 409 `not_editable` once the campaign left `draft`."""
    new = insert(_c).values(client_id=client_id, external_key=external_key, **values)
    upsert = new.on_conflict_do_update(
        index_elements=[_c.client_id, _c.external_key],
        set_={**{_column(k): new.excluded[_column(k)] for k in values}, "updated_at": func.now()},
        where=_c.status.in_(EDITABLE_STATUSES),
    )
    created: ColumnElement[bool] = literal_column("xmax = 0").label("created")
    row = (await session.execute(upsert.returning(_c.id, created))).one_or_none()
    if row is None:
        raise Conflict(
            "the campaign can no longer be edited: it was queued",
            code="not_editable",
            fields={"status": "not_draft"},
        )
    campaign = await get_campaign_by_id(session, row.id)
    assert campaign is not None
    return campaign, bool(row.created)


def _column(attribute: str) -> str:
    # The ORM attribute `metadata_` maps the column `metadata`.
    return "metadata" if attribute == "metadata_" else attribute


# Transitions


async def _transition(session: AsyncSession, campaign_id: int, allowed: Sequence[str], **values: Any) -> bool:
    result = await session.execute(
        update(_c).where(_c.id == campaign_id, _c.status.in_(allowed)).values(**values).returning(_c.id)
    )
    return result.first() is not None


async def queue_campaign(session: AsyncSession, campaign_id: int) -> bool:
    """`draft` → `scheduled` when `scheduled_at` is in the future, else `snapshotting`.
    False when it was not a draft (re-queueing is a no-op)."""
    return await _transition(
        session,
        campaign_id,
        ("draft",),
        status=case((_c.scheduled_at > func.now(), "scheduled"), else_="snapshotting"),
        queued_at=func.now(),
    )


async def start_due_campaigns(session: AsyncSession, limit: int = 100) -> list[int]:
    """`scheduled` campaigns whose time has come move to `snapshotting`."""
    due = (
        select(_c.id)
        .where(_c.status == "scheduled", _c.scheduled_at <= func.now())
        .order_by(_c.scheduled_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = await session.execute(
        update(_c).where(_c.id.in_(due.scalar_subquery())).values(status="snapshotting").returning(_c.id)
    )
    return list(result.scalars())


async def pause_campaign(session: AsyncSession, campaign_id: int) -> bool:
    return await _transition(session, campaign_id, PAUSABLE_STATUSES, status="paused")


async def resume_campaign(session: AsyncSession, campaign_id: int) -> bool:
    """Back to where the pause stopped it. The feed starts over from the first recipient
    still `pending`: batches that were in flight at the pause were acknowledged without
    sending, so their recipients are fed again (and only those still pending)."""
    status = case(
        (_c.snapshot_completed_at.is_not(None), "sending"),
        ((_c.snapshot_cursor.is_(None)) & (_c.scheduled_at > func.now()), "scheduled"),
        else_="snapshotting",
    )
    return await _transition(
        session,
        campaign_id,
        ("paused",),
        status=status,
        enqueue_cursor=0,
        enqueue_floor=0,
        last_enqueued_at=None,
        paused_reason=None,
    )


async def pause_if_rates_exceeded(
    session: AsyncSession,
    campaign_id: int,
    *,
    max_bounce_rate: float,
    max_complaint_rate: float,
    min_sample: int,
) -> str | None:
    """`sending` → `paused` with `paused_reason` when, with at least `min_sample` sent,
    hard bounces or complaints exceed their share of sent (bounces first). One guarded
    UPDATE on the counters as they stand in this transaction; the reason when it paused
    the campaign, else None."""
    bounced = _c.bounce_count > _c.sent_count * max_bounce_rate
    complained = _c.complaint_count > _c.sent_count * max_complaint_rate
    result = await session.execute(
        update(_c)
        .where(
            _c.id == campaign_id, _c.status == "sending", _c.sent_count >= min_sample, bounced | complained
        )
        .values(
            status="paused",
            paused_reason=case((bounced, "bounce_rate_exceeded"), else_="complaint_rate_exceeded"),
        )
        .returning(_c.paused_reason)
    )
    reason: str | None = result.scalar_one_or_none()
    return reason


async def cancel_campaign(session: AsyncSession, campaign_id: int) -> bool:
    return await _transition(
        session, campaign_id, CANCELLABLE_STATUSES, status="cancelled", cancelled_at=func.now()
    )


async def pause(session: AsyncSession, campaign: Campaign) -> None:
    """Pause; pausing a paused campaign changes nothing; 409 `not_pausable` for a draft
    or a finished campaign."""
    if not await pause_campaign(session, campaign.id) and campaign.status != "paused":
        raise _conflict("not_pausable", "paused", campaign.status)


async def resume(session: AsyncSession, campaign: Campaign) -> None:
    """Resume a paused campaign; a running one is left as it is; 409 `not_resumable`
    for a draft or a finished campaign."""
    running = campaign.status in PAUSABLE_STATUSES
    if not await resume_campaign(session, campaign.id) and not running:
        raise _conflict("not_resumable", "resumed", campaign.status)


async def cancel(session: AsyncSession, campaign: Campaign, *, skip_now: int) -> None:
    """Cancel and skip up to `skip_now` pending recipients at once (the scheduler skips
    the rest); 409 `not_cancellable` once sent or cancelled."""
    if not await cancel_campaign(session, campaign.id):
        raise _conflict("not_cancellable", "cancelled", campaign.status)
    await skip_pending_of_cancelled(session, campaign.id, skip_now)


def _conflict(code: str, verb: str, status: str) -> Conflict:
    return Conflict(f"a {status} campaign cannot be {verb}", code=code, fields={"status": status})


async def skip_pending_of_cancelled(session: AsyncSession, campaign_id: int, limit: int) -> int:
    """Up to `limit` pending recipients of a cancelled campaign become `skipped`
    (`campaign_cancelled`); returns how many. Repeat until it returns less than `limit`."""
    chunk = (
        select(_r.id)
        .where(_r.campaign_id == campaign_id, _r.status == "pending")
        .order_by(_r.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    result = await session.execute(
        update(_r)
        .where(_r.id.in_(chunk))
        .values(status="skipped", skip_reason=CANCELLED_REASON, lease_owner=None, lease_expires_at=None)
        .returning(_r.id)
    )
    skipped = len(result.all())
    if skipped:
        await session.execute(
            update(_c).where(_c.id == campaign_id).values(skipped_count=_c.skipped_count + skipped)
        )
    return skipped


async def cancelled_with_pending(session: AsyncSession) -> list[int]:
    pending = exists().where(_r.campaign_id == _c.id, _r.status == "pending")
    return list((await session.scalars(select(_c.id).where(_c.status == "cancelled", pending))).all())


async def retry_failed(session: AsyncSession, campaign_id: int) -> int:
    """`failed` recipients go back to `pending` and the feed starts over, so they are
    enqueued again (only they and recipients still pending: idempotency keeps `sent`
    rows from a second send). A finished campaign goes back to `sending`; a paused one
    stays paused until resumed. Returns how many recipients were reset."""
    status = (
        await session.execute(select(_c.status).where(_c.id == campaign_id).with_for_update())
    ).scalar_one()
    if status not in RETRYABLE_STATUSES:
        raise _conflict("not_retryable", "retried", status)
    result = await session.execute(
        update(_r)
        .where(_r.campaign_id == campaign_id, _r.status == "failed")
        .values(status="pending", skip_reason=None, last_error=None, lease_owner=None, lease_expires_at=None)
        .returning(_r.id)
    )
    reset = len(result.all())
    values: dict[str, Any] = {
        "failed_count": func.greatest(_c.failed_count - reset, 0),
        "enqueue_cursor": 0,
        "enqueue_floor": 0,
        "last_enqueued_at": None,
    }
    if reset and status in ("sent", "failed"):
        values.update(status="sending", sent_at=None)
    await session.execute(update(_c).where(_c.id == campaign_id).values(**values))
    return reset


async def finish_if_done(session: AsyncSession, campaign_id: int) -> bool:
    """`sending` → `sent` once the snapshot is complete and no recipient is pending or
    sending."""
    unfinished = exists().where(_r.campaign_id == _c.id, _r.status.in_(UNFINISHED_RECIPIENT_STATUSES))
    result = await session.execute(
        update(_c)
        .where(
            _c.id == campaign_id, _c.status == "sending", _c.snapshot_completed_at.is_not(None), ~unfinished
        )
        .values(status="sent", sent_at=func.now())
        .returning(_c.id)
    )
    return result.first() is not None


async def campaigns_in(session: AsyncSession, statuses: Sequence[str]) -> list[int]:
    return list((await session.scalars(select(_c.id).where(_c.status.in_(statuses)).order_by(_c.id))).all())


# The progressive enqueue feed


@dataclass(frozen=True)
class Feed:
    """Batches taken from a campaign in one short transaction, to publish after it
    commits. `previous_cursor` lets a failed publish hand the recipients back;
    `exhausted`: there was room in flight and nothing left to feed."""

    campaign_id: int
    messages: list[CampaignEmailV1]
    previous_cursor: int
    cursor: int
    exhausted: bool = False

    @property
    def recipient_count(self) -> int:
        return sum(len(m.campaign_recipient_ids) for m in self.messages)


async def take_feed(
    session: AsyncSession,
    campaign_id: int,
    *,
    batch_size: int,
    max_batches_in_flight: int,
    refeed_after_seconds: float,
) -> Feed | None:
    """The next pending recipients of a `sending` campaign, as many batches as the
    in-flight bound leaves room for, and the feed cursor moved past them.

    In flight = recipients at or below the cursor still `pending` or `sending`, counted
    from the floor (below which none is) so the count never walks the index entries of
    everything already sent. When nothing was fed for `refeed_after_seconds` while some
    are still in flight, their messages are assumed lost and the feed restarts from the
    first one. None when the campaign is not `sending` (paused, cancelled...) or is
    locked by another feeder."""
    row = (
        await session.execute(
            select(
                _c.enqueue_cursor,
                _c.enqueue_floor,
                _c.batch_count,
                _c.last_enqueued_at,
                func.now().label("now"),
            )
            .where(_c.id == campaign_id, _c.status == "sending")
            .with_for_update(skip_locked=True)
        )
    ).one_or_none()
    if row is None:
        return None
    cursor, batches = row.enqueue_cursor, row.batch_count
    floor, in_flight = await _in_flight(session, campaign_id, row.enqueue_floor, cursor)
    if in_flight and _stale(row.last_enqueued_at, row.now, refeed_after_seconds):
        cursor, floor, in_flight = 0, 0, 0
    room = max_batches_in_flight * batch_size - in_flight
    values: dict[str, Any] = {"enqueue_floor": floor}
    if room < batch_size:
        await session.execute(update(_c).where(_c.id == campaign_id).values(**values))
        return Feed(campaign_id, [], row.enqueue_cursor, row.enqueue_cursor)
    ids = list(
        (
            await session.scalars(
                select(_r.id)
                .where(_r.campaign_id == campaign_id, _r.status == "pending", _r.id > cursor)
                .order_by(_r.id)
                .limit(room - room % batch_size)
            )
        ).all()
    )
    if not ids:
        await session.execute(update(_c).where(_c.id == campaign_id).values(enqueue_cursor=cursor, **values))
        return Feed(campaign_id, [], row.enqueue_cursor, cursor, exhausted=True)
    messages = [
        CampaignEmailV1(
            campaign_id=campaign_id,
            batch_id=batch_id(campaign_id, batches + n + 1),
            campaign_recipient_ids=tuple(ids[start : start + batch_size]),
        )
        for n, start in enumerate(range(0, len(ids), batch_size))
    ]
    await session.execute(
        update(_c)
        .where(_c.id == campaign_id)
        .values(
            enqueue_cursor=ids[-1],
            batch_count=batches + len(messages),
            last_enqueued_at=func.now(),
            **values,
        )
    )
    return Feed(campaign_id, messages, row.enqueue_cursor, ids[-1])


async def _in_flight(session: AsyncSession, campaign_id: int, floor: int, cursor: int) -> tuple[int, int]:
    """(new floor, recipients in flight): the floor moves up to just below the first
    recipient in (floor, cursor] still pending or sending (to the cursor when none)."""
    if cursor <= floor:
        return cursor, 0
    unfinished = (
        _r.campaign_id == campaign_id,
        _r.status.in_(UNFINISHED_RECIPIENT_STATUSES),
        _r.id <= cursor,
    )
    first = await session.scalar(select(func.min(_r.id)).where(*unfinished, _r.id > floor))
    if first is None:
        return cursor, 0
    count = await session.scalar(select(func.count()).select_from(_r).where(*unfinished, _r.id >= first))
    return int(first) - 1, int(count or 0)


def _stale(last_enqueued_at: datetime | None, now: datetime, after_seconds: float) -> bool:
    return last_enqueued_at is None or (now - last_enqueued_at).total_seconds() >= after_seconds


async def return_feed(session: AsyncSession, feed: Feed) -> None:
    """The publish failed: hand the recipients back so the next pass feeds them again
    (unless someone moved the cursor meanwhile, e.g. a resume)."""
    await session.execute(
        update(_c)
        .where(_c.id == feed.campaign_id, _c.enqueue_cursor == feed.cursor)
        .values(enqueue_cursor=feed.previous_cursor)
    )


# Counters


_UNIQUE_ACTIVITY = """
    (SELECT count(*) FROM campaign_recipients r
     WHERE r.campaign_id = c.id
       AND (r.{column} IS NOT NULL
            OR EXISTS (SELECT 1 FROM email_events e
                       WHERE e.campaign_recipient_id = r.id AND e.event_type = '{event}'{also})))
"""
# Opens a privacy proxy or scanner made carry `{"machine": true}` (repositories/tracking.py).
_UNIQUE_HUMAN_OPENS = _UNIQUE_ACTIVITY.format(
    column="first_human_opened_at", event="open", also=""" AND NOT e.metadata @> '{"machine": true}'"""
)

_RECOMPUTE = text(
    f"""
    UPDATE campaigns c SET
        recipient_count = s.recipient_count, sent_count = s.sent_count, skipped_count = s.skipped_count,
        failed_count = s.failed_count, delivered_count = s.delivered_count,
        unsubscribe_count = s.unsubscribe_count, bounce_count = s.bounce_count,
        complaint_count = s.complaint_count,
        open_count = (SELECT count(*) FROM email_events e WHERE e.campaign_id = c.id AND e.event_type = 'open'),
        click_count = (SELECT count(*) FROM email_events e WHERE e.campaign_id = c.id AND e.event_type = 'click'),
        unique_open_count = {_UNIQUE_ACTIVITY.format(column="first_opened_at", event="open", also="")},
        unique_human_open_count = {_UNIQUE_HUMAN_OPENS},
        unique_click_count = {_UNIQUE_ACTIVITY.format(column="first_clicked_at", event="click", also="")}
    FROM (
        SELECT count(*) AS recipient_count,
               count(*) FILTER (WHERE sent_at IS NOT NULL) AS sent_count,
               count(*) FILTER (WHERE status = 'skipped') AS skipped_count,
               count(*) FILTER (WHERE status = 'failed') AS failed_count,
               count(*) FILTER (WHERE delivered_at IS NOT NULL) AS delivered_count,
               count(*) FILTER (WHERE status = 'unsubscribed' OR unsubscribed_at IS NOT NULL)
                   AS unsubscribe_count,
               count(*) FILTER (WHERE status = 'bounced' OR bounced_at IS NOT NULL) AS bounce_count,
               count(*) FILTER (WHERE status = 'complained' OR complained_at IS NOT NULL) AS complaint_count
        FROM campaign_recipients WHERE campaign_id = :campaign_id
    ) s
    WHERE c.id = :campaign_id
    RETURNING c.recipient_count, c.sent_count, c.skipped_count, c.failed_count, c.delivered_count,
              c.open_count, c.unique_open_count, c.unique_human_open_count, c.click_count, c.unique_click_count,
              c.unsubscribe_count, c.bounce_count, c.complaint_count
    """
)


async def recompute_counters(session: AsyncSession, campaign_id: int) -> dict[str, int]:
    """Every counter from the source rows: recipients for per-recipient states, events
    for totals (opens and clicks may be recorded more than once), either for the unique
    ones. A read-then-write that converges: running it twice gives the same numbers.

    - recipient_count: rows; sent: `sent_at` set (a later bounce keeps it sent);
      skipped / failed: by status; delivered: `delivered_at` set;
    - open_count / click_count: `open` / `click` events of the campaign;
    - unique_open / unique_click: recipients with `first_opened_at` / `first_clicked_at`
      or at least one such event;
    - unique_human_open: recipients with `first_human_opened_at` or an `open` event not
      flagged `machine` (privacy proxies, scanners, prefetch at send time);
    - unsubscribe / bounce / complaint: recipients in that status or with its timestamp.
    """
    row = (await session.execute(_RECOMPUTE, {"campaign_id": campaign_id})).one_or_none()
    return {} if row is None else dict(row._mapping)


async def status_counts(session: AsyncSession, campaign_id: int) -> dict[str, int]:
    rows = await session.execute(
        select(_r.status, func.count()).where(_r.campaign_id == campaign_id).group_by(_r.status)
    )
    return {row[0]: row[1] for row in rows}


async def skip_reason_counts(session: AsyncSession, campaign_id: int) -> dict[str, int]:
    """Skipped recipients by reason, most frequent first."""
    count = func.count()
    rows = await session.execute(
        select(_r.skip_reason, count)
        .where(_r.campaign_id == campaign_id, _r.status == "skipped")
        .group_by(_r.skip_reason)
        .order_by(count.desc(), _r.skip_reason)
    )
    return {row[0] or "unknown": row[1] for row in rows}


# Listing


async def list_recipients(
    session: AsyncSession, campaign_id: int, *, status: str | None, limit: int, after_id: int | None
) -> Sequence[CampaignRecipient]:
    stmt = select(_r).where(_r.campaign_id == campaign_id)
    if status is not None:
        stmt = stmt.where(_r.status == status)
    if after_id is not None:
        stmt = stmt.where(_r.id > after_id)
    return (await session.scalars(stmt.order_by(_r.id).limit(limit))).all()
