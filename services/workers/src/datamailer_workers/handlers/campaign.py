"""The `campaign-email` handler: a bounded batch of recipient ids of one campaign.

The batch is worked in parts no larger than the send-rate bucket. For each part: take
the rate tokens (non-priority: campaign mail never queues ahead of transactional mail),
claim the part with a lease in one statement (which re-checks that the campaign is
still `sending` and each contact still eligible), build and send the messages outside
any transaction, record every outcome in one short transaction.

Sending is decided once per campaign (`campaigns.bulk.plan_send`): `bulk` sends the
campaign's inline template with `SendBulkEmail`, 50 destinations per call, and maps
each entry's status to its recipient (SUCCESS sent with its MessageId; throttled,
transient, quota and paused statuses retried for those recipients only; the others
failed with the status); `per_recipient` renders and sends one `SendEmail` each. A pause or cancel
therefore stops the batch at the next part; recipients left `pending` are fed again on
resume. A duplicate record finds its rows terminal or leased and sends nothing.
"""

import asyncio
import logging
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.campaigns.bulk import (
    THROTTLED_STATUSES,
    BulkRecipient,
    BulkTemplate,
    bulk_entry,
    bulk_request,
    chunks,
    entry_outcome,
    plan_send,
)
from datamailer_core.campaigns.message import CampaignContent, campaign_content, render_recipient_message
from datamailer_core.contracts import CampaignEmailV1
from datamailer_core.errors import ValidationFailed
from datamailer_core.mail import InvalidMessage, build_ses_request
from datamailer_core.models import Campaign
from datamailer_core.repositories import campaign_sends
from datamailer_core.repositories.campaign_sends import (
    BatchClaim,
    ClaimedRecipient,
    Outcomes,
    TokenPair,
)
from datamailer_core.security import hash_token, new_token
from datamailer_core.sending import (
    MAX_REASON_LENGTH,
    PermanentSendError,
    TransientSendError,
    send_bulk_via_ses,
    send_via_ses,
)
from datamailer_core.templating import TemplateError
from datamailer_workers.deps import WorkerDeps
from datamailer_workers.errors import RetryLater
from datamailer_workers.handlers.shared import adapt_rate, in_transaction

logger = logging.getLogger("datamailer.workers.campaign")

STREAM: Final = "campaign"
SENDER_NOT_CONFIGURED: Final = "sender_not_configured"


def _tokens(secret_key: str, n: int) -> list[TokenPair]:
    pairs = []
    for _ in range(n):
        tracking, unsubscribe = new_token(), new_token()
        pairs.append(
            TokenPair(
                tracking, hash_token(secret_key, tracking), unsubscribe, hash_token(secret_key, unsubscribe)
            )
        )
    return pairs


def _build(
    content: CampaignContent,
    configuration_set: str | None,
    recipients: list[ClaimedRecipient],
    outcomes: Outcomes,
) -> dict[int, dict[str, Any]]:
    """SES requests by recipient id; a message that cannot be built is failed in `outcomes`."""
    requests = {}
    tags = {"campaign_id": content.campaign_id, "client": content.client_slug}
    for recipient in recipients:
        try:
            email = render_recipient_message(
                content,
                email=recipient.email,
                tracking_token=recipient.tracking_token,
                unsubscribe_token=recipient.unsubscribe_token,
            )
            requests[recipient.id] = build_ses_request(email, configuration_set=configuration_set, tags=tags)
        except TemplateError as exc:
            outcomes.failed[recipient.id] = (exc.reason, str(exc))
        except InvalidMessage as exc:
            outcomes.failed[recipient.id] = (exc.reason, exc.message)
    return requests


async def _send(deps: WorkerDeps, recipient_id: int, request: dict[str, Any], outcomes: Outcomes) -> bool:
    """Send one message and record its outcome in `outcomes`; True when SES throttled."""
    try:
        result = await send_via_ses(deps.sesv2, request)
    except TransientSendError as exc:
        outcomes.retry[recipient_id] = exc.reason
        return exc.throttled
    except PermanentSendError as exc:
        outcomes.failed[recipient_id] = (exc.code, exc.reason)
    else:
        outcomes.sent[recipient_id] = result.message_id
    return False


Batch = tuple[list[int], list[dict[str, Any]]]


def _build_bulk(
    content: CampaignContent,
    template: BulkTemplate,
    configuration_set: str | None,
    recipients: list[ClaimedRecipient],
    outcomes: Outcomes,
) -> tuple[dict[str, Any], list[Batch]]:
    """The request shared by the part's calls and its batches of at most 50 entries
    (recipient ids and entries); what cannot be built is failed in `outcomes`."""
    tags = {"campaign_id": content.campaign_id, "client": content.client_slug}
    try:
        shared = bulk_request(content, template, configuration_set=configuration_set, tags=tags)
    except InvalidMessage as exc:
        outcomes.failed.update({r.id: (exc.reason, exc.message) for r in recipients})
        return {}, []
    ids, entries = [], []
    for r in recipients:
        try:
            entries.append(
                bulk_entry(
                    content, template, BulkRecipient(r.id, r.email, r.tracking_token, r.unsubscribe_token)
                )
            )
        except InvalidMessage as exc:
            outcomes.failed[r.id] = (exc.reason, exc.message)
        else:
            ids.append(r.id)
    return shared, list(zip(chunks(ids), chunks(entries), strict=True))


async def _send_bulk(deps: WorkerDeps, shared: dict[str, Any], batch: Batch, outcomes: Outcomes) -> bool:
    """One SendBulkEmail call; each entry's outcome in `outcomes`. True when throttled."""
    ids, entries = batch
    try:
        results = await send_bulk_via_ses(deps.sesv2, {**shared, "BulkEmailEntries": entries})
    except TransientSendError as exc:
        outcomes.retry.update(dict.fromkeys(ids, exc.reason))
        return exc.throttled
    except PermanentSendError as exc:
        outcomes.failed.update(dict.fromkeys(ids, (exc.code, exc.reason)))
        return False
    throttled = False
    for recipient_id, result in zip(ids, results, strict=True):
        status = str(result.get("Status") or "FAILED")
        error = str(result.get("Error") or "")[:MAX_REASON_LENGTH] or None
        outcome = entry_outcome(status)
        if outcome == "sent" and result.get("MessageId"):
            outcomes.sent[recipient_id] = str(result["MessageId"])
        elif outcome == "sent":
            outcomes.retry[recipient_id] = "MissingMessageId: SES answered SUCCESS without a MessageId"
        elif outcome == "retry":
            outcomes.retry[recipient_id] = f"{status}: {error}" if error else status
            throttled = throttled or status in THROTTLED_STATUSES
        else:
            outcomes.failed[recipient_id] = (status, error)
    return throttled


async def _send_part(deps: WorkerDeps, content: CampaignContent, claim: BatchClaim) -> tuple[Outcomes, bool]:
    outcomes = Outcomes(sent={}, failed={}, retry={})
    template = plan_send(content).template
    if template is not None:
        shared, batches = await asyncio.to_thread(
            _build_bulk, content, template, deps.settings.ses.configuration_set, claim.claimed, outcomes
        )
        throttled = await asyncio.gather(*(_send_bulk(deps, shared, batch, outcomes) for batch in batches))
        return outcomes, any(throttled)
    # Rendering is CPU work: one thread hop per part keeps the loop responsive. Not in
    # the API's render pool (`templating.pool`): the sandbox bounds every value, so no
    # single step holds the interpreter for long and a render costs at most ~1 s and tens
    # of MB; these templates were accepted (and usually previewed) before queueing; and
    # pickling the content per batch would cost this hot path more than it protects.
    requests = await asyncio.to_thread(
        _build, content, deps.settings.ses.configuration_set, claim.claimed, outcomes
    )
    throttled = await asyncio.gather(
        *(_send(deps, rid, request, outcomes) for rid, request in requests.items())
    )
    return outcomes, any(throttled)


def part_size(deps: WorkerDeps, batch: int) -> int:
    """Recipients per claim: never more than the rate bucket holds (else a
    non-priority taker would wait forever)."""
    return max(1, min(batch, int(deps.rate_limiter.bucket_size)))


async def _work_part(
    deps: WorkerDeps,
    campaign: Campaign,
    content: CampaignContent | None,
    part: list[int],
    log: dict[str, object],
) -> None:
    permit = await deps.rate_limiter.acquire(len(part), priority=False)
    secret_key = deps.settings.security.secret_key.get_secret_value()
    tokens = _tokens(secret_key, len(part))
    owner = deps.lease_owner()
    lease = deps.settings.delivery.lease_seconds

    async def claim(session: AsyncSession) -> BatchClaim:
        return await campaign_sends.claim_recipients(
            session, campaign, part, tokens, owner=owner, lease_seconds=lease
        )

    claimed = await in_transaction(deps, claim)
    if claimed.skipped:
        deps.metrics.sends.labels(STREAM, "skipped").inc(len(claimed.skipped))
    if not claimed.claimed:
        return
    if content is None:
        failed: dict[int, tuple[str, str | None]] = {
            r.id: (SENDER_NOT_CONFIGURED, None) for r in claimed.claimed
        }
        outcomes, throttled = Outcomes(sent={}, failed=failed, retry={}), False
    else:
        outcomes, throttled = await _send_part(deps, content, claimed)

    async def record(session: AsyncSession) -> int:
        return await campaign_sends.record_outcomes(session, campaign, owner, outcomes)

    if await in_transaction(deps, record) < len(outcomes.sent):
        logger.warning("sent, but some leases were taken over; not recorded", extra=log)
    for outcome, recipients in (
        ("sent", outcomes.sent),
        ("failed", outcomes.failed),
        ("retried", outcomes.retry),
    ):
        if recipients:
            deps.metrics.sends.labels(STREAM, outcome).inc(len(recipients))
    if throttled:
        deps.metrics.ses_throttles.inc()
    await adapt_rate(deps, permit, throttled=throttled)
    if outcomes.retry:
        raise RetryLater(f"SES: {next(iter(outcomes.retry.values()))} ({len(outcomes.retry)} recipients)")


async def handle_campaign_email(msg: CampaignEmailV1, deps: WorkerDeps) -> None:
    async with deps.sessionmaker() as session:
        found = await campaign_sends.load_sending_campaign(session, msg.campaign_id)
    log: dict[str, object] = {"campaign_id": msg.campaign_id, "batch_id": msg.batch_id}
    if found is None or found.campaign.status != "sending":
        # Paused: its recipients stay pending and are fed again on resume. Cancelled or
        # gone: nothing more is sent.
        deps.metrics.idempotency_skips.labels(STREAM).inc()
        logger.info("campaign not sending", extra={**log, "status": found and found.campaign.status})
        return
    try:
        content: CampaignContent | None = campaign_content(found.campaign, found.client, deps.settings)
    except ValidationFailed:
        content = None  # every claimed recipient fails with `sender_not_configured`
    ids = list(dict.fromkeys(msg.campaign_recipient_ids))
    size = part_size(deps, len(ids))
    for start in range(0, len(ids), size):
        await _work_part(deps, found.campaign, content, ids[start : start + size], log)
