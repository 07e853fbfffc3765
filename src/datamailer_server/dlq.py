"""Dead-letter queue procedures (`datamailer dlq inspect|replay <queue>`).

Inspecting samples messages and puts them back at once (visibility 0), so nothing is
removed. Replaying sends each message to its source queue first and deletes the DLQ copy
second: a crash between the two leaves a duplicate, never a loss, and every handler is
idempotent."""

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from datamailer_core.aws import aws_client, aws_session
from datamailer_core.contracts import DLQ_SUFFIX, QUEUE_NAMES
from datamailer_core.errors import NotFound, ValidationFailed
from datamailer_core.metrics import Metrics
from datamailer_core.queues import QueuePublisher, replay_attributes
from datamailer_core.settings import Settings

logger = logging.getLogger("datamailer.dlq")

SQS_MAX_MESSAGES: Final = 10
# Long enough that one inspection's rounds see distinct messages; given back right after.
SAMPLE_VISIBILITY_SECONDS: Final = 30
# Long enough for one batch's send-then-delete; a crash makes the batch visible again.
REPLAY_VISIBILITY_SECONDS: Final = 60
RECEIVE_WAIT_SECONDS: Final = 1
PREVIEW_CHARS: Final = 120


@dataclass(frozen=True)
class Sampled:
    message_id: str
    receive_count: int
    contract: str
    version: str
    preview: str


@dataclass(frozen=True)
class Inspection:
    dlq: str
    depth: int
    messages: list[Sampled]


def check_queue(queue: str) -> str:
    if queue not in QUEUE_NAMES:
        raise ValidationFailed(f"unknown queue {queue!r}; one of {', '.join(QUEUE_NAMES)}")
    return queue


async def _dlq_url(sqs: Any, source_url: str, queue: str) -> str:
    """The DLQ the source queue's redrive policy names (the conventional name if none)."""
    attrs = await sqs.get_queue_attributes(QueueUrl=source_url, AttributeNames=["RedrivePolicy"])
    redrive = attrs.get("Attributes", {}).get("RedrivePolicy")
    name = json.loads(redrive)["deadLetterTargetArn"].rsplit(":", 1)[1] if redrive else queue + DLQ_SUFFIX
    try:
        return str((await sqs.get_queue_url(QueueName=name))["QueueUrl"])
    except sqs.exceptions.QueueDoesNotExist:
        raise NotFound(f"dead-letter queue {name} does not exist (run `datamailer queues create`)") from None


async def _depth(sqs: Any, url: str) -> int:
    attrs = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


def _describe(message: dict[str, Any]) -> Sampled:
    body = message.get("Body", "")
    contract, version = "?", "?"
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        contract, version = str(decoded.get("contract", "?")), str(decoded.get("version", "?"))
    preview = " ".join(body.split())
    if len(preview) > PREVIEW_CHARS:
        preview = preview[: PREVIEW_CHARS - 1] + "…"
    return Sampled(
        message_id=message["MessageId"],
        receive_count=int(message.get("Attributes", {}).get("ApproximateReceiveCount", "0")),
        contract=contract,
        version=version,
        preview=preview,
    )


async def inspect(settings: Settings, queue: str, limit: int) -> Inspection:
    """Up to `limit` messages of the queue's DLQ, each made visible again at once."""
    check_queue(queue)
    async with aws_client(aws_session(settings.aws), settings.aws, "sqs") as sqs:
        url = await _dlq_url(sqs, QueuePublisher(sqs, settings.queues).url(queue), queue)
        depth = await _depth(sqs, url)
        seen: dict[str, Sampled] = {}
        held: list[str] = []
        try:
            while len(seen) < limit:
                response = await sqs.receive_message(
                    QueueUrl=url,
                    MaxNumberOfMessages=min(SQS_MAX_MESSAGES, limit - len(seen)),
                    VisibilityTimeout=SAMPLE_VISIBILITY_SECONDS,
                    WaitTimeSeconds=RECEIVE_WAIT_SECONDS,
                    MessageSystemAttributeNames=["ApproximateReceiveCount"],
                )
                fresh = [m for m in response.get("Messages", []) if m["MessageId"] not in seen]
                if not fresh:
                    break
                for message in fresh:
                    held.append(message["ReceiptHandle"])
                    seen[message["MessageId"]] = _describe(message)
        finally:
            await _release(sqs, url, held)
    return Inspection(dlq=url.rsplit("/", 1)[-1], depth=depth, messages=list(seen.values()))


async def _release(sqs: Any, url: str, receipts: list[str]) -> None:
    """Visible again now: an inspection leaves the DLQ as it found it."""
    for start in range(0, len(receipts), SQS_MAX_MESSAGES):
        chunk = receipts[start : start + SQS_MAX_MESSAGES]
        await sqs.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 0} for i, r in enumerate(chunk)],
        )


async def replay(
    settings: Settings,
    queue: str,
    limit: int | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    metrics: Metrics | None = None,
) -> int:
    """Move up to `limit` (default: all) messages from the DLQ back to the source queue;
    returns how many. `progress` is called with the running count after each batch."""
    check_queue(queue)
    replayed = 0
    async with aws_client(aws_session(settings.aws), settings.aws, "sqs") as sqs:
        source_url = QueuePublisher(sqs, settings.queues).url(queue)
        url = await _dlq_url(sqs, source_url, queue)
        while limit is None or replayed < limit:
            wanted = SQS_MAX_MESSAGES if limit is None else min(SQS_MAX_MESSAGES, limit - replayed)
            response = await sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=wanted,
                VisibilityTimeout=REPLAY_VISIBILITY_SECONDS,
                WaitTimeSeconds=RECEIVE_WAIT_SECONDS,
                MessageAttributeNames=["All"],
            )
            messages = response.get("Messages", [])
            if not messages:
                break
            for message in messages:
                # Send first, delete second: a crash in between duplicates, never loses.
                # Marked, so the worker that takes it counts the replay on its /metrics.
                attributes = {
                    **message.get("MessageAttributes", {}),
                    **replay_attributes(url.rsplit("/", 1)[-1]),
                }
                await sqs.send_message(
                    QueueUrl=source_url, MessageBody=message["Body"], MessageAttributes=attributes
                )
                await sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                replayed += 1
                if metrics is not None:
                    metrics.record_dlq_replay(queue)
            if progress is not None:
                progress(replayed)
    if replayed:
        logger.info("replayed %d messages from the %s DLQ", replayed, queue, extra={"replayed": replayed})
    return replayed
