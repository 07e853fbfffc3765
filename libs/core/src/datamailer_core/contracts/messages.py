"""Version 1 of the four SQS queue contracts (spec/queues.md, "Envelope").

These bodies are the only API between the services that enqueue and the workers that
consume, so they are strict: exact types, no coercion, no unknown fields. Payloads carry
stable ids and routing hints; workers reload mutable state from Postgres.
"""

import math
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError, from_json

QueueName = Literal["transactional-email", "campaign-email", "ses-webhooks", "email-events"]

# Order of the table in spec/queues.md.
QUEUE_NAMES: Final[tuple[QueueName, ...]] = (
    "transactional-email",
    "campaign-email",
    "ses-webhooks",
    "email-events",
)
DLQ_SUFFIX: Final = "-dlq"

ContractErrorReason = Literal[
    "invalid_json", "unknown_contract", "unsupported_version", "invalid_payload", "wrong_queue"
]


class ContractError(ValueError):
    """A queue body that no worker should act on. `reason` is short and stable, for logs
    and metrics; the message never echoes input values (metadata may hold personal data)."""

    def __init__(self, reason: ContractErrorReason, message: str, *, contract: str | None = None) -> None:
        self.reason: ContractErrorReason = reason
        self.contract = contract
        super().__init__(f"{reason}: {message}")


def _require_json_values(value: dict[str, Any]) -> dict[str, Any]:
    # Only what survives a JSON round trip unchanged, so that a message built in Python
    # is the message the worker decodes (no tuples turning into lists, no NaN into null).
    def check(item: Any) -> bool:
        if item is None or isinstance(item, bool | int | str):
            return True
        if isinstance(item, float):
            return math.isfinite(item)
        if isinstance(item, list):
            return all(check(element) for element in item)
        if isinstance(item, dict):
            return all(isinstance(k, str) and check(v) for k, v in item.items())
        return False

    if not check(value):
        raise PydanticCustomError(
            "json_value", "metadata may hold only JSON values (finite numbers, lists, objects)"
        )
    return value


PositiveId = Annotated[StrictInt, Field(gt=0)]
NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]
Timestamp = Annotated[AwareDatetime, Strict()]
Metadata = Annotated[dict[str, Any], AfterValidator(_require_json_values)]


class _ContractV1(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Each subclass declares `contract` and `version: Literal[1] = 1` first, so bodies read
    # {"contract": ..., "version": 1, ...}. The defaults keep producers short; on the wire
    # `parse_message` requires both to be present. (No model-level "before" validator for
    # that: it would turn the JSON input into Python objects, and a strict datetime then
    # refuses the ISO-8601 string.)

    @field_validator("version", mode="before", check_fields=False)
    @classmethod
    def _version_is_the_integer_one(cls, value: Any) -> Any:
        # Literal[1] alone would accept true and 1.0 (they hash like 1).
        if type(value) is not int:
            raise PydanticCustomError("literal_error", "Input should be 1")
        return value


class TransactionalEmailV1(_ContractV1):
    contract: Literal["transactional-email"] = "transactional-email"
    version: Literal[1] = 1
    transactional_message_id: PositiveId
    client_id: PositiveId
    idempotency_key: NonEmptyStr
    contact_id: PositiveId | None = None
    template_id: PositiveId | None = None
    template_key: NonEmptyStr | None = None
    metadata: Metadata = Field(default_factory=dict)


class CampaignEmailV1(_ContractV1):
    contract: Literal["campaign-email"] = "campaign-email"
    version: Literal[1] = 1
    campaign_id: PositiveId
    batch_id: NonEmptyStr
    # A tuple so the frozen message cannot be appended to; JSON arrays and lists validate.
    campaign_recipient_ids: Annotated[tuple[PositiveId, ...], Field(min_length=1)]
    # Absent means "use batch_id"; see `effective_idempotency_key`.
    idempotency_key: NonEmptyStr | None = None
    metadata: Metadata = Field(default_factory=dict)

    @property
    def effective_idempotency_key(self) -> str:
        return self.idempotency_key if self.idempotency_key is not None else self.batch_id


SesNotificationType = Literal[
    "send",
    "reject",
    "delivery",
    "bounce",
    "complaint",
    "open",
    "click",
    "delivery_delay",
    "rendering_failure",
    "subscription",
]


class SesWebhookV1(_ContractV1):
    contract: Literal["ses-webhooks"] = "ses-webhooks"
    version: Literal[1] = 1
    provider: Literal["ses"]
    provider_event_id: NonEmptyStr
    notification_type: SesNotificationType
    received_at: Timestamp
    ses_message_id: NonEmptyStr | None = None
    raw_payload_s3_key: NonEmptyStr | None = None
    metadata: Metadata = Field(default_factory=dict)


EmailEventType = Literal["open", "click", "unsubscribe"]


class EmailEventV1(_ContractV1):
    contract: Literal["email-events"] = "email-events"
    version: Literal[1] = 1
    event_id: NonEmptyStr
    event_type: EmailEventType
    occurred_at: Timestamp
    idempotency_key: NonEmptyStr
    campaign_id: PositiveId | None = None
    campaign_recipient_id: PositiveId | None = None
    transactional_message_id: PositiveId | None = None
    contact_id: PositiveId | None = None
    client_id: PositiveId | None = None
    audience_id: PositiveId | None = None
    tracking_token: NonEmptyStr | None = None
    url: NonEmptyStr | None = None
    metadata: Metadata = Field(default_factory=dict)


QueueMessage = Annotated[
    TransactionalEmailV1 | CampaignEmailV1 | SesWebhookV1 | EmailEventV1,
    Field(discriminator="contract"),
]

_QUEUE_MESSAGE: TypeAdapter[QueueMessage] = TypeAdapter(QueueMessage)
_SUPPORTED_VERSIONS: Final = (1,)
_MAX_REPORTED_ERRORS: Final = 5


def _describe(error: ValidationError) -> str:
    # Locations and messages only: `input` could carry personal data into the logs.
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:_MAX_REPORTED_ERRORS]:
        location = ".".join(str(part) for part in item["loc"][1:]) or "body"
        parts.append(f"{location}: {item['msg']}")
    if error.error_count() > _MAX_REPORTED_ERRORS:
        parts.append(f"and {error.error_count() - _MAX_REPORTED_ERRORS} more")
    return "; ".join(parts)


def parse_message(body: str | bytes, expected: QueueName | None = None) -> QueueMessage:
    """Decode and validate one queue body; raise `ContractError` for anything else.

    The envelope is checked first, in this order, so the reason names the first thing
    wrong: invalid_json, invalid_payload (not an object), unknown_contract, wrong_queue
    (when `expected` is given), unsupported_version, then invalid_payload (the fields).
    A raw SNS `Notification` envelope or raw-delivery SES event (no `contract` key) is
    normalized to `SesWebhookV1` when `expected` is None or `ses-webhooks`
    (`datamailer_core.ses_notifications.normalize`).
    """
    if expected is not None and expected not in QUEUE_NAMES:
        raise ValueError(f"expected must be one of {QUEUE_NAMES}, got {expected!r}")
    try:
        data = from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        raise ContractError("invalid_json", str(exc)) from None
    if not isinstance(data, dict):
        raise ContractError("invalid_payload", f"body is a JSON {type(data).__name__}, not an object")

    if expected in (None, "ses-webhooks"):
        # SNS → SQS delivers SES notifications without our envelope (queues.md).
        from datamailer_core.ses_notifications import is_raw_notification, normalize  # noqa: PLC0415

        if is_raw_notification(data):
            return normalize(data)

    contract = data.get("contract")
    if not isinstance(contract, str) or contract not in QUEUE_NAMES:
        raise ContractError("unknown_contract", "contract is missing or not a known queue name")
    if expected is not None and contract != expected:
        raise ContractError("wrong_queue", f"a {contract} message on the {expected} queue", contract=contract)
    version = data.get("version")
    if type(version) is not int or version not in _SUPPORTED_VERSIONS:
        raise ContractError(
            "unsupported_version",
            f"version must be one of {list(_SUPPORTED_VERSIONS)}",
            contract=contract,
        )

    try:
        # Validate the original text, not `data`: JSON mode is what lets an ISO-8601
        # string stand for a strict datetime.
        return _QUEUE_MESSAGE.validate_json(body)
    except ValidationError as exc:
        # `from None`: the chained pydantic error would print the input in a traceback.
        raise ContractError("invalid_payload", _describe(exc), contract=contract) from None


def dump_message(msg: QueueMessage) -> str:
    """Compact JSON for an SQS body; `parse_message(dump_message(m)) == m`."""
    return msg.model_dump_json()
