"""The outbound webhook dispatcher, a job of `datamailer scheduler`.

One run leases due deliveries in a short transaction (`FOR UPDATE SKIP LOCKED`, at most
`PER_ENDPOINT` per endpoint), POSTs them with no database connection held, and records
each attempt in its own short transaction. An endpoint's deliveries go one after the
other, so when its consecutive failures reach the threshold and it is disabled, the rest
are given back unattempted. Requests follow no redirect (a 3xx is a failed attempt) and
the response body is never read.
"""

import asyncio
import json
import time
from collections.abc import Sequence
from itertools import groupby
from typing import Final

import httpx

from datamailer_core.repositories import webhooks
from datamailer_core.repositories.webhooks import Attempt, DueDelivery
from datamailer_core.webhooks import sign
from datamailer_workers.deps import WorkerDeps

BATCH: Final = 50
PER_ENDPOINT: Final = 5
TIMEOUT_SECONDS: Final = 10.0
# Endpoints posted to at once in one run.
CONCURRENCY: Final = 10
# Long enough for PER_ENDPOINT attempts that all time out, one after the other.
LEASE_SECONDS: Final = PER_ENDPOINT * (TIMEOUT_SECONDS + 5) + 30
MAX_ERROR_CHARS: Final = 500
USER_AGENT: Final = "Datamailer-Webhooks/1"


def request_body(delivery: DueDelivery) -> bytes:
    return json.dumps(
        {
            "id": str(delivery.event_id),
            "type": delivery.event_type,
            "timestamp": delivery.created_at.isoformat(),
            "data": delivery.payload,
        },
        separators=(",", ":"),
        default=str,
    ).encode()


def request_headers(delivery: DueDelivery, body: bytes, timestamp: int) -> dict[str, str]:
    event_id = str(delivery.event_id)
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(delivery.secret, event_id, timestamp, body),
    }
    if delivery.bearer_token:
        headers["authorization"] = f"Bearer {delivery.bearer_token}"
    return headers


async def post(client: httpx.AsyncClient, delivery: DueDelivery) -> Attempt:
    """One attempt; every outcome (status, timeout, refused connection) is an Attempt."""
    body = request_body(delivery)
    headers = request_headers(delivery, body, int(time.time()))
    started = time.monotonic()
    status: int | None = None
    error: str | None = None
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS + 5):
            async with client.stream("POST", delivery.url, content=body, headers=headers) as response:
                status = response.status_code
        if not 200 <= status < 300:
            error = f"HTTP {status}"
    except Exception as exc:  # any failure of the receiver is this attempt's result
        error = f"{type(exc).__name__}: {exc}".strip().rstrip(":")[:MAX_ERROR_CHARS]
    return Attempt(status_code=status, error=error, duration_ms=int((time.monotonic() - started) * 1000))


async def _deliver_endpoint(
    deps: WorkerDeps, client: httpx.AsyncClient, owner: str, claims: Sequence[DueDelivery]
) -> int:
    attempted = 0
    for i, delivery in enumerate(claims):
        attempt = await post(client, delivery)
        attempted += 1
        async with deps.sessionmaker() as session, session.begin():
            disabled = await webhooks.record_attempt(session, delivery, owner, attempt)
            if disabled:
                await webhooks.release(session, [d.id for d in claims[i + 1 :]], owner)
        if disabled:
            break
    return attempted


async def dispatch_webhooks(deps: WorkerDeps) -> int:
    """One batch of due deliveries; returns the attempts made."""
    owner = deps.lease_owner()
    async with deps.sessionmaker() as session, session.begin():
        claims = await webhooks.claim_due(
            session, owner=owner, limit=BATCH, per_endpoint=PER_ENDPOINT, lease_seconds=LEASE_SECONDS
        )
    if not claims:
        return 0
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False) as client:

        async def one(group: list[DueDelivery]) -> int:
            async with gate:
                return await _deliver_endpoint(deps, client, owner, group)

        groups = [list(g) for _, g in groupby(claims, key=lambda d: d.endpoint_id)]
        counts = await asyncio.gather(*(one(g) for g in groups))
    return sum(counts)
