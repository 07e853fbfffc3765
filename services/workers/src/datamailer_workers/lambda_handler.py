"""AWS Lambda entry point for SQS event sources (with `ReportBatchItemFailures`).

One event loop, one engine and one set of clients per container: created on the first
invocation, reused by every later one (the asyncpg pool is bound to the loop that first
used it, so the loop must outlive invocations). A record that fails is listed in
`batchItemFailures` and only it comes back; after `maxReceiveCount` it lands in the DLQ.
"""

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any, Final

from datamailer_core.contracts import DLQ_SUFFIX, QUEUE_NAMES, QueueName
from datamailer_core.logging import configure_logging
from datamailer_core.queues import REPLAYED_FROM_ATTRIBUTE
from datamailer_core.settings import Settings
from datamailer_workers.deps import WorkerDeps, open_deps
from datamailer_workers.registry import HANDLERS, Handler
from datamailer_workers.runtime import process_record

logger = logging.getLogger("datamailer.workers.lambda")

# Records of one batch worked at once (the batch is at most 10 for standard queues
# unless a batching window is configured).
BATCH_CONCURRENCY: Final = 10


def queue_of(event_source_arn: str | None) -> QueueName | None:
    """The contract queue an SQS ARN names (`...:transactional-email`, also with a
    deployment prefix such as `datamailer-prod-transactional-email`); None otherwise."""
    if not event_source_arn:
        return None
    name = event_source_arn.rsplit(":", 1)[-1]
    if name.endswith(DLQ_SUFFIX):
        return None
    found: QueueName | None = None
    for queue in QUEUE_NAMES:
        if (name == queue or name.endswith("-" + queue)) and (found is None or len(queue) > len(found)):
            found = queue
    return found


async def process_batch(
    records: Sequence[Mapping[str, Any]],
    deps: WorkerDeps,
    *,
    handlers: Mapping[str, Handler] = HANDLERS,
) -> dict[str, list[dict[str, str]]]:
    """Run every record; return the ones that failed, in the batch's order."""
    limit = asyncio.Semaphore(BATCH_CONCURRENCY)

    async def one(record: Mapping[str, Any]) -> bool:
        queue = queue_of(record.get("eventSourceARN"))
        attributes = record.get("attributes") or {}
        async with limit:
            outcome = await process_record(
                record.get("body", ""),
                deps,
                queue=queue,
                message_id=str(record.get("messageId", "?")),
                receive_count=int(attributes.get("ApproximateReceiveCount", "1")),
                replayed=REPLAYED_FROM_ATTRIBUTE in (record.get("messageAttributes") or {}),
                handlers=handlers,
            )
        if not outcome.done and outcome.visible_after is not None and queue is not None:
            # The event source leaves a failed record's visibility alone: set the backoff.
            try:
                await deps.sqs.change_message_visibility(
                    QueueUrl=deps.publisher.url(queue),
                    ReceiptHandle=record["receiptHandle"],
                    VisibilityTimeout=outcome.visible_after,
                )
            except Exception:
                logger.warning("could not set the retry delay", exc_info=True)
        return outcome.done

    results = await asyncio.gather(*(one(record) for record in records))
    return {
        "batchItemFailures": [
            {"itemIdentifier": str(record.get("messageId", ""))}
            for record, done in zip(records, results, strict=True)
            if not done
        ]
    }


class LambdaRuntime:
    """The per-container state: the loop and the dependencies, opened lazily."""

    def __init__(self, settings_factory: Callable[[], Settings] = Settings) -> None:
        self._settings_factory = settings_factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stack: AsyncExitStack | None = None
        self.deps: WorkerDeps | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    async def _deps(self) -> WorkerDeps:
        if self.deps is None:
            settings = self._settings_factory()
            configure_logging(settings.log)
            stack = AsyncExitStack()
            self.deps = await stack.enter_async_context(open_deps(settings))
            self._stack = stack
        return self.deps

    async def _handle(self, event: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
        return await process_batch(event.get("Records", []), await self._deps())

    def handle(self, event: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
        return self.loop.run_until_complete(self._handle(event))

    def close(self) -> None:
        if self._loop is None:
            return
        if self._stack is not None:
            self._loop.run_until_complete(self._stack.aclose())
        self._loop.close()
        self._loop, self._stack, self.deps = None, None, None


_container: dict[str, LambdaRuntime] = {}


def handler(event: Mapping[str, Any], context: object = None) -> dict[str, list[dict[str, str]]]:
    """The Lambda function handler (`datamailer_workers.lambda_handler.handler`)."""
    runtime = _container.get("runtime")
    if runtime is None:
        runtime = _container["runtime"] = LambdaRuntime()
    return runtime.handle(event)
