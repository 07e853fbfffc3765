import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from datamailer_api.deps import CurrentClient
from datamailer_api.rendering import RenderPoolDep
from datamailer_api.transactional import service
from datamailer_api.transactional.schemas import (
    DeliveryDecisionOut,
    DryRunOut,
    EventOut,
    MessageOut,
    MessageStatusOut,
    MessageStatusResponse,
    RenderedOut,
    SendIn,
    SendOut,
    SuppressedErrorOut,
    SuppressedOut,
    TemplateEnvelope,
    TemplateIn,
    TemplateOut,
    TemplateUpsertOut,
)
from datamailer_core.models import EmailTemplate, TransactionalMessage
from datamailer_web.app import PublisherDep, SessionDep
from datamailer_web.errors import error_responses

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/transactional", tags=["transactional"], responses=error_responses(401, 403))

TemplateKey = Annotated[
    str,
    Path(
        max_length=180,
        description="The template key, e.g. `password-reset`.",
        json_schema_extra={"pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,179}$"},
    ),
]
MessageId = Annotated[int, Path(gt=0, le=2**63 - 1)]


def _template_out(template: EmailTemplate) -> TemplateOut:
    return TemplateOut.model_validate(template, from_attributes=True)


@router.put(
    "/templates/{key}",
    response_model=TemplateUpsertOut,
    responses={201: {"model": TemplateUpsertOut, "description": "Created"}, **error_responses(400, 413, 415)},
)
async def put_template(
    key: TemplateKey, body: TemplateIn, auth: CurrentClient, session: SessionDep, response: Response
) -> TemplateUpsertOut:
    """Create (201) or replace (200) a template. Parts that do not compile, or are over
    100 KB, are field errors (`html_body: invalid_template`, `subject: too_long`)."""
    auth.require_client(body.client)
    template, created = await service.upsert_template(session, auth.client, key, body)
    await session.commit()
    response.status_code = 201 if created else 200
    return TemplateUpsertOut(template=_template_out(template), created=created)


@router.get("/templates/{key}", response_model=TemplateEnvelope, responses=error_responses(404))
async def get_template(
    key: TemplateKey, auth: CurrentClient, session: SessionDep, client: str | None = None
) -> TemplateEnvelope:
    auth.require_client(client)
    return TemplateEnvelope(template=_template_out(await service.get_template(session, auth.client, key)))


def _message_out(message: TransactionalMessage) -> MessageOut:
    return MessageOut(
        id=message.id,
        email=message.email,
        from_email=message.sender_id,
        from_email_address=message.from_address,
        reply_to=message.reply_to,
        cc=message.cc,
        bcc=message.bcc,
        status=message.status,
        template_key=message.template_key,
        idempotency_key=message.idempotency_key,
        created_at=message.created_at,
    )


def _dry_run_out(preview: service.Preview) -> DryRunOut:
    envelope, rendered = preview.envelope, preview.rendered
    return DryRunOut(
        message=MessageOut(
            id=None,
            email=envelope.email,
            from_email=preview.sender.id,
            from_email_address=preview.sender.email,
            reply_to=envelope.reply_to or "",  # Datamailer's dry run answers "" for none
            cc=envelope.cc,
            bcc=envelope.bcc,
            status="skipped" if preview.blocked_reason else "queued",
            template_key=preview.template_key,
            idempotency_key=preview.idempotency_key,
            created_at=None,
        ),
        idempotent_replay=False,
        enqueued=False,
        rendered=RenderedOut(
            subject=rendered.subject, html_body=rendered.html_body, text_body=rendered.text_body
        ),
        would_deliver=preview.blocked_reason is None,
        delivery_decision=DeliveryDecisionOut(
            allowed=preview.blocked_reason is None, reason=preview.blocked_reason or ""
        ),
    )


def _json(model: Any, status: int) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


@router.post(
    "/send",
    status_code=202,
    response_model=SendOut,
    responses={
        200: {"model": DryRunOut, "description": "Dry run: rendered, nothing stored or sent"},
        202: {"model": SendOut, "description": "Accepted (or an idempotent replay)"},
        409: {"model": SuppressedOut, "description": "Blocked for this contact; stored as skipped"},
        **error_responses(400, 404, 413, 415),
    },
)
async def send(
    body: SendIn, auth: CurrentClient, session: SessionDep, publisher: PublisherDep, pool: RenderPoolDep
) -> Any:
    """Send one transactional message. Checked in this order: payload, active template
    (404), idempotency key (replay), sender, `required_context`; then the contact is
    upserted and delivery decided. The row is committed before the queue message."""
    auth.require_client(body.client)
    result = await service.send(session, auth, body, pool)
    if result.preview is not None:
        return _json(_dry_run_out(result.preview), 200)
    message = result.message
    assert message is not None
    await session.commit()
    enqueued = False
    if result.should_publish:
        enqueued = await service.publish(publisher, message)
        if enqueued:
            await _record_enqueued(session, message)
    logger.info(
        "transactional message accepted",
        extra={
            "transactional_message_id": message.id,
            "status": message.status,
            "enqueued": enqueued,
            "idempotent_replay": result.idempotent_replay,
        },
    )
    out = SendOut(
        message=_message_out(message), idempotent_replay=result.idempotent_replay, enqueued=enqueued
    )
    if (reason := result.blocked_reason) is not None:
        error = SuppressedErrorOut(message=f"not sent to this contact: {reason}", reason=reason)
        return _json(SuppressedOut(**out.model_dump(), error=error), 409)
    return out


async def _record_enqueued(session: SessionDep, message: TransactionalMessage) -> None:
    # Bookkeeping only: the message is on the queue whatever happens here.
    try:
        await service.record_enqueued(session, message)
        await session.commit()
    except SQLAlchemyError:
        logger.warning("could not record enqueued_at for message %s", message.id, exc_info=True)
        await session.rollback()


@router.get(
    "/messages/{message_id}", response_model=MessageStatusResponse, responses=error_responses(400, 404)
)
async def get_message(
    message_id: MessageId, auth: CurrentClient, session: SessionDep
) -> MessageStatusResponse:
    """The message and its events, oldest first. Another client's message is 404."""
    message, events = await service.get_message(session, auth.client, message_id)
    return MessageStatusResponse(
        message=MessageStatusOut(
            id=message.id,
            email=message.email,
            subject=message.subject,
            status=message.status,
            status_reason=message.status_reason,
            template_key=message.template_key,
            idempotency_key=message.idempotency_key,
            from_email=message.sender_id,
            contact_id=message.contact_id,
            ses_message_id=message.ses_message_id,
            created_at=message.created_at,
            updated_at=message.updated_at,
        ),
        events=[
            EventOut(event_type=e.event_type, created_at=e.created_at, metadata=e.metadata_) for e in events
        ],
    )
