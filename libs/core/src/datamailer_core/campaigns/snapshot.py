"""The recipient snapshot: one `campaign_recipients` row per intended recipient, written
by set-based statements over contact id ranges, never a loop per contact.

Intended recipients are the contacts with a subscription row of the campaign's client
in the campaign's audience (whatever its status) that match the tag filters: every
include tag (all must match) and no exclude tag (any excludes). A contact known only
through the audience-level row is not one: that row is shared by the organization's
clients, and a client never sees (nor lists among its recipients) a contact it has no
subscription for. A campaign with a `recipient_list_key` narrows them to the active
members of that list's subtree (`<all>`: of every list of the client in the audience),
the tag filters still applying on top. Contacts filtered out by tags or the list get no row at all: they were never the
campaign's audience, and a segment of a large audience stays a small snapshot.

Each intended recipient is `pending`, or `skipped` with the first matching reason, in
the order of spec/model.md: hard_bounce, complaint, global_unsubscribe, invalid_email
(a bad validation status), unverified (neither the contact, the audience-level nor the
client subscription verified), audience_unsubscribe, client_unsubscribe, suppressed (the
client subscription is not `subscribed`), category_unsubscribe (the campaign's category
disabled at client or audience level).

A chunk is one statement that inserts the rows (`ON CONFLICT DO NOTHING`: a contact
appears once, a re-run writes nothing), adds to the campaign's counters and moves its
`snapshot_cursor`, all in one short transaction holding the campaign row, so progress is
visible and a crash resumes at the last committed chunk.
"""

import functools
import time
from dataclasses import dataclass
from typing import Final

from sqlalchemy import TextClause, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from datamailer_core.models import Campaign, Subscription, Tag
from datamailer_core.models.contacts import BAD_VALIDATION_STATUSES
from datamailer_core.repositories.recipient_lists import IN_SUBTREE, ListScope, subtree_params

DEFAULT_CHUNK: Final = 50_000

_BAD_VALIDATION = ", ".join(f"'{status}'" for status in BAD_VALIDATION_STATUSES)

# `s`: the client subscription, `a`: the audience-level one, `c`: the contact.
_REASON = f"""
    CASE
        WHEN c.hard_bounced_at IS NOT NULL THEN 'hard_bounce'
        WHEN c.complained_at IS NOT NULL THEN 'complaint'
        WHEN c.global_unsubscribed_at IS NOT NULL THEN 'global_unsubscribe'
        WHEN c.validation_status IN ({_BAD_VALIDATION}) THEN 'invalid_email'
        WHEN c.verified_at IS NULL AND s.verified_at IS NULL AND a.verified_at IS NULL THEN 'unverified'
        WHEN a.status = 'unsubscribed' THEN 'audience_unsubscribe'
        WHEN s.status = 'unsubscribed' THEN 'client_unsubscribe'
        WHEN s.status <> 'subscribed' THEN 'suppressed'
        {{category}}
    END
"""
_CATEGORY = """
        WHEN EXISTS (SELECT 1 FROM category_preferences p
                     WHERE p.contact_id = c.id AND p.audience_id = :audience_id AND p.tag = :category_tag
                       AND NOT p.enabled AND (p.client_id = :client_id OR p.client_id IS NULL))
        THEN 'category_unsubscribe'
"""
_INCLUDE = """
      AND (SELECT count(*) FROM contact_tags ct
           WHERE ct.contact_id = c.id AND ct.tag_id = ANY(CAST(:include_ids AS bigint[])))
          = cardinality(CAST(:include_ids AS bigint[]))
"""
_EXCLUDE = """
      AND NOT EXISTS (SELECT 1 FROM contact_tags ct
                      WHERE ct.contact_id = c.id AND ct.tag_id = ANY(CAST(:exclude_ids AS bigint[])))
"""
# A campaign targeting a list: the subtree's active members of this id range, a semi-join
# the index (list_id, status, contact_id) answers with one range scan per subtree list,
# so a chunk reads only its own slice of the members, never the whole list.
_IN_LIST = f"""
      AND s.contact_id IN (SELECT m.contact_id FROM recipient_lists l
                           JOIN recipient_list_members m ON m.list_id = l.id AND m.status = 'active'
                           WHERE {IN_SUBTREE}
                             AND m.contact_id > :after AND m.contact_id <= :upper)
"""
# The join every snapshot statement (and the benchmark's bare reference) shares.
INTENDED_RECIPIENTS_FROM: Final = """
    FROM subscriptions s
    JOIN contacts c ON c.id = s.contact_id
    LEFT JOIN subscriptions a
           ON a.contact_id = s.contact_id AND a.audience_id = :audience_id AND a.client_id IS NULL
"""
INTENDED_RECIPIENTS_WHERE: Final = "WHERE s.audience_id = :audience_id AND s.client_id = :client_id"


def skip_reason_sql(*, category: bool) -> str:
    """The first matching skip reason (NULL: eligible) over `c` (contact), `s` (client
    subscription) and `a` (audience-level subscription), with `:audience_id`,
    `:client_id` and, with `category`, `:category_tag` bound. The snapshot and the
    claim-time re-check use the same rule."""
    return _REASON.format(category=_CATEGORY if category else "")


@functools.lru_cache(maxsize=16)
def chunk_statement(*, include: bool, exclude: bool, category: bool, in_list: bool = False) -> TextClause:
    """Insert one contact id range `(:after, :upper]`, count it on the campaign and
    move its cursor; returns the rows inserted and how many of them are skipped."""
    reason = skip_reason_sql(category=category)
    return text(
        f"""
        WITH inserted AS (
            INSERT INTO campaign_recipients (campaign_id, contact_id, email, status, skip_reason)
            SELECT CAST(:campaign_id AS bigint), c.id, c.email,
                   CASE WHEN r.reason IS NULL THEN 'pending' ELSE 'skipped' END, r.reason
            {INTENDED_RECIPIENTS_FROM}
            -- OFFSET 0 keeps `r` a subquery: inlined, the CASE (and its category EXISTS)
            -- would be computed twice per row, for `status` and for `skip_reason`.
            CROSS JOIN LATERAL (SELECT {reason} AS reason OFFSET 0) r
            {INTENDED_RECIPIENTS_WHERE}
              AND s.contact_id > :after AND s.contact_id <= :upper
              {_IN_LIST if in_list else ""}
              {_INCLUDE if include else ""}
              {_EXCLUDE if exclude else ""}
            ORDER BY s.contact_id
            ON CONFLICT (campaign_id, contact_id) DO NOTHING
            RETURNING status
        ), totals AS (
            SELECT count(*) AS inserted, count(*) FILTER (WHERE status = 'skipped') AS skipped FROM inserted
        )
        UPDATE campaigns SET recipient_count = recipient_count + totals.inserted,
                             skipped_count = skipped_count + totals.skipped,
                             snapshot_cursor = :upper, updated_at = now()
        FROM totals
        WHERE campaigns.id = :campaign_id
        RETURNING totals.inserted, totals.skipped
        """
    )


def snapshot_percent(campaign: Campaign) -> float:
    """How much of the contact id range is done, 0..100."""
    if campaign.snapshot_completed_at is not None:
        return 100.0
    start, cursor, target = campaign.snapshot_start, campaign.snapshot_cursor, campaign.snapshot_target
    if start is None or cursor is None or target is None or target <= start:
        return 0.0
    return round(100 * (cursor - start) / (target - start), 1)


@dataclass(frozen=True)
class SnapshotStep:
    campaign_id: int
    inserted: int
    skipped: int
    cursor: int
    target: int
    done: bool


async def snapshot_step(
    session: AsyncSession, campaign_id: int, chunk: int = DEFAULT_CHUNK
) -> SnapshotStep | None:
    """Snapshot the next contact id range of a `snapshotting` campaign, in the caller's
    transaction; the last range also moves the campaign to `sending`. None when the
    campaign is not snapshotting or another process holds it."""
    campaign = (
        await session.execute(
            select(Campaign)
            .where(Campaign.id == campaign_id, Campaign.status == "snapshotting")
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if campaign is None:
        return None
    cursor, target = campaign.snapshot_cursor, campaign.snapshot_target
    if cursor is None or target is None:
        cursor, target = await _contact_range(session, campaign.audience_id, campaign.client_id)
        await session.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id)
            .values(snapshot_start=cursor, snapshot_cursor=cursor, snapshot_target=target)
        )
    inserted = skipped = 0
    include_ids = await _tag_ids(session, campaign.audience_id, campaign.include_tags)
    if len(include_ids) < len(campaign.include_tags):
        # An include tag nobody in the audience has: no contact can match them all.
        upper = target
    else:
        upper = min(cursor + chunk, target)
        if upper > cursor:
            exclude_ids = await _tag_ids(session, campaign.audience_id, campaign.exclude_tags)
            statement = chunk_statement(
                include=bool(include_ids),
                exclude=bool(exclude_ids),
                category=campaign.category_tag is not None,
                in_list=campaign.recipient_list_key is not None,
            )
            list_params = (
                {}
                if campaign.recipient_list_key is None
                else subtree_params(
                    ListScope(campaign.client_id, campaign.audience_id), campaign.recipient_list_key
                )
            )
            row = (
                await session.execute(
                    statement,
                    {
                        "campaign_id": campaign.id,
                        "audience_id": campaign.audience_id,
                        "client_id": campaign.client_id,
                        "after": cursor,
                        "upper": upper,
                        "include_ids": include_ids,
                        "exclude_ids": exclude_ids,
                        "category_tag": campaign.category_tag,
                        **list_params,
                    },
                )
            ).one()
            inserted, skipped = int(row.inserted), int(row.skipped)
    done = upper >= target
    values: dict[str, object] = {"snapshot_cursor": upper}
    if done:
        values.update(snapshot_completed_at=func.now(), status="sending")
    await session.execute(update(Campaign).where(Campaign.id == campaign.id).values(**values))
    if done:
        # Fresh statistics before the send's queries plan against the new rows
        # (autoanalyze may be minutes away; ANALYZE samples, it does not read all).
        await session.execute(text("ANALYZE campaign_recipients"))
    return SnapshotStep(campaign.id, inserted, skipped, upper, target, done)


async def _contact_range(session: AsyncSession, audience_id: int, client_id: int) -> tuple[int, int]:
    """`(first contact id - 1, last contact id)` of the client's subscribers in the
    audience when the snapshot starts: contacts that subscribe later are not included,
    and no statement is spent on ids below or above them."""
    low, high = (
        await session.execute(
            select(func.min(Subscription.contact_id), func.max(Subscription.contact_id)).where(
                Subscription.audience_id == audience_id, Subscription.client_id == client_id
            )
        )
    ).one()
    return (0, 0) if low is None else (int(low) - 1, int(high))


async def _tag_ids(session: AsyncSession, audience_id: int, slugs: list[str]) -> list[int]:
    if not slugs:
        return []
    rows = await session.scalars(select(Tag.id).where(Tag.audience_id == audience_id, Tag.slug.in_(slugs)))
    return list(rows.all())


async def run_snapshot(
    sessionmaker: async_sessionmaker[AsyncSession],
    campaign_id: int,
    *,
    chunk: int = DEFAULT_CHUNK,
    budget_seconds: float | None = None,
) -> int:
    """Snapshot chunk after chunk, one transaction each, until the campaign is done (or
    paused, cancelled, taken by another process), or `budget_seconds` ran out after at
    least one chunk. Returns the rows inserted; call again to continue."""
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
    total = 0
    while True:
        async with sessionmaker() as session, session.begin():
            step = await snapshot_step(session, campaign_id, chunk)
        if step is None:
            return total
        total += step.inserted
        if step.done or (deadline is not None and time.monotonic() >= deadline):
            return total
