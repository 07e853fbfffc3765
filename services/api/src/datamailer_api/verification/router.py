"""`POST /api/subscriptions/verification-email`: double opt-in. The contact gets a
`pending` subscription to this client (unless it has one), a verification link
(`{PUBLIC_BASE_URL}/verify/{token}`, valid for three days, only its hash stored) and a
transactional email from the client's own template, whose context gets `verify_url`.
Opening the link (tracking service) confirms the subscription."""

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from datamailer_api.audience import service as audience_service
from datamailer_api.deps import CurrentClient
from datamailer_api.rendering import RenderPoolDep
from datamailer_api.transactional import service as transactional_service
from datamailer_api.transactional.router import _message_out, _record_enqueued
from datamailer_api.transactional.schemas import (
    SENDER_ID_PATTERN,
    EmailText,
    JsonObject,
    MessageOut,
    SendIn,
    SuppressedErrorOut,
    Text,
)
from datamailer_core.errors import Conflict
from datamailer_core.repositories import audience_queries, transactional, verification
from datamailer_core.repositories.audience import ContactInput, apply_contacts
from datamailer_core.repositories.contacts import normalize_email
from datamailer_web.app import PublisherDep, SessionDep, SettingsDep
from datamailer_web.errors import error_responses

router = APIRouter(prefix="/api/subscriptions", tags=["subscriptions"])


class VerificationEmailIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "email": "ada@example.com",
                    "audience": "newsletter",
                    "client": "app",
                    "template_key": "confirm-subscription",
                    "context": {"first_name": "Ada"},
                }
            ]
        },
    )
    email: EmailText = Field(max_length=320)
    audience: Text = Field(min_length=1, max_length=100)
    client: Text = Field(min_length=1, max_length=100, description="The client slug; must be the key's own.")
    template_key: Text = Field(
        min_length=1, max_length=180, description="A transactional template; its context gets `verify_url`."
    )
    context: JsonObject = Field(default_factory=dict)
    from_email: Text | None = Field(
        default=None,
        description="A sender id (not an address).",
        json_schema_extra={"pattern": SENDER_ID_PATTERN},
    )
    idempotency_key: Text | None = Field(
        default=None, min_length=1, max_length=255, description="Repeating it returns the first email."
    )


class VerificationEmailOut(BaseModel):
    message: MessageOut
    idempotent_replay: bool
    enqueued: bool
    expires_at: datetime | None = Field(description="When the link stops working (null on a replay).")


class VerificationSuppressedOut(VerificationEmailOut):
    error: SuppressedErrorOut


class ErrorDetailOut(BaseModel):
    code: str = Field(examples=["already_verified"])
    message: str
    fields: dict[str, str]


class ErrorOut(BaseModel):
    """The error envelope (`already_verified`)."""

    error: ErrorDetailOut


@router.post(
    "/verification-email",
    status_code=202,
    response_model=VerificationEmailOut,
    responses={
        202: {"model": VerificationEmailOut, "description": "Accepted (or an idempotent replay)"},
        409: {
            "model": VerificationSuppressedOut | ErrorOut,
            "description": "`already_verified`, or blocked for this contact (stored as skipped)",
        },
        **error_responses(400, 401, 403, 404, 413, 415),
    },
)
async def send_verification_email(
    body: VerificationEmailIn,
    auth: CurrentClient,
    session: SessionDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    pool: RenderPoolDep,
) -> Any:
    """Send a double opt-in email: 202 with the message; 409 `already_verified` when the
    subscription is already subscribed and verified. Nothing is written for a rejected
    request (unknown template, missing context, ...)."""
    scope = await audience_service.resolve_scope(session, auth, body.audience, body.client)
    email = audience_service.require_email(body.email)
    if body.idempotency_key is not None:
        existing = await transactional.get_message_by_idempotency_key(
            session, auth.client.id, body.idempotency_key
        )
        if existing is not None:
            return VerificationEmailOut(
                message=_message_out(existing), idempotent_replay=True, enqueued=False, expires_at=None
            )
    view = await audience_queries.view_contact(
        session, audience_id=scope.audience.id, client_id=scope.client_id, email=normalize_email(email)
    )
    if view is not None and view.client_sub is not None:
        if view.client_sub.status == "subscribed" and view.client_sub.verified_at is not None:
            raise Conflict("the subscription is already verified", code="already_verified")
    applied = await apply_contacts(  # a new subscription starts `pending`; others are left as they are
        session,
        audience_id=scope.audience.id,
        client_id=scope.client_id,
        items=[ContactInput(email=email, normalized=normalize_email(email), source="verification_request")],
    )
    issued = await verification.issue(
        session,
        settings.security.secret_key.get_secret_value(),
        contact_id=applied.contact_ids[0],
        audience_id=scope.audience.id,
        client_id=scope.client_id,
    )
    url = verification.verify_url(settings.tracking.public_base_url, issued.token)
    send = SendIn(
        email=email,
        template_key=body.template_key,
        idempotency_key=body.idempotency_key,
        context={**body.context, "verify_url": url},
        metadata={"purpose": "verification"},
        from_email=body.from_email,
        audience=body.audience,
        client=body.client,
    )
    result = await transactional_service.send(
        session, auth, send, pool
    )  # raises before anything is committed
    message = result.message
    assert message is not None
    await verification.link_message(session, issued.id, message.id)
    await session.commit()
    enqueued = False
    if result.should_publish:
        enqueued = await transactional_service.publish(publisher, message)
        if enqueued:
            await _record_enqueued(session, message)
    out = VerificationEmailOut(
        message=_message_out(message),
        idempotent_replay=result.idempotent_replay,
        enqueued=enqueued,
        expires_at=issued.expires_at,
    )
    if (reason := result.blocked_reason) is not None:
        error = SuppressedErrorOut(message=f"not sent to this contact: {reason}", reason=reason)
        blocked = VerificationSuppressedOut(**out.model_dump(), error=error)
        return JSONResponse(blocked.model_dump(mode="json"), status_code=409)
    return out
