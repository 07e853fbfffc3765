"""The `transactional-email` handler: claim with a lease, send through SES outside any
transaction, record the outcome (spec/queues.md). Safe under at-least-once delivery:
a duplicate record finds the row terminal (or leased) and sends nothing."""

import logging
from email.utils import parseaddr
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.campaigns.content import unsubscribe_url
from datamailer_core.campaigns.message import with_unsubscribe
from datamailer_core.contracts import TransactionalEmailV1
from datamailer_core.mail import InvalidMessage, OutgoingEmail, build_ses_request
from datamailer_core.repositories import deliveries, unsubscribe
from datamailer_core.repositories.deliveries import TransactionalDelivery
from datamailer_core.security import hash_token, new_token
from datamailer_core.sending import PermanentSendError, TransientSendError, send_via_ses
from datamailer_workers.deps import WorkerDeps
from datamailer_workers.errors import RetryLater
from datamailer_workers.handlers.shared import adapt_rate, in_transaction

logger = logging.getLogger("datamailer.workers.transactional")

STREAM: Final = "transactional"
MAX_ATTEMPTS_EXCEEDED: Final = "max_attempts_exceeded"


def outgoing_email(delivery: TransactionalDelivery) -> OutgoingEmail:
    """The row as an email. The From display name is the row's own (`Name <address>`),
    else the client's configured name for that sender address."""
    name, address = parseaddr(delivery.from_address)
    display_name = None
    if not name and delivery.sender_email:
        configured_name, configured_address = parseaddr(delivery.sender_email)
        if configured_name and configured_address.lower() == address.lower():
            display_name = configured_name
    return OutgoingEmail(
        from_address=delivery.from_address,
        display_name=display_name,
        to=[delivery.email],
        subject=delivery.subject,
        html_body=delivery.html_body,
        text_body=delivery.text_body,
        reply_to=[delivery.reply_to] if delivery.reply_to else [],
        cc=delivery.cc,
        bcc=delivery.bcc,
        headers=delivery.headers,
    )


async def handle_transactional_email(msg: TransactionalEmailV1, deps: WorkerDeps) -> None:
    delivery_settings = deps.settings.delivery
    metrics = deps.metrics
    message_id = msg.transactional_message_id
    permit = await deps.rate_limiter.acquire(1, priority=True)
    owner = deps.lease_owner()

    secret_key = deps.settings.security.secret_key.get_secret_value()
    unsubscribe_token = new_token()

    async def claim(session: AsyncSession) -> tuple[deliveries.Claim, bool]:
        claimed = await deliveries.claim_transactional(
            session,
            message_id,
            client_id=msg.client_id,
            idempotency_key=msg.idempotency_key,
            owner=owner,
            lease_seconds=delivery_settings.lease_seconds,
            expired_policy=delivery_settings.transactional_expired_lease_policy,
        )
        has_link = claimed.outcome == "claimed" and await unsubscribe.set_message_token(
            session, message_id, owner, hash_token(secret_key, unsubscribe_token)
        )
        return claimed, has_link

    claimed, has_unsubscribe_link = await in_transaction(deps, claim)
    log = {"transactional_message_id": message_id, "outcome": claimed.outcome}
    if claimed.outcome == "in_progress":
        raise RetryLater(f"message {message_id} is leased by another worker", delay=claimed.retry_after)
    if claimed.outcome in ("missing", "terminal"):
        metrics.idempotency_skips.labels(STREAM).inc()
        logger.info("nothing to send", extra={**log, "status": claimed.row_status})
        return
    if claimed.outcome == "suppressed":
        metrics.sends.labels(STREAM, "skipped").inc()
        logger.info("skipped at claim", extra={**log, "reason": claimed.reason})
        return
    if claimed.outcome != "claimed" or claimed.delivery is None:
        metrics.sends.labels(STREAM, "failed").inc()
        logger.warning("failed at claim", extra={**log, "reason": claimed.reason})
        return
    delivery = claimed.delivery

    async def fail(reason: str, error: str | None = None) -> None:
        async def work(session: AsyncSession) -> bool:
            return await deliveries.record_failed(session, message_id, owner, reason, error)

        await in_transaction(deps, work)
        metrics.sends.labels(STREAM, "failed").inc()
        logger.warning("send failed permanently", extra={**log, "reason": reason})

    if delivery.attempt_count > delivery_settings.transactional_max_attempts:
        await fail(MAX_ATTEMPTS_EXCEEDED)
        return
    outgoing = outgoing_email(delivery)
    if has_unsubscribe_link:
        # A message with a category can be unsubscribed from, like a campaign message.
        tracking = deps.settings.tracking
        link = unsubscribe_url(tracking.public_base_url, unsubscribe_token)
        outgoing = with_unsubscribe(outgoing, link, tracking.list_unsubscribe_mailto)
    try:
        request = build_ses_request(
            outgoing,
            configuration_set=deps.settings.ses.configuration_set,
            tags={"transactional_message_id": delivery.id, "client": delivery.client_slug},
        )
    except InvalidMessage as exc:
        await fail(exc.reason, exc.message)
        return

    try:
        result = await send_via_ses(deps.sesv2, request)
    except TransientSendError as exc:
        if exc.throttled:
            metrics.ses_throttles.inc()
            await adapt_rate(deps, permit, throttled=True)
        metrics.sends.labels(STREAM, "retried").inc()
        error = exc.reason

        async def release(session: AsyncSession) -> bool:
            return await deliveries.release(session, message_id, owner, error)

        await in_transaction(deps, release)
        raise RetryLater(f"SES: {exc.reason}") from exc
    except PermanentSendError as exc:
        await fail(exc.code, exc.reason)
        return

    async def sent(session: AsyncSession) -> bool:
        return await deliveries.record_sent(session, message_id, owner, result.message_id)

    if not await in_transaction(deps, sent):
        logger.warning("sent, but the lease was taken over; result not recorded", extra={**log})
    else:
        logger.info("sent", extra={**log, "ses_message_id": result.message_id})
    metrics.sends.labels(STREAM, "sent").inc()
    await adapt_rate(deps, permit, throttled=False)
