"""Transactional templates and sends. The send follows api.md's order exactly: validate
the payload, find the active template, replay an idempotency key, resolve the sender,
check `required_context`, render, and only then write (contact, message, event). The
router commits, then publishes; nothing here commits."""

import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_api.deps import AuthContext
from datamailer_api.transactional.schemas import SendIn, TemplateIn
from datamailer_core import policy
from datamailer_core.errors import NotFound, ValidationFailed
from datamailer_core.mail import (
    HEADER_NAME_RE,
    MAX_HEADER_VALUE,
    RESERVED_HEADERS,
    Mailbox,
    has_control,
    parse_mailbox,
)
from datamailer_core.models import Audience, Client, Contact, EmailEvent, EmailTemplate, TransactionalMessage
from datamailer_core.queues import QueuePublisher
from datamailer_core.repositories import contacts, deliveries, templates, transactional
from datamailer_core.senders import SENDER_ID_RE, Sender, normalize_sender_email, resolve_sender
from datamailer_core.templating import (
    Rendered,
    TemplateError,
    missing_context,
    render_message,
    validate_message_templates,
)
from datamailer_core.templating.pool import RenderPool

logger = logging.getLogger(__name__)

# Used with fullmatch (`match` with `$` would let a trailing newline through).
TEMPLATE_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,179}")
CONTEXT_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _template_not_found(key: str) -> NotFound:
    return NotFound(f"no active template {key!r}", fields={"template_key": "not_found"})


# --- templates ----------------------------------------------------------------------


def _required_context(items: Sequence[Any], fields: dict[str, str]) -> list[dict[str, Any]]:
    cleaned: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        name, description = (item, None) if isinstance(item, str) else (None, None)
        if isinstance(item, dict) and set(item) <= {"name", "description"}:
            name, description = item.get("name"), item.get("description")
        valid_description = description is None or (isinstance(description, str) and len(description) <= 1000)
        if not (
            isinstance(name, str)
            and len(name) <= 100
            and CONTEXT_NAME_RE.fullmatch(name)
            and valid_description
        ):
            fields[f"required_context.{i}"] = "invalid"
            continue
        if name in seen:
            fields[f"required_context.{i}"] = "duplicate"
        seen.add(name)
        cleaned.append({"name": name, "description": description})
    return cleaned


async def upsert_template(
    session: AsyncSession, client: Client, key: str, body: TemplateIn
) -> tuple[EmailTemplate, bool]:
    fields: dict[str, str] = {}
    if not TEMPLATE_KEY_RE.fullmatch(key):
        fields["key"] = "invalid"
    if not body.subject.strip():
        fields["subject"] = "required"
    fields.update(validate_message_templates(body.subject, body.html_body, body.text_body))
    required = _required_context(body.required_context, fields)
    configured = {sender["id"] for sender in client.sender_emails}
    if body.default_sender_id is not None and body.default_sender_id not in configured:
        fields["default_sender_id"] = "not_configured"
    if fields:
        raise ValidationFailed("invalid template", fields=fields)
    return await templates.upsert_template(
        session,
        client.id,
        key,
        {
            "name": body.name or key,
            "description": body.description,
            "subject": body.subject,
            "html_body": body.html_body,
            "text_body": body.text_body,
            "required_context": required,
            "example_context": body.example_context,
            "is_active": body.is_active,
            "default_sender_id": body.default_sender_id,
        },
    )


async def get_template(session: AsyncSession, client: Client, key: str) -> EmailTemplate:
    found = await templates.get_template(session, client.id, key) if TEMPLATE_KEY_RE.fullmatch(key) else None
    if found is None:
        raise NotFound(f"no template {key!r}", fields={"template_key": "not_found"})
    return found


# --- send ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """The validated addressing of a send."""

    email: str
    reply_to: str | None
    cc: list[str]
    bcc: list[str]
    headers: dict[str, str]


@dataclass(frozen=True)
class Preview:
    """What a dry run would have stored."""

    envelope: Envelope
    sender: Sender
    template_key: str
    idempotency_key: str | None
    rendered: Rendered
    blocked_reason: str | None


@dataclass(frozen=True)
class SendResult:
    message: TransactionalMessage | None = None
    preview: Preview | None = None
    idempotent_replay: bool = False

    @property
    def blocked_reason(self) -> str | None:
        if self.message is not None and self.message.status == "skipped":
            return self.message.status_reason or "suppressed"
        return None

    @property
    def should_publish(self) -> bool:
        return self.message is not None and not self.idempotent_replay and self.message.status == "queued"


def _address(value: str, path: str, fields: dict[str, str]) -> str:
    normalized = normalize_sender_email(value)
    if normalized is None:
        fields[path] = "invalid"
        return value
    return normalized


def _headers(headers: dict[str, str], fields: dict[str, str]) -> dict[str, str]:
    seen: set[str] = set()
    for name, value in headers.items():
        path = f"headers.{name}" if name.isprintable() and len(name) <= 100 else "headers"
        if not HEADER_NAME_RE.fullmatch(name):
            fields[path] = "invalid"
        elif name.lower() in RESERVED_HEADERS:
            fields[path] = "reserved"
        elif name.lower() in seen:
            fields[path] = "duplicate"
        elif has_control(value):
            fields[path] = "invalid"
        elif len(value) > MAX_HEADER_VALUE:
            fields[path] = "too_long"
        seen.add(name.lower())
    return dict(headers)


def validate_envelope(body: SendIn) -> Envelope:
    fields: dict[str, str] = {}
    email = body.email.strip()
    if (
        has_control(body.email)
        or normalize_sender_email(email) is None
        or parse_mailbox(email) != Mailbox("", email)
    ):
        # One bare address: a display name or a list is not a recipient.
        fields["email"] = "invalid"
    if body.from_email is not None and not SENDER_ID_RE.fullmatch(body.from_email):
        fields["from_email"] = "invalid"
    reply_to = None if body.reply_to is None else _address(body.reply_to, "reply_to", fields)
    cc = [_address(a, f"cc.{i}", fields) for i, a in enumerate(body.cc)]
    bcc = [_address(a, f"bcc.{i}", fields) for i, a in enumerate(body.bcc)]
    headers = _headers(body.headers, fields)
    if body.category_tag is not None and not body.audience:
        fields["audience"] = "required"  # the client, when omitted, is the key's own
    if fields:
        raise ValidationFailed("invalid send request", fields=fields)
    return Envelope(email=email, reply_to=reply_to, cc=cc, bcc=bcc, headers=headers)


@dataclass(frozen=True)
class Suppression:
    """What a send reads of an address's suppression."""

    hard_bounced: bool
    complained: bool
    global_unsubscribed: bool


def _contact_suppression(contact: Contact) -> Suppression:
    return Suppression(
        hard_bounced=contact.hard_bounced_at is not None,
        complained=contact.complained_at is not None,
        global_unsubscribed=contact.global_unsubscribed_at is not None,
    )


async def suppression_without_writing(
    session: AsyncSession, organization_id: int, email: str
) -> tuple[Contact | None, Suppression]:
    """The address's contact in the organization, if any, and its suppression, read
    without writing (a dry run, a campaign test send). With no contact yet: what the one a
    send would create inherits from an erased address."""
    contact = await contacts.get_contact_by_email(session, organization_id, email)
    if contact is not None:
        return contact, _contact_suppression(contact)
    reasons = set(await transactional.suppression_reasons(session, organization_id, email))
    return None, Suppression(
        hard_bounced="hard_bounce" in reasons,
        complained="complaint" in reasons,
        global_unsubscribed=bool(reasons & {"global_unsubscribe", "manual"}),
    )


async def _decide(
    session: AsyncSession,
    contact: Contact | None,
    suppression: Suppression,
    body: SendIn,
    audience: Audience | None,
    client: Client,
) -> str | None:
    category_off = (
        body.category_tag is not None
        and audience is not None
        and contact is not None
        and await transactional.category_disabled(
            session, contact.id, audience.id, client.id, body.category_tag
        )
    )
    return policy.transactional_block_reason(
        hard_bounced=suppression.hard_bounced,
        complained=suppression.complained,
        global_unsubscribed=suppression.global_unsubscribed,
        category_tag=body.category_tag,
        category_enabled=not category_off,
    )


async def render(pool: RenderPool, template: EmailTemplate, context: dict[str, Any]) -> Rendered:
    try:
        # In the pool's processes: whatever a template does, the loop keeps serving.
        return await pool.run(
            render_message, template.subject, template.html_body, template.text_body, context
        )
    except TemplateError as exc:
        raise exc.as_validation_error() from None


async def send(session: AsyncSession, auth: AuthContext, body: SendIn, pool: RenderPool) -> SendResult:
    client = auth.client
    envelope = validate_envelope(body)
    audience = None
    if body.audience is not None:
        audience = await transactional.find_audience(session, auth.organization.id, body.audience)
        if audience is None:
            raise ValidationFailed("unknown audience", fields={"audience": "not_found"})

    template = await templates.get_template(session, client.id, body.template_key, active_only=True)
    if template is None:
        raise _template_not_found(body.template_key)

    if body.idempotency_key is not None and not body.dry_run:
        existing = await transactional.get_message_by_idempotency_key(
            session, client.id, body.idempotency_key
        )
        if existing is not None:
            return SendResult(message=existing, idempotent_replay=True)

    sender = resolve_sender(client, body.from_email, template.default_sender_id)
    missing = missing_context([item["name"] for item in template.required_context], body.context)
    if missing:
        raise ValidationFailed(
            "required context is missing", fields={f"context.{name}": "required" for name in missing}
        )
    rendered = await render(pool, template, body.context)

    if body.dry_run:
        found, suppression = await suppression_without_writing(
            session, client.organization_id, envelope.email
        )
        reason = await _decide(session, found, suppression, body, audience, client)
        preview = Preview(envelope, sender, template.key, body.idempotency_key, rendered, reason)
        return SendResult(preview=preview)

    contact, _ = await contacts.get_or_create_contact(session, client.organization_id, envelope.email)
    reason = await _decide(session, contact, _contact_suppression(contact), body, audience, client)
    idempotency_key = body.idempotency_key or uuid.uuid4().hex
    message = await transactional.create_message(
        session,
        client_id=client.id,
        contact_id=contact.id,
        audience_id=audience.id if audience is not None else None,
        template_id=template.id,
        template_key=template.key,
        email=envelope.email,
        sender_id=sender.id,
        from_address=sender.email,
        reply_to=envelope.reply_to,
        cc=envelope.cc,
        bcc=envelope.bcc,
        headers=envelope.headers,
        category_tag=body.category_tag,
        subject=rendered.subject,
        html_body=rendered.html_body,
        text_body=rendered.text_body,
        status="skipped" if reason else "queued",
        status_reason=reason,
        idempotency_key=idempotency_key,
        metadata_=body.metadata,
    )
    if message is None:
        # A concurrent request with the same key created it first.
        existing = await transactional.get_message_by_idempotency_key(session, client.id, idempotency_key)
        assert existing is not None
        return SendResult(message=existing, idempotent_replay=True)
    if reason:
        await transactional.append_message_event(session, message, "skipped", {"reason": reason})
    else:
        await transactional.append_message_event(session, message, "queued", {"template_key": template.key})
    return SendResult(message=message)


async def publish(publisher: QueuePublisher, message: TransactionalMessage) -> bool:
    """Send the queue message for a committed row. Any failure leaves the row `queued`
    for the sweeper; the caller answers 202 with `enqueued: false`."""
    contract = deliveries.queue_message(message)
    try:
        await publisher.publish(contract)
    except Exception:  # the queue is down or misconfigured: the sweeper repairs it
        logger.warning("transactional message %s not enqueued", message.id, exc_info=True)
        return False
    return True


async def record_enqueued(session: AsyncSession, message: TransactionalMessage) -> None:
    await transactional.mark_enqueued(session, message.id)


async def get_message(
    session: AsyncSession, client: Client, message_id: int
) -> tuple[TransactionalMessage, Sequence[EmailEvent]]:
    message = await transactional.get_message(session, client.id, message_id)
    if message is None:
        raise NotFound("no such message", fields={"message_id": "not_found"})
    return message, await transactional.message_events(session, message.id)
