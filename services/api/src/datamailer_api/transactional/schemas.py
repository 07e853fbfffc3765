"""Request and response bodies of the transactional routes (api.md, "Transactional
templates" and "Transactional send")."""

import json
import math
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, WithJsonSchema
from pydantic_core import PydanticCustomError

from datamailer_api.audience.schemas import EMAIL_SCHEMA, Slug
from datamailer_core.templating import is_storable_text

MAX_ADDRESS_LIST = 20
MAX_HEADERS = 20


# Bounds of every client-supplied JSON object that is stored or rendered (`context`,
# `metadata`, `example_context`): at most 32 levels of nesting (the object itself is level
# 1) and 64 KiB once serialized as compact UTF-8 JSON. Deeper input is `too_deep`, larger
# `too_large`, both before anything recursive (validation, rendering, storage) touches it.
MAX_JSON_DEPTH = 32
MAX_JSON_BYTES = 64 * 1024


def _storable(value: Any) -> bool:
    # What PostgreSQL keeps as sent: no NUL or unpaired surrogate (text and JSONB refuse
    # them) and finite numbers (JSON has no NaN, and Python's parser accepts it).
    if isinstance(value, str):
        return is_storable_text(value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def _require_storable(value: Any) -> Any:
    if not _storable(value):
        raise PydanticCustomError("storable", "no NUL, unpaired surrogate or non-finite number")
    return value


def _bounded_json(value: dict[str, Any]) -> dict[str, Any]:
    """Walks the object iteratively (no recursion, whatever the input's depth)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise PydanticCustomError(
                    "too_deep", "nested more than {limit} levels", {"limit": MAX_JSON_DEPTH}
                )
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
        else:
            _require_storable(item)
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_JSON_BYTES:
        raise PydanticCustomError("too_large", "larger than {limit} bytes as JSON", {"limit": MAX_JSON_BYTES})
    return value


# What PostgreSQL stores (no NUL, no unpaired surrogate); the schema says the NUL part.
Text = Annotated[str, AfterValidator(_require_storable), Field(json_schema_extra={"pattern": r"^[^\x00]*$"})]
# A recipient: one bare address, as EMAIL_SCHEMA says (Text's own schema would replace it).
EmailText = Annotated[str, AfterValidator(_require_storable), WithJsonSchema(EMAIL_SCHEMA)]
# A sender id (SENDER_ID_RE), where a send names its sender.
SENDER_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
# Extra headers: names as HEADER_NAME_RE; values one line of at most 998 characters (no
# control character or line/paragraph separator; format characters are refused too, which
# a pattern without Unicode property escapes cannot list).
HEADERS_SCHEMA = {
    "type": "object",
    "maxProperties": MAX_HEADERS,
    "propertyNames": {"pattern": r"^[A-Za-z0-9-]{1,80}$"},
    "additionalProperties": {
        "type": "string",
        "maxLength": 998,
        "pattern": r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$",
    },
}
# A subject line is not blank; a campaign's has no line break either.
TEMPLATE_SUBJECT_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"
SUBJECT_PATTERN = r"^[^\r\n\x00]*[^\s\x00][^\r\n\x00]*$"
JsonObject = Annotated[
    dict[str, Any],
    AfterValidator(_bounded_json),
    Field(description="A JSON object: at most 32 levels deep and 64 KiB as compact JSON."),
]

# One mailbox, bare or with a display name: no JSON Schema format says that much, so the
# service checks it (`invalid` otherwise).
Mailbox = Annotated[
    Text,
    Field(
        max_length=320,
        description="One mailbox: `ada@example.com` or `Ada <ada@example.com>`; anything else is `invalid`.",
    ),
]

# A template variable (`reset_url`, `user.first_name`), as the service's CONTEXT_NAME_RE.
CONTEXT_NAME_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": 100,
    "pattern": r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
}
# A name, or `{"name", "description"}`; checked by the service so that errors name the
# item (`required_context.2: invalid`) rather than each alternative of a union.
RequiredContextEntry = Annotated[
    Any,
    WithJsonSchema(
        {
            "anyOf": [
                CONTEXT_NAME_SCHEMA,
                {
                    "type": "object",
                    "properties": {
                        "name": CONTEXT_NAME_SCHEMA,
                        "description": {"anyOf": [{"type": "string", "maxLength": 1000}, {"type": "null"}]},
                    },
                    "required": ["name"],
                    "additionalProperties": False,
                },
            ]
        }
    ),
]


class TemplateIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Password reset",
                    "subject": "Reset your password, {{ first_name|default:'there' }}",
                    "html_body": '<p>Hi {{ first_name }},</p><p><a href="{{ reset_url }}">Reset</a></p>',
                    "text_body": "Hi {{ first_name }},\n\nReset: {{ reset_url }}",
                    "required_context": ["reset_url", {"name": "first_name", "description": "Shown"}],
                    "example_context": {"first_name": "Ada", "reset_url": "https://example.com/r/abc"},
                    "default_sender_id": "support",
                }
            ]
        },
    )
    client: Text | None = Field(default=None, description="The client slug; must be the key's own.")
    name: Text | None = Field(default=None, max_length=255, description="Defaults to the key.")
    subject: Text = Field(
        description="Template source of the subject line.",
        json_schema_extra={"pattern": TEMPLATE_SUBJECT_PATTERN},
    )
    description: Text | None = Field(default=None, max_length=2000)
    html_body: Text | None = None
    text_body: Text | None = None
    required_context: list[RequiredContextEntry] = Field(default_factory=list, max_length=100)
    example_context: JsonObject = Field(default_factory=dict)
    is_active: StrictBool = True
    default_sender_id: Text | None = Field(default=None, description="One of the client's sender ids.")


class RequiredContextOut(BaseModel):
    name: str
    description: str | None = None


class TemplateOut(BaseModel):
    key: str
    name: str
    description: str | None
    subject: str
    html_body: str | None
    text_body: str | None
    required_context: list[RequiredContextOut]
    example_context: dict[str, Any]
    is_active: bool
    default_sender_id: str | None
    created_at: datetime
    updated_at: datetime


class TemplateEnvelope(BaseModel):
    template: TemplateOut


class TemplateUpsertOut(TemplateEnvelope):
    created: bool


class SendIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "email": "ada@example.com",
                    "template_key": "password-reset",
                    "idempotency_key": "reset-8f14e45f",
                    "context": {"first_name": "Ada", "reset_url": "https://example.com/r/abc"},
                    "from_email": "support",
                    "headers": {"X-Entity-Ref-ID": "8f14e45f"},
                }
            ]
        },
    )
    email: EmailText = Field(max_length=320)
    template_key: Text = Field(min_length=1, max_length=180)
    idempotency_key: Text | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Repeating a request with the same key returns the first message.",
    )
    context: JsonObject = Field(default_factory=dict)
    metadata: JsonObject = Field(default_factory=dict)
    from_email: Text | None = Field(
        default=None,
        description="A sender id (not an address).",
        json_schema_extra={"pattern": SENDER_ID_PATTERN},
    )
    reply_to: Mailbox | None = None
    cc: list[Mailbox] = Field(default_factory=list, max_length=MAX_ADDRESS_LIST)
    bcc: list[Mailbox] = Field(default_factory=list, max_length=MAX_ADDRESS_LIST)
    headers: Annotated[dict[Text, Text], WithJsonSchema(HEADERS_SCHEMA)] = Field(
        default_factory=dict, max_length=MAX_HEADERS
    )
    category_tag: Slug | None = Field(default=None, description="Needs `audience` and `client`.")
    audience: Text | None = None
    client: Text | None = Field(default=None, description="The client slug; must be the key's own.")
    dry_run: StrictBool = False


class MessageOut(BaseModel):
    id: int | None = Field(description="Null in a dry run.")
    email: str
    from_email: str = Field(description="The sender id.")
    from_email_address: str = Field(description="The sender's address, with its display name.")
    reply_to: str | None
    cc: list[str]
    bcc: list[str]
    status: str
    template_key: str
    idempotency_key: str | None
    created_at: datetime | None


class SendOut(BaseModel):
    message: MessageOut
    idempotent_replay: bool
    enqueued: bool


class RenderedOut(BaseModel):
    subject: str
    html_body: str | None
    text_body: str | None


class DeliveryDecisionOut(BaseModel):
    allowed: bool
    reason: str | None


class DryRunOut(SendOut):
    rendered: RenderedOut
    would_deliver: bool
    delivery_decision: DeliveryDecisionOut


class SuppressedErrorOut(BaseModel):
    code: str = "transactional_suppressed"
    message: str
    fields: dict[str, str] = Field(default_factory=dict)
    reason: str = Field(examples=["hard_bounce"])


class SuppressedOut(SendOut):
    error: SuppressedErrorOut


class MessageStatusOut(BaseModel):
    id: int
    email: str
    subject: str
    status: str
    status_reason: str | None
    template_key: str
    idempotency_key: str
    from_email: str
    contact_id: int | None
    ses_message_id: str | None
    created_at: datetime
    updated_at: datetime


class EventOut(BaseModel):
    event_type: str
    created_at: datetime
    metadata: dict[str, Any]


class MessageStatusResponse(BaseModel):
    message: MessageStatusOut
    events: list[EventOut]
