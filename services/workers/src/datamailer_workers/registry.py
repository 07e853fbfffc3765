"""Contract name → handler. A queue without an entry here is not consumed by
`datamailer worker all`; its records would otherwise only travel to the DLQ."""

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from datamailer_core.contracts import QUEUE_NAMES, QueueName
from datamailer_workers.deps import WorkerDeps
from datamailer_workers.handlers.campaign import handle_campaign_email
from datamailer_workers.handlers.events import handle_email_event
from datamailer_workers.handlers.ses import handle_ses_notification
from datamailer_workers.handlers.transactional import handle_transactional_email

Handler = Callable[[Any, WorkerDeps], Awaitable[None]]

HANDLERS: Mapping[str, Handler] = {
    "transactional-email": handle_transactional_email,
    "campaign-email": handle_campaign_email,
    "ses-webhooks": handle_ses_notification,
    "email-events": handle_email_event,
}


def handled_queues() -> list[QueueName]:
    return [queue for queue in QUEUE_NAMES if queue in HANDLERS]
