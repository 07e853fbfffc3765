"""Transactional send to a recipient list: one message per distinct active member of the
list and every list under it (what GET counts as `member_count`), rendered once from the
shared context. Each member's idempotency key is the request's key plus its contact id,
so a repeat creates and publishes nothing new and answers the same outcome. Each member's
delivery is decided by `policy.transactional_block_reason`, as a single send decides it."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_api.audience import service as contacts
from datamailer_api.deps import AuthContext
from datamailer_api.lists import service as lists
from datamailer_api.lists.schemas import ListSendIn
from datamailer_api.transactional.service import TEMPLATE_KEY_RE, render
from datamailer_core import policy
from datamailer_core.errors import NotFound, ValidationFailed
from datamailer_core.models.lists import ROOT_KEY
from datamailer_core.queues import QueuePublisher
from datamailer_core.repositories import deliveries, list_sends, templates
from datamailer_core.repositories import recipient_lists as repo
from datamailer_core.senders import resolve_sender
from datamailer_core.templating import missing_context
from datamailer_core.templating.pool import RenderPool

logger = logging.getLogger(__name__)

# Members per call: a larger list is refused (400 `too_many_members`) before anything is
# written; split it into sublists and send to each.
MAX_LIST_SEND_MEMBERS = 10_000
SQS_BATCH = 10


def member_key(base: str, contact_id: int) -> str:
    return f"{base}:contact-{contact_id}"


@dataclass(frozen=True)
class ListSendResult:
    outcomes: list[list_sends.Outcome]
    created_ids: set[int]


async def send(
    session: AsyncSession, auth: AuthContext, list_key: str, body: ListSendIn, pool: RenderPool
) -> ListSendResult:
    """Checks everything before writing (list, template, sender, context, the bound);
    then inserts every member's message set-based. Nothing here commits."""
    key = lists.check_list_key(list_key, writable=False)
    scope = await contacts.resolve_scope(session, auth, body.audience, body.client)
    list_scope = lists.list_scope(scope)
    if key != ROOT_KEY and await repo.get_list(session, list_scope, key) is None:
        raise NotFound("recipient list not found", fields={"list_key": "not_found"})
    if not TEMPLATE_KEY_RE.fullmatch(body.template_key):
        raise ValidationFailed("invalid template key", fields={"template_key": "invalid"})
    client = auth.client
    template = await templates.get_template(session, client.id, body.template_key, active_only=True)
    if template is None:
        raise NotFound(f"no active template {body.template_key!r}", fields={"template_key": "not_found"})
    sender = resolve_sender(client, body.from_email, template.default_sender_id)
    missing = missing_context([item["name"] for item in template.required_context], body.context)
    if missing:
        raise ValidationFailed(
            "required context is missing", fields={f"context.{name}": "required" for name in missing}
        )
    rendered = await render(pool, template, body.context)

    found = await list_sends.targets(session, list_scope, key, body.category_tag, MAX_LIST_SEND_MEMBERS + 1)
    if len(found) > MAX_LIST_SEND_MEMBERS:
        raise ValidationFailed(
            f"the list has more than {MAX_LIST_SEND_MEMBERS} members; send to its sublists",
            fields={"list_key": "too_many_members"},
        )
    planned = [
        list_sends.Planned(
            contact_id=t.contact_id,
            email=t.email,
            idempotency_key=member_key(body.idempotency_key, t.contact_id),
            reason=policy.transactional_block_reason(
                hard_bounced=t.hard_bounced,
                complained=t.complained,
                global_unsubscribed=t.global_unsubscribed,
                category_tag=body.category_tag,
                category_enabled=not t.category_off,
            ),
        )
        for t in found
    ]
    created = await list_sends.create_messages(
        session,
        list_scope,
        planned,
        {
            "template_id": template.id,
            "template_key": template.key,
            "sender_id": sender.id,
            "from_address": sender.email,
            "category_tag": body.category_tag,
            "subject": rendered.subject,
            "html_body": rendered.html_body,
            "text_body": rendered.text_body,
            "metadata": {**body.metadata, "list_key": key},
        },
    )
    outcomes = await list_sends.outcomes(session, client.id, [p.idempotency_key for p in planned])
    return ListSendResult(outcomes=outcomes, created_ids=set(created))


async def publish(publisher: QueuePublisher, rows: Sequence[list_sends.Outcome]) -> list[int]:
    """Ten per SendMessageBatch; stops at the first failure (the sweeper publishes the
    rest, still `queued`). The ids the queue accepted are returned."""
    accepted: list[int] = []
    for start in range(0, len(rows), SQS_BATCH):
        chunk = rows[start : start + SQS_BATCH]
        try:
            await publisher.publish_batch([deliveries.queue_message(r) for r in chunk])
        except Exception:  # the queue is down or misconfigured: the sweeper repairs it
            logger.warning("list send: %d messages not enqueued", len(rows) - start, exc_info=True)
            break
        accepted.extend(r.id for r in chunk)
    return accepted


async def record_enqueued(session: AsyncSession, ids: Sequence[int]) -> None:
    """Bookkeeping only: the messages are on the queue whatever happens here."""
    try:
        await list_sends.mark_enqueued(session, ids)
        await session.commit()
    except SQLAlchemyError:
        logger.warning("list send: could not record enqueued_at", exc_info=True)
        await session.rollback()
