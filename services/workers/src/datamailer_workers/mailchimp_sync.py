"""The Mailchimp sync dispatcher, a job of `datamailer scheduler`.

One run leases due syncs in a short transaction (`FOR UPDATE SKIP LOCKED`), calls
Mailchimp's Marketing API with no database connection held, and records each result in
its own short transaction. An upsert PUTs the member as the contact is now, then POSTs
its tag operations; a delete (erasure) permanently deletes the member. 429, 5xx and
transport errors are retried with the webhook backoff; any other 4xx fails the sync for
good with Mailchimp's reason.
"""

from typing import Any, Final

import httpx

from datamailer_core.mailchimp import base_url, member_status, subscriber_hash
from datamailer_core.repositories import mailchimp
from datamailer_core.repositories.mailchimp import DueSync, Outcome
from datamailer_workers.deps import WorkerDeps

BATCH: Final = 25
MAX_ERROR_CHARS: Final = 500
USER_AGENT: Final = "Datamailer-Mailchimp/1"


class _Failed(Exception):
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


def _reason(response: httpx.Response) -> str:
    """`HTTP 400: Invalid Resource: ...` from Mailchimp's problem body, when it has one."""
    reason = f"HTTP {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("title", "detail") if body.get(k)]
        if parts:
            reason += ": " + ": ".join(parts)
    return reason[:MAX_ERROR_CHARS]


async def _call(
    client: httpx.AsyncClient,
    auth: httpx.Auth,
    method: str,
    url: str,
    body: dict[str, Any],
    *,
    gone_ok: bool = False,
) -> int:
    try:
        response = await client.request(method, url, json=body, auth=auth)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}".strip().rstrip(":")[:MAX_ERROR_CHARS]
        raise _Failed(Outcome(error=error)) from exc
    status = response.status_code
    if 200 <= status < 300 or (gone_ok and status == 404):
        return status
    transient = status == 429 or status >= 500
    raise _Failed(Outcome(status_code=status, error=_reason(response), permanent=not transient))


async def send(client: httpx.AsyncClient, sync: DueSync, override: str | None) -> Outcome:
    """One attempt of one sync; every result is an Outcome."""
    if not sync.enabled:
        return Outcome(skipped=True, error="mailchimp_disabled")
    if not (sync.api_key and sync.list_id):
        return Outcome(skipped=True, error="mailchimp_not_configured")
    # Any user name; the API key is the password.
    auth = httpx.BasicAuth("datamailer", sync.api_key)
    members = f"{base_url(sync.api_key, override)}/lists/{sync.list_id}/members"
    try:
        if sync.action == "delete":
            url = f"{members}/{sync.subscriber_hash}/actions/delete-permanent"
            return Outcome(ok=True, status_code=await _call(client, auth, "POST", url, {}, gone_ok=True))
        if sync.email is None:
            return Outcome(skipped=True, error="contact_erased")
        status, if_new = member_status(
            suppressed=sync.suppressed, unsubscribed=sync.unsubscribed, subscribed=sync.subscribed
        )
        member: dict[str, Any] = {"email_address": sync.email, "status_if_new": if_new}
        if status is not None:
            member["status"] = status
        url = f"{members}/{subscriber_hash(sync.email)}"
        code = await _call(client, auth, "PUT", url, member)
        if sync.tags:
            code = await _call(client, auth, "POST", f"{url}/tags", {"tags": sync.tags})
        return Outcome(ok=True, status_code=code)
    except _Failed as failed:
        return failed.outcome


async def dispatch_mailchimp(deps: WorkerDeps) -> int:
    """One batch of due syncs; returns the syncs acted on."""
    config = deps.settings.mailchimp
    owner = deps.lease_owner()
    # Each sync makes at most two calls, one after the other.
    lease = BATCH * 2 * (config.timeout_seconds + 1) + 30
    async with deps.sessionmaker() as session, session.begin():
        claims = await mailchimp.claim_due(session, owner=owner, limit=BATCH, lease_seconds=lease)
    if not claims:
        return 0
    async with httpx.AsyncClient(
        timeout=config.timeout_seconds, follow_redirects=False, headers={"user-agent": USER_AGENT}
    ) as client:
        for sync in claims:
            outcome = await send(client, sync, config.base_url)
            async with deps.sessionmaker() as session, session.begin():
                await mailchimp.record_outcome(session, sync, owner, outcome)
    return len(claims)
