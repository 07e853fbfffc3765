"""Audience state writes: one set-based engine behind the upsert, subscribe, unsubscribe,
the PATCH routes and both imports.

A batch of inputs is applied in a fixed number of statements, whatever its size: create
missing contacts, lock and read their state, work out the new state and the events in
Python, then write contacts, subscriptions, tags and events with one statement each.
Every state change appends its event once; a repeated input changes nothing."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.repositories import mailchimp, webhooks
from datamailer_core.repositories.contacts import address_hash
from datamailer_core.repositories.events import NewEvent, append_events

Outcome = Literal["created", "updated", "unchanged"]
SUPPRESSION_FLAGS = {
    "global_unsubscribed": ("global_unsubscribed_at", "unsubscribe"),
    "hard_bounced": ("hard_bounced_at", "bounce"),
    "complained": ("complained_at", "complaint"),
}


@dataclass
class ContactInput:
    """What one caller asks for; None everywhere means "leave as it is"."""

    email: str
    normalized: str
    status: str | None = None
    audience_status: str | None = None
    verified: bool | None = None
    verified_at: datetime | None = None
    contact_verified: bool | None = None
    validation_status: str | None = None
    validation_reason: str | None = None
    validated_at: datetime | None = None
    global_unsubscribed: bool | None = None
    hard_bounced: bool | None = None
    complained: bool | None = None
    tags: Sequence[str] = ()
    reason: str | None = None
    source: str = "api"


@dataclass
class _State:
    contact_id: int
    contact: dict[str, Any]
    client_sub: dict[str, Any] | None
    audience_sub: dict[str, Any] | None
    tags: set[str] = field(default_factory=set)


_CONTACT_COLUMNS = (
    "verified_at",
    "global_unsubscribed_at",
    "hard_bounced_at",
    "complained_at",
    "validation_status",
    "validation_reason",
    "validated_at",
)
_SUB_COLUMNS = ("status", "verified_at", "unsubscribed_at", "unsubscribe_reason")

# The audience names the organization whose contacts these are.
_ORGANIZATION = "(SELECT organization_id FROM audiences WHERE id = CAST(:audience_id AS bigint))"

_CREATE_CONTACTS = text(
    f"""
    INSERT INTO contacts (organization_id, email, normalized_email, hard_bounced_at, complained_at,
                          global_unsubscribed_at)
    SELECT {_ORGANIZATION}, i.email, i.norm,
           CASE WHEN bool_or(s.reason = 'hard_bounce') THEN now() END,
           CASE WHEN bool_or(s.reason = 'complaint') THEN now() END,
           CASE WHEN bool_or(s.reason IN ('global_unsubscribe', 'manual')) THEN now() END
    FROM unnest(CAST(:emails AS text[]), CAST(:norms AS text[]), CAST(:hashes AS text[]))
         AS i(email, norm, hash)
    LEFT JOIN suppressions s ON s.address_hash = i.hash
         AND (s.organization_id IS NULL OR s.organization_id = {_ORGANIZATION})
    GROUP BY i.email, i.norm
    ON CONFLICT (organization_id, normalized_email) DO NOTHING
    RETURNING id
    """
)

_LOAD_STATE = text(
    f"""
    SELECT c.id, c.normalized_email, c.verified_at, c.global_unsubscribed_at, c.hard_bounced_at,
           c.complained_at, c.validation_status, c.validation_reason, c.validated_at,
           cs.status AS c_status, cs.verified_at AS c_verified_at, cs.unsubscribed_at AS c_unsubscribed_at,
           cs.unsubscribe_reason AS c_unsubscribe_reason,
           au.status AS a_status, au.verified_at AS a_verified_at, au.unsubscribed_at AS a_unsubscribed_at,
           au.unsubscribe_reason AS a_unsubscribe_reason,
           COALESCE((SELECT array_agg(t.slug) FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id
                     WHERE ct.contact_id = c.id AND t.audience_id = :audience_id), '{{}}') AS tags
    FROM unnest(CAST(:norms AS text[])) AS wanted(norm)
    JOIN contacts c ON c.normalized_email = wanted.norm AND c.organization_id = {_ORGANIZATION}
    LEFT JOIN subscriptions cs ON cs.contact_id = c.id AND cs.audience_id = :audience_id
         AND cs.client_id = :client_id
    LEFT JOIN subscriptions au ON au.contact_id = c.id AND au.audience_id = :audience_id
         AND au.client_id IS NULL
    ORDER BY c.id
    FOR UPDATE OF c
    """
)

_UPDATE_CONTACTS = text(
    """
    UPDATE contacts c SET verified_at = v.verified_at, global_unsubscribed_at = v.global_unsubscribed_at,
        hard_bounced_at = v.hard_bounced_at, complained_at = v.complained_at,
        validation_status = v.validation_status, validation_reason = v.validation_reason,
        validated_at = v.validated_at, updated_at = now()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:verified_at AS timestamptz[]),
                CAST(:global_unsubscribed_at AS timestamptz[]), CAST(:hard_bounced_at AS timestamptz[]),
                CAST(:complained_at AS timestamptz[]), CAST(:validation_status AS text[]),
                CAST(:validation_reason AS text[]), CAST(:validated_at AS timestamptz[]))
         AS v(id, verified_at, global_unsubscribed_at, hard_bounced_at, complained_at, validation_status,
              validation_reason, validated_at)
    WHERE c.id = v.id
    """
)


def _upsert_subscriptions(client_level: bool) -> Any:
    client = "CAST(:client_id AS bigint)" if client_level else "NULL"
    target = "(contact_id, audience_id, client_id) WHERE client_id IS NOT NULL"
    if not client_level:
        target = "(contact_id, audience_id) WHERE client_id IS NULL"
    return text(
        f"""
        INSERT INTO subscriptions (contact_id, audience_id, client_id, status, verified_at, unsubscribed_at,
                                   unsubscribe_reason)
        SELECT v.contact_id, CAST(:audience_id AS bigint), {client}, v.status,
               v.verified_at, v.unsubscribed_at, v.unsubscribe_reason
        FROM unnest(CAST(:ids AS bigint[]), CAST(:status AS text[]), CAST(:verified_at AS timestamptz[]),
                    CAST(:unsubscribed_at AS timestamptz[]), CAST(:unsubscribe_reason AS text[]))
             AS v(contact_id, status, verified_at, unsubscribed_at, unsubscribe_reason)
        ON CONFLICT {target} DO UPDATE SET status = excluded.status, verified_at = excluded.verified_at,
            unsubscribed_at = excluded.unsubscribed_at, unsubscribe_reason = excluded.unsubscribe_reason,
            updated_at = now()
        """
    )


_UPSERT_CLIENT_SUBS = _upsert_subscriptions(client_level=True)
_UPSERT_AUDIENCE_SUBS = _upsert_subscriptions(client_level=False)

_ADD_TAGS = text(
    """
    WITH wanted AS (
        SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:slugs AS text[])) AS w(contact_id, slug)
    ), created AS (
        INSERT INTO tags (audience_id, slug, name)
        SELECT DISTINCT CAST(:audience_id AS bigint), slug, slug FROM wanted
        ON CONFLICT (audience_id, slug) DO NOTHING
        RETURNING id, slug
    ), all_tags AS (
        SELECT id, slug FROM created
        UNION ALL
        SELECT t.id, t.slug FROM tags t
        WHERE t.audience_id = :audience_id AND t.slug IN (SELECT slug FROM wanted)
    )
    INSERT INTO contact_tags (contact_id, tag_id)
    SELECT DISTINCT w.contact_id, a.id FROM wanted w JOIN all_tags a ON a.slug = w.slug
    ON CONFLICT (contact_id, tag_id) DO NOTHING
    """
)


def _state_from_row(row: Any) -> _State:
    m = row._mapping
    client_sub = None if m["c_status"] is None else {c: m[f"c_{c}"] for c in _SUB_COLUMNS}
    audience_sub = None if m["a_status"] is None else {c: m[f"a_{c}"] for c in _SUB_COLUMNS}
    return _State(
        contact_id=m["id"],
        contact={c: m[c] for c in _CONTACT_COLUMNS},
        client_sub=client_sub,
        audience_sub=audience_sub,
        tags=set(m["tags"]),
    )


def _next_subscription(
    current: dict[str, Any] | None,
    status: str | None,
    verified: bool | None,
    verified_at: datetime | None,
    reason: str | None,
    now: datetime,
) -> dict[str, Any]:
    new: dict[str, Any] = {"status": "pending", "verified_at": None, "unsubscribed_at": None}
    sub: dict[str, Any] = dict(current) if current else {**new, "unsubscribe_reason": None}
    if status is not None and status != sub["status"]:
        sub["status"] = status
        if status == "unsubscribed":
            sub["unsubscribed_at"], sub["unsubscribe_reason"] = now, reason
        else:
            sub["unsubscribed_at"], sub["unsubscribe_reason"] = None, None
    if verified is True and sub["verified_at"] is None:
        sub["verified_at"] = verified_at or now
    elif verified is False:
        sub["verified_at"] = None
    return sub


def _plan(
    item: ContactInput, state: _State, audience_id: int, client_id: int, now: datetime
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[NewEvent]]:
    """The new contact, client and audience subscription state, and the events."""
    contact = dict(state.contact)
    events: list[NewEvent] = []
    scope: dict[str, Any] = {
        "contact_id": state.contact_id,
        "client_id": client_id,
        "audience_id": audience_id,
    }

    def event(kind: str, **metadata: Any) -> None:
        events.append(NewEvent(kind, metadata={"source": item.source, **metadata}, **scope))

    for flag, (column, kind) in SUPPRESSION_FLAGS.items():
        wanted = getattr(item, flag)
        if wanted is True and contact[column] is None:
            contact[column] = now
            details: dict[str, Any] = {"scope": "global"} if kind == "unsubscribe" else {}
            event(kind, reason=item.reason, **details)
        elif wanted is False and contact[column] is not None:
            contact[column] = None
    if item.contact_verified is True and contact["verified_at"] is None:
        contact["verified_at"] = item.verified_at or now
    elif item.contact_verified is False:
        contact["verified_at"] = None
    if item.validation_status is not None and (
        (item.validation_status, item.validation_reason)
        != (contact["validation_status"], contact["validation_reason"])
        or (item.validated_at is not None and item.validated_at != contact["validated_at"])
    ):
        contact["validation_status"] = item.validation_status
        contact["validation_reason"] = item.validation_reason
        contact["validated_at"] = item.validated_at or now

    client_sub = _next_subscription(
        state.client_sub, item.status, item.verified, item.verified_at, item.reason, now
    )
    audience_status = item.audience_status
    if audience_status is None and item.status == "subscribed":
        audience_status = "subscribed"  # subscribing to a client re-joins its audience
    audience_sub = _next_subscription(state.audience_sub, audience_status, None, None, item.reason, now)

    before_client = state.client_sub["status"] if state.client_sub else None
    if client_sub["status"] != before_client and client_sub["status"] in ("subscribed", "unsubscribed"):
        if client_sub["status"] == "subscribed":
            event("subscribe", scope="client", resubscribed=before_client == "unsubscribed")
        else:
            event("unsubscribe", scope="client", reason=item.reason)
    before_audience = state.audience_sub["status"] if state.audience_sub else None
    if audience_sub["status"] == "unsubscribed" and before_audience != "unsubscribed":
        event("unsubscribe", scope="audience", reason=item.reason)
    return contact, client_sub, audience_sub, events


@dataclass
class ApplyResult:
    outcomes: list[Outcome]
    contact_ids: list[int]


async def apply_contacts(
    session: AsyncSession, *, audience_id: int, client_id: int, items: Sequence[ContactInput]
) -> ApplyResult:
    """Apply a batch of inputs (distinct normalized emails) in a constant number of
    statements. The caller owns the transaction."""
    if not items:
        return ApplyResult([], [])
    norms = [i.normalized for i in items]
    created_ids: set[int] = set()
    states: dict[str, _State] = {}
    # A contact erased by a concurrent transaction between the insert (which saw it) and
    # the locking read (which skips it) is created again, until every row is held.
    for _attempt in range(5):
        created_ids.update(
            (
                await session.execute(
                    _CREATE_CONTACTS,
                    {
                        "audience_id": audience_id,
                        "emails": [i.email for i in items],
                        "norms": norms,
                        "hashes": [address_hash(n) for n in norms],
                    },
                )
            ).scalars()
        )
        rows = (
            await session.execute(
                _LOAD_STATE, {"audience_id": audience_id, "client_id": client_id, "norms": norms}
            )
        ).all()
        states = {row._mapping["normalized_email"]: _state_from_row(row) for row in rows}
        if len(states) == len(set(norms)):
            break
    now = datetime.now(UTC)
    contact_rows: list[tuple[int, dict[str, Any]]] = []
    client_rows: list[tuple[int, dict[str, Any]]] = []
    audience_rows: list[tuple[int, dict[str, Any]]] = []
    tag_pairs: list[tuple[int, str]] = []
    events: list[NewEvent] = []
    outcomes: list[Outcome] = []
    synced: list[mailchimp.MemberChange] = []
    for item in items:
        state = states[item.normalized]
        contact, client_sub, audience_sub, item_events = _plan(item, state, audience_id, client_id, now)
        changed = False
        if contact != state.contact:
            contact_rows.append((state.contact_id, contact))
            changed = True
        if client_sub != state.client_sub:
            client_rows.append((state.contact_id, client_sub))
            changed = True
        if audience_sub != state.audience_sub:
            audience_rows.append((state.contact_id, audience_sub))
            changed = True
        new_tags = sorted(set(item.tags) - state.tags)
        tag_pairs.extend((state.contact_id, slug) for slug in new_tags)
        changed = changed or bool(new_tags)
        events.extend(item_events)
        if state.contact_id in created_ids or state.client_sub is None:
            outcomes.append("created")
        else:
            outcomes.append("updated" if changed else "unchanged")
        if outcomes[-1] != "unchanged":
            synced.append(
                mailchimp.MemberChange(state.contact_id, new_tags, (), sorted(state.tags | set(new_tags)))
            )

    if contact_rows:
        await session.execute(
            _UPDATE_CONTACTS,
            {
                "ids": [i for i, _ in contact_rows],
                **{c: [r[c] for _, r in contact_rows] for c in _CONTACT_COLUMNS},
            },
        )
    sub_params = {"audience_id": audience_id, "client_id": client_id}
    for statement, sub_rows in ((_UPSERT_CLIENT_SUBS, client_rows), (_UPSERT_AUDIENCE_SUBS, audience_rows)):
        if sub_rows:
            columns = {c: [r[c] for _, r in sub_rows] for c in _SUB_COLUMNS}
            await session.execute(statement, {**sub_params, "ids": [i for i, _ in sub_rows], **columns})
    if tag_pairs:
        await session.execute(
            _ADD_TAGS,
            {
                "audience_id": audience_id,
                "ids": [c for c, _ in tag_pairs],
                "slugs": [s for _, s in tag_pairs],
            },
        )
    await append_events(session, events)
    emails = {states[i.normalized].contact_id: i.email for i in items}
    await webhooks.record_events(
        session, client_id=client_id, events=webhooks.subscription_events(events, emails)
    )
    await mailchimp.record_changes(session, client_id=client_id, audience_id=audience_id, changes=synced)
    return ApplyResult(outcomes, [states[i.normalized].contact_id for i in items])
