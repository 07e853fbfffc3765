"""Queue contracts: the message bodies exchanged over SQS. Depends on pydantic alone."""

from datamailer_core.contracts.messages import (
    DLQ_SUFFIX,
    QUEUE_NAMES,
    CampaignEmailV1,
    ContractError,
    ContractErrorReason,
    EmailEventType,
    EmailEventV1,
    QueueMessage,
    QueueName,
    SesNotificationType,
    SesWebhookV1,
    TransactionalEmailV1,
    dump_message,
    parse_message,
)

__all__ = [
    "DLQ_SUFFIX",
    "QUEUE_NAMES",
    "CampaignEmailV1",
    "ContractError",
    "ContractErrorReason",
    "EmailEventType",
    "EmailEventV1",
    "QueueMessage",
    "QueueName",
    "SesNotificationType",
    "SesWebhookV1",
    "TransactionalEmailV1",
    "dump_message",
    "parse_message",
]
