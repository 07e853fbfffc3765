"""Publishing queue contracts to SQS. The row a message refers to is always committed
before the message is sent; a lost send is repaired by the sweeper, never by the caller.

A message published while a correlation id is set (an API request) carries it in its
`metadata` (`correlation_id`), so the worker's log lines, down to the SES call, share
the request's id; it travels in the body, so a DLQ replay keeps it. Batches carry none:
their messages come from many requests, and they are published off the request path."""

import asyncio
from collections.abc import Sequence
from typing import Any

from datamailer_core.contracts import QueueMessage, dump_message
from datamailer_core.errors import DatamailerError
from datamailer_core.logging import CORRELATION_KEY, correlation_id
from datamailer_core.settings import QueueSettings

SQS_BATCH_LIMIT = 10
BATCH_RETRIES = 3
# The SQS message attribute `datamailer dlq replay` sets on what it puts back (its value
# is the DLQ's name); a worker counts such a record in `datamailer_dlq_replays_total`.
REPLAYED_FROM_ATTRIBUTE = "replayed_from_dlq"


def replay_attributes(dlq_name: str) -> dict[str, dict[str, str]]:
    """`MessageAttributes` for a message replayed from `dlq_name` into its source queue."""
    return {REPLAYED_FROM_ATTRIBUTE: {"DataType": "String", "StringValue": dlq_name}}


class QueueNotConfigured(DatamailerError):
    status = 503
    code = "queue_not_configured"


class QueuePublisher:
    def __init__(self, sqs: Any, queues: QueueSettings) -> None:
        self.sqs, self.queues = sqs, queues

    def url(self, queue: str) -> str:
        url = self.queues.url_for(queue)
        if not url:
            raise QueueNotConfigured(f"no URL configured for queue {queue}")
        return url

    async def publish(self, message: QueueMessage) -> str:
        cid = correlation_id.get()
        if cid is not None and CORRELATION_KEY not in message.metadata:
            message = message.model_copy(update={"metadata": {**message.metadata, CORRELATION_KEY: cid}})
        response = await self.sqs.send_message(
            QueueUrl=self.url(message.contract), MessageBody=dump_message(message)
        )
        return str(response["MessageId"])

    async def publish_batch(self, messages: Sequence[QueueMessage]) -> None:
        """Send in batches of ten; entries SQS refuses are retried, then reported."""
        by_queue: dict[str, list[str]] = {}
        for msg in messages:
            by_queue.setdefault(msg.contract, []).append(dump_message(msg))
        for queue, bodies in by_queue.items():
            await self.publish_bodies(queue, bodies)

    async def publish_bodies(self, queue: str, bodies: Sequence[str]) -> None:
        """`publish_batch` for bodies already serialized (each one whole contract)."""
        url = self.url(queue)
        for start in range(0, len(bodies), SQS_BATCH_LIMIT):
            pending = {str(i): body for i, body in enumerate(bodies[start : start + SQS_BATCH_LIMIT])}
            for attempt in range(BATCH_RETRIES):
                response = await self.sqs.send_message_batch(
                    QueueUrl=url, Entries=[{"Id": i, "MessageBody": b} for i, b in pending.items()]
                )
                for ok in response.get("Successful", []):
                    pending.pop(ok["Id"], None)
                if not pending:
                    break
                await asyncio.sleep(0.2 * (attempt + 1))
            if pending:
                raise DatamailerError(f"SQS refused {len(pending)} messages after {BATCH_RETRIES} attempts")
