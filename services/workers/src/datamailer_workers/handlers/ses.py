"""The `ses-webhooks` handler: SES notifications (bounces, complaints, deliveries, ...)
applied once per SNS MessageId (`repositories.ses_feedback`). Raw SNS envelopes are
normalized while the record is decoded (`contracts.parse_message`), so the handler
only ever sees the contract. An uncorrelated or duplicate notification is acknowledged
with nothing else changed."""

import logging
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.contracts import SesWebhookV1
from datamailer_core.repositories import ses_feedback
from datamailer_workers.deps import WorkerDeps
from datamailer_workers.handlers.shared import in_transaction

logger = logging.getLogger("datamailer.workers.ses")

STREAM: Final = "ses-webhooks"


async def handle_ses_notification(msg: SesWebhookV1, deps: WorkerDeps) -> None:
    outcome = await apply_ses_notification(msg, deps)
    if outcome == "duplicate":
        deps.metrics.idempotency_skips.labels(STREAM).inc()
    logger.debug("ses notification", extra={"notification_type": msg.notification_type, "outcome": outcome})


async def apply_ses_notification(msg: SesWebhookV1, deps: WorkerDeps) -> ses_feedback.Outcome:
    delivery = deps.settings.delivery
    guard = ses_feedback.RateGuard(
        max_bounce_rate=delivery.campaign_max_bounce_rate,
        max_complaint_rate=delivery.campaign_max_complaint_rate,
        min_sample=delivery.campaign_rate_min_sample,
    )

    async def work(session: AsyncSession) -> ses_feedback.Outcome:
        return await ses_feedback.apply_notification(session, msg, guard)

    return await in_transaction(deps, work)
