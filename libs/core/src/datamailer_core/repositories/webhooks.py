"""Outbound webhooks: the outbox write. An event for a client becomes one pending
delivery per active endpoint of that client that takes its type, in the caller's
transaction, so the event exists exactly when the change it reports was committed. The
dispatcher (scheduler) delivers the pending rows."""

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from sqlalchemy import and_, case, cast, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.errors import Conflict, NotFound
from datamailer_core.models import WebhookDelivery, WebhookEndpoint
from datamailer_core.repositories.audience_queries import cursor_id, decode_cursor, encode_cursor
from datamailer_core.repositories.events import NewEvent
from datamailer_core.webhooks import DISABLE_AFTER_FAILURES, backoff_seconds, generate_secret

# The events of queues.md ("Outbound webhooks to client applications"), and beyond.
EVENT_TYPES: Final = (
    "contact.hard_bounced",
    "contact.complained",
    "subscription.unsubscribed",
    "subscription.resubscribed",
    "message.delivered",
    "message.opened",
    "message.clicked",
    "transactional.skipped",
    "transactional.failed",
    "campaign.paused",
)

_RECORD = text(
    """
    INSERT INTO webhook_deliveries (endpoint_id, client_id, event_type, payload)
    SELECT e.id, e.client_id, CAST(:event_type AS text), CAST(:payload AS jsonb)
    FROM webhook_endpoints e
    WHERE e.client_id = :client_id AND e.status = 'active'
      AND (e.event_types IS NULL OR CAST(:event_type AS text) = ANY(e.event_types))
    ORDER BY e.id
    """
)
_RECORD_MANY = text(
    """
    INSERT INTO webhook_deliveries (endpoint_id, client_id, event_type, payload)
    SELECT e.id, e.client_id, ev.event_type, CAST(ev.payload AS jsonb)
    FROM unnest(CAST(:types AS text[]), CAST(:payloads AS text[])) WITH ORDINALITY
         AS ev(event_type, payload, n)
    JOIN webhook_endpoints e ON e.client_id = :client_id AND e.status = 'active'
      AND (e.event_types IS NULL OR ev.event_type = ANY(e.event_types))
    ORDER BY ev.n, e.id
    """
)
_RECORD_TRANSACTIONAL = text(
    """
    INSERT INTO webhook_deliveries (endpoint_id, client_id, event_type, payload)
    SELECT e.id, e.client_id, CAST(:event_type AS text),
           jsonb_build_object(
               'message_id', m.id, 'email', m.email, 'template_key', m.template_key,
               'idempotency_key', m.idempotency_key, 'status', m.status
           ) || CAST(:details AS jsonb)
    FROM transactional_messages m
    JOIN webhook_endpoints e ON e.client_id = m.client_id AND e.status = 'active'
      AND (e.event_types IS NULL OR CAST(:event_type AS text) = ANY(e.event_types))
    WHERE m.id = ANY(CAST(:ids AS bigint[]))
    ORDER BY m.id, e.id
    """
)


async def record_event(
    session: AsyncSession, *, client_id: int, event_type: str, data: Mapping[str, Any]
) -> None:
    """Queue `event_type` with `data` (JSON-serializable) for the client's endpoints."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    await session.execute(
        _RECORD,
        {"client_id": client_id, "event_type": event_type, "payload": json.dumps(dict(data), default=str)},
    )


async def record_events(
    session: AsyncSession, *, client_id: int, events: Sequence[tuple[str, Mapping[str, Any]]]
) -> None:
    """Queue several `(event_type, data)` of one client in one statement."""
    if not events:
        return
    for event_type, _ in events:
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown webhook event type {event_type!r}")
    await session.execute(
        _RECORD_MANY,
        {
            "client_id": client_id,
            "types": [t for t, _ in events],
            "payloads": [json.dumps(dict(d), default=str) for _, d in events],
        },
    )


def subscription_events(
    events: Iterable[NewEvent], emails: Mapping[int, str]
) -> list[tuple[str, dict[str, Any]]]:
    """The webhook events of the audience engine's events: every unsubscribe, and the
    subscribes that end an unsubscription (`resubscribed`)."""
    found: list[tuple[str, dict[str, Any]]] = []
    for event in events:
        meta = event.metadata
        if event.event_type == "unsubscribe":
            kind = "subscription.unsubscribed"
        elif event.event_type == "subscribe" and meta.get("resubscribed") is True:
            kind = "subscription.resubscribed"
        else:
            continue
        data = {
            "email": emails.get(event.contact_id) if event.contact_id is not None else None,
            "contact_id": event.contact_id,
            "audience_id": event.audience_id,
            "scope": meta.get("scope"),
            "reason": meta.get("reason"),
            "source": meta.get("source"),
        }
        found.append((kind, data))
    return found


async def record_transactional_events(
    session: AsyncSession, message_ids: Sequence[int], status: str, details: Mapping[str, Any]
) -> None:
    """`transactional.skipped` / `transactional.failed` for messages that just reached
    that status, in one statement."""
    if not message_ids or status not in ("skipped", "failed"):
        return
    await session.execute(
        _RECORD_TRANSACTIONAL,
        {
            "ids": list(message_ids),
            "event_type": f"transactional.{status}",
            "details": json.dumps(dict(details), default=str),
        },
    )


# --- Endpoints (the client API) -------------------------------------------------------


@dataclass(frozen=True)
class EndpointInput:
    url: str
    event_types: list[str] | None
    # `keep` leaves an existing endpoint's token as it is.
    bearer_token: str | None | Literal["keep"] = "keep"
    rotate_secret: bool = False


async def list_endpoints(session: AsyncSession, client_id: int) -> list[WebhookEndpoint]:
    return list(
        (
            await session.scalars(
                select(WebhookEndpoint)
                .where(WebhookEndpoint.client_id == client_id)
                .order_by(WebhookEndpoint.id)
            )
        ).all()
    )


async def replace_endpoints(
    session: AsyncSession, client_id: int, wanted: Sequence[EndpointInput]
) -> list[tuple[WebhookEndpoint, str | None]]:
    """Make the client's endpoints exactly `wanted` (by URL): new ones get a secret,
    kept ones keep theirs unless rotated, missing ones are deleted with their
    deliveries. Returns each endpoint with the secret to show once (new or rotated)."""
    existing = {
        e.url: e
        for e in (
            await session.scalars(
                select(WebhookEndpoint).where(WebhookEndpoint.client_id == client_id).with_for_update()
            )
        ).all()
    }
    keep = {w.url for w in wanted}
    gone = [e.id for url, e in existing.items() if url not in keep]
    if gone:
        await session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id.in_(gone)))
    result: list[tuple[WebhookEndpoint, str | None]] = []
    for item in wanted:
        endpoint = existing.get(item.url)
        shown: str | None = None
        if endpoint is None:
            shown = generate_secret()
            endpoint = WebhookEndpoint(client_id=client_id, url=item.url, secret=shown)
            session.add(endpoint)
        elif item.rotate_secret:
            shown = generate_secret()
            endpoint.secret = shown
        endpoint.event_types = item.event_types
        if item.bearer_token != "keep":
            endpoint.bearer_token = item.bearer_token
        result.append((endpoint, shown))
    await session.flush()
    return result


# --- Deliveries (the client API) ------------------------------------------------------


@dataclass(frozen=True)
class DeliveryView:
    delivery: WebhookDelivery
    url: str


async def list_deliveries(
    session: AsyncSession, client_id: int, *, status: str | None, limit: int, cursor: str | None
) -> tuple[list[DeliveryView], str | None]:
    """The client's deliveries, newest first, keyset-paged by id."""
    stmt = (
        select(WebhookDelivery, WebhookEndpoint.url)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.client_id == client_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit + 1)
    )
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    if cursor:
        (before,) = decode_cursor(cursor, 1)
        stmt = stmt.where(WebhookDelivery.id < cursor_id(before))
    rows = (await session.execute(stmt)).all()
    views = [DeliveryView(delivery, url) for delivery, url in rows[:limit]]
    next_cursor = encode_cursor(views[-1].delivery.id) if len(rows) > limit else None
    return views, next_cursor


async def replay(session: AsyncSession, client_id: int, event_id: uuid.UUID) -> DeliveryView:
    """Queue the client's delivery again now, with a fresh round of attempts (its
    history stays). Not while an attempt is in flight."""
    row = (
        await session.execute(
            select(WebhookDelivery, WebhookEndpoint.url)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(WebhookDelivery.client_id == client_id, WebhookDelivery.event_id == event_id)
            .with_for_update(of=WebhookDelivery)
        )
    ).one_or_none()
    if row is None:
        raise NotFound("no such webhook event", fields={"event_id": "not_found"})
    delivery, url = row
    leased = delivery.lease_expires_at is not None and delivery.lease_expires_at > datetime.now(UTC)
    if delivery.status == "delivering" and leased:
        raise Conflict("an attempt of this event is in flight; try again shortly")
    delivery.status = "pending"
    delivery.next_attempt_at = func.now()
    delivery.attempt_count = 0
    delivery.lease_owner = None
    delivery.lease_expires_at = None
    await session.flush()
    await session.refresh(delivery)
    return DeliveryView(delivery, url)


# --- The dispatcher -------------------------------------------------------------------


@dataclass(frozen=True)
class DueDelivery:
    id: int
    endpoint_id: int
    event_id: uuid.UUID
    event_type: str
    payload: dict[str, Any]
    created_at: datetime
    attempt_count: int
    url: str
    secret: str
    bearer_token: str | None


@dataclass(frozen=True)
class Attempt:
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


_CLAIM = text(
    """
    WITH due AS (
        SELECT d.id, d.endpoint_id, d.next_attempt_at,
               row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.id) AS n
        FROM webhook_deliveries d
        JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.status = 'active'
        WHERE (d.status = 'pending' AND d.next_attempt_at <= now())
           OR (d.status = 'delivering' AND d.lease_expires_at < now())
    ), picked AS (
        SELECT d.id FROM webhook_deliveries d
        WHERE d.id IN (SELECT id FROM due WHERE n <= :per_endpoint)
          AND ((d.status = 'pending' AND d.next_attempt_at <= now())
               OR (d.status = 'delivering' AND d.lease_expires_at < now()))
        ORDER BY d.next_attempt_at, d.id
        LIMIT :limit
        FOR UPDATE OF d SKIP LOCKED
    )
    UPDATE webhook_deliveries d
    SET status = 'delivering', lease_owner = :owner,
        lease_expires_at = now() + make_interval(secs => :lease_seconds)
    FROM picked, webhook_endpoints e
    WHERE d.id = picked.id AND e.id = d.endpoint_id
    RETURNING d.id, d.endpoint_id, d.event_id, d.event_type, d.payload, d.created_at,
              d.attempt_count, e.url, e.secret, e.bearer_token
    """
)


async def claim_due(
    session: AsyncSession, *, owner: str, limit: int, per_endpoint: int, lease_seconds: float
) -> list[DueDelivery]:
    """Lease due deliveries of active endpoints (at most `per_endpoint` each, oldest
    first), and deliveries whose lease expired mid-attempt."""
    rows = await session.execute(
        _CLAIM,
        {"owner": owner, "limit": limit, "per_endpoint": per_endpoint, "lease_seconds": lease_seconds},
    )
    found = [DueDelivery(**row._mapping) for row in rows]
    return sorted(found, key=lambda d: (d.endpoint_id, d.created_at, d.id))


async def record_attempt(session: AsyncSession, claimed: DueDelivery, owner: str, attempt: Attempt) -> bool:
    """Record one attempt of a leased delivery and its effect on the endpoint: success
    delivers and resets the consecutive failures; a failure schedules the next attempt
    (or fails the delivery after the last) and disables the endpoint at the threshold.
    Returns whether the endpoint is now disabled. A lease no longer ours records nothing."""
    number = claimed.attempt_count + 1
    entry = {
        "at": datetime.now(UTC).isoformat(),
        "status_code": attempt.status_code,
        "error": attempt.error,
        "duration_ms": attempt.duration_ms,
    }
    values: dict[str, Any] = {
        "attempt_count": number,
        "attempts": WebhookDelivery.attempts.op("||")(cast([entry], JSONB)),
        "last_status_code": attempt.status_code,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if attempt.ok:
        values |= {"status": "delivered", "delivered_at": func.now(), "last_error": None}
    else:
        wait = backoff_seconds(number)
        values["last_error"] = attempt.error
        if wait is None:
            values["status"] = "failed"
        else:
            values |= {
                "status": "pending",
                "next_attempt_at": func.now() + func.make_interval(0, 0, 0, 0, 0, 0, wait),
            }
    updated = await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == claimed.id,
            WebhookDelivery.status == "delivering",
            WebhookDelivery.lease_owner == owner,
        )
        .values(**values)
        .returning(WebhookDelivery.id)
    )
    if updated.one_or_none() is None:
        return False
    _e = WebhookEndpoint
    if attempt.ok:
        endpoint = update(_e).values(failure_count=0, last_success_at=func.now())
    else:
        reached = _e.failure_count + 1 >= DISABLE_AFTER_FAILURES
        endpoint = update(_e).values(
            failure_count=_e.failure_count + 1,
            last_failure_at=func.now(),
            last_error=attempt.error,
            status=case((reached, "disabled"), else_=_e.status),
            disabled_at=case((and_(reached, _e.disabled_at.is_(None)), func.now()), else_=_e.disabled_at),
        )
    status = await session.scalar(endpoint.where(_e.id == claimed.endpoint_id).returning(_e.status))
    return status == "disabled"


async def release(session: AsyncSession, ids: Sequence[int], owner: str) -> None:
    """Give back leased deliveries that were not attempted (their endpoint was disabled)."""
    if ids:
        await session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id.in_(ids),
                WebhookDelivery.status == "delivering",
                WebhookDelivery.lease_owner == owner,
            )
            .values(status="pending", lease_owner=None, lease_expires_at=None)
        )


# --- Operator -------------------------------------------------------------------------


async def set_endpoints_status(
    session: AsyncSession, client_id: int, *, enabled: bool, url: str | None = None
) -> list[tuple[str, bool]]:
    """Enable (consecutive failures reset) or disable the client's endpoints, or the one
    at `url`; returns (url, changed) for each. Idempotent."""
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.client_id == client_id)
    if url is not None:
        stmt = stmt.where(WebhookEndpoint.url == url)
    endpoints = (await session.scalars(stmt.order_by(WebhookEndpoint.id).with_for_update())).all()
    if not endpoints:
        raise NotFound("no such webhook endpoint" if url else "the client has no webhook endpoints")
    wanted = "active" if enabled else "disabled"
    changes: list[tuple[str, bool]] = []
    for endpoint in endpoints:
        changed = endpoint.status != wanted
        if changed:
            endpoint.status = wanted
            endpoint.disabled_at = None if enabled else datetime.now(UTC)
            if enabled:
                endpoint.failure_count = 0
        changes.append((endpoint.url, changed))
    await session.flush()
    return changes
