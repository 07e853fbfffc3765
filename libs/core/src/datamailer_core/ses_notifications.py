"""SES notifications → the `ses-webhooks` v1 contract (spec/queues.md, "SES notifications").

SES reports what happened to a message through SNS. SNS → SQS delivers either the SNS
envelope (`{"Type": "Notification", "MessageId": ..., "Message": "<SES JSON>", ...}`) or,
with raw message delivery enabled on the subscription, the SES JSON itself. Both forms,
and both SES flavours (event publishing through a configuration set: `eventType`;
classic identity notifications: `notificationType`), normalize to one `SesWebhookV1`:

- `provider_event_id`: the SNS `MessageId` (SNS's unit of redelivery, so the dedup key).
  A raw delivery has no SNS id; its id is `raw:` + the SHA-256 of the body's canonical
  JSON (sorted keys, no whitespace), so the same notification delivered again gets the
  same id. (SES `mail.messageId` + type + timestamp is not used: two deliveries of one
  message, or two recipients' delay notices, can share all three.)
- `notification_type`: the SES type in the contract's snake_case (`Rendering Failure` →
  `rendering_failure`, `DeliveryDelay` → `delivery_delay`).
- `ses_message_id`: `mail.messageId`, the id SendEmail returned, used for correlation.
- `metadata`: `{"ses": <the parsed SES message>}`, as SES sent it. The contract's
  `Metadata` takes any JSON object; SES JSON is one (non-finite numbers are refused at
  parse time), and SNS caps a message at 256 KiB, as SQS does.

Anything else raises `SesNotificationError`, a `ContractError` (a `ValueError`) with
reason `invalid_payload`, so a worker fails that record alone and it reaches the DLQ.
"""

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, get_args

from pydantic_core import from_json

from datamailer_core.contracts.messages import ContractError, SesNotificationType, SesWebhookV1

__all__ = ["SesNotificationError", "is_raw_notification", "normalize", "occurred_at"]

# "Rendering Failure", "DeliveryDelay", "Bounce" → letters only, lower case → literal.
_BY_FOLDED_NAME: Final[dict[str, SesNotificationType]] = {
    name.replace("_", ""): name for name in get_args(SesNotificationType)
}
_SNS_KEYS: Final = ("Type", "MessageId", "TopicArn", "Message")
_SES_KEYS: Final = ("eventType", "notificationType")


class SesNotificationError(ContractError):
    """Not an SES notification this worker can act on. The message names what is wrong,
    never the values (they hold addresses)."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_payload", message, contract="ses-webhooks")


def is_raw_notification(body: Mapping[str, Any]) -> bool:
    """A body without the contract envelope that is an SNS envelope or an SES event."""
    return "contract" not in body and any(key in body for key in (*_SNS_KEYS, *_SES_KEYS))


def normalize(envelope: Mapping[str, Any], *, received_at: datetime | None = None) -> SesWebhookV1:
    """The contract message for a raw SNS `Notification` envelope or a raw-delivery SES
    body; `received_at` defaults to now and must be timezone-aware."""
    if not isinstance(envelope, Mapping):
        raise SesNotificationError("the body is not a JSON object")
    if received_at is None:
        received_at = datetime.now(UTC)
    elif received_at.tzinfo is None or received_at.utcoffset() is None:
        raise ValueError("received_at must be timezone-aware")

    if any(key in envelope for key in _SES_KEYS):
        message = dict(envelope)
        try:
            canonical = json.dumps(
                message, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            )
        except (TypeError, ValueError):
            raise SesNotificationError("the SES notification holds values that are not JSON") from None
        event_id = "raw:" + hashlib.sha256(canonical.encode()).hexdigest()
    elif "Type" in envelope:
        kind = envelope.get("Type")
        if kind != "Notification":
            # SubscriptionConfirmation / UnsubscribeConfirmation belong to the ingress.
            raise SesNotificationError("the SNS message is not a Notification")
        sns_id = envelope.get("MessageId")
        if not isinstance(sns_id, str) or not sns_id:
            raise SesNotificationError("the SNS envelope has no MessageId")
        event_id = sns_id
        message = _parse_message(envelope.get("Message"))
    else:
        raise SesNotificationError("neither an SNS envelope nor an SES notification")

    mail = message.get("mail")
    if not isinstance(mail, dict):
        raise SesNotificationError("the SES notification has no mail object")
    ses_message_id = mail.get("messageId")
    if ses_message_id is not None and (not isinstance(ses_message_id, str) or not ses_message_id):
        raise SesNotificationError("mail.messageId is not a non-empty string")

    try:
        return SesWebhookV1(
            provider="ses",
            provider_event_id=event_id,
            notification_type=_notification_type(message),
            received_at=received_at,
            ses_message_id=ses_message_id,
            metadata={"ses": message},
        )
    except ValueError as exc:  # pydantic's ValidationError; values are not echoed
        raise SesNotificationError(f"not a valid notification ({type(exc).__name__})") from None


def _parse_message(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, str):
        raise SesNotificationError("the SNS Message is not a string")
    try:
        message = from_json(raw, allow_inf_nan=False)
    except ValueError:
        raise SesNotificationError("the SNS Message is not JSON") from None
    if not isinstance(message, dict):
        raise SesNotificationError("the SNS Message is not a JSON object")
    return message


def _notification_type(message: Mapping[str, Any]) -> SesNotificationType:
    raw = message.get("eventType", message.get("notificationType"))
    if not isinstance(raw, str):
        raise SesNotificationError("eventType / notificationType is missing or not a string")
    name = "".join(ch for ch in raw.lower() if ch.isalpha())
    found = _BY_FOLDED_NAME.get(name)
    if found is not None:
        return found
    raise SesNotificationError("unknown SES eventType / notificationType")


def occurred_at(message: Mapping[str, Any], notification_type: str) -> datetime | None:
    """When SES says it happened: the type's own `timestamp` (`bounce.timestamp`,
    `deliveryDelay.timestamp`, ...), else `mail.timestamp`; None when neither parses."""
    key = {"delivery_delay": "deliveryDelay", "rendering_failure": "failure"}.get(
        notification_type, notification_type
    )
    for part in (message.get(key), message.get("mail")):
        if isinstance(part, dict) and isinstance(part.get("timestamp"), str):
            try:
                value = datetime.fromisoformat(part["timestamp"].replace("Z", "+00:00"))
            except ValueError:
                continue
            if value.tzinfo is not None:
                return value
    return None
