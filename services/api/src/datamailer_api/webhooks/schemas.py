import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from datamailer_api.senders.schemas import ClientOut
from datamailer_core.repositories.webhooks import EVENT_TYPES
from datamailer_core.webhooks import MAX_ENDPOINTS, MAX_URL_LENGTH


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(
        max_length=MAX_URL_LENGTH,
        description="HTTPS (plain HTTP only to localhost outside production); no credentials.",
        examples=["https://app.example.com/hooks/datamailer"],
    )
    event_types: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=len(EVENT_TYPES),
        description="Event types delivered here; omitted or null for all.",
        json_schema_extra={"items": {"enum": list(EVENT_TYPES)}},
    )
    bearer_token: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        pattern=r"^[!-~]+$",
        description="Sent as `Authorization: Bearer`; omitted keeps the current one, null removes it.",
    )
    rotate_secret: StrictBool = Field(default=False, description="Issue a new signing secret (shown once).")


class WebhooksIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "endpoints": [
                        {
                            "url": "https://app.example.com/hooks/datamailer",
                            "event_types": ["subscription.unsubscribed", "contact.hard_bounced"],
                        }
                    ]
                }
            ]
        },
    )
    client: str | None = Field(default=None, description="The client slug; must be the key's own.")
    endpoints: list[EndpointIn] = Field(max_length=MAX_ENDPOINTS)


class EndpointOut(BaseModel):
    url: str
    event_types: list[str] | None
    has_bearer_token: bool
    status: str = Field(description="`active`, or `disabled` after consecutive failures.")
    failure_count: int = Field(description="Consecutive failed attempts.")
    last_error: str | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    disabled_at: datetime | None
    created_at: datetime


class EndpointSavedOut(EndpointOut):
    secret: str | None = Field(
        description="The signing secret (`whsec_...`), only when created or rotated: store it now."
    )


class WebhooksOut(BaseModel):
    client: ClientOut
    event_types: list[str] = Field(description="Every event type an endpoint can take.")
    endpoints: list[EndpointOut]


class WebhooksSavedOut(WebhooksOut):
    endpoints: list[EndpointSavedOut]  # type: ignore[assignment]


class AttemptOut(BaseModel):
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryOut(BaseModel):
    event_id: uuid.UUID
    event_type: str
    url: str
    status: str
    attempt_count: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    data: dict[str, Any]
    attempts: list[AttemptOut]


class DeliveriesOut(BaseModel):
    deliveries: list[DeliveryOut]
    next_cursor: str | None
