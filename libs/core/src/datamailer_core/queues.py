"""Publishing queue contracts to SQS. The row a message refers to is always committed
before the message is sent; a lost send is repaired by the sweeper, never by the caller."""

import asyncio
from collections.abc import Sequence
from typing import Any

from datamailer_core.contracts import QueueMessage, dump_message
from datamailer_core.errors import DatamailerError
from datamailer_core.settings import QueueSettings

SQS_BATCH_LIMIT = 10
BATCH_RETRIES = 3


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
