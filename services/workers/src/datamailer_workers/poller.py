"""The long-running SQS poller (`datamailer worker <queue>|all`).

Per queue: 20 s long polling, at most `concurrency` records in progress (its own loop
and bound, so transactional mail never waits behind campaign batches in the same
process), visibility extended while a record is still being worked, delete on success
only, and a graceful stop: on SIGTERM/SIGINT it stops receiving, finishes the records in
progress, then returns.
"""

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping, Sequence
from typing import Any, Final

from datamailer_core.contracts import QUEUE_NAMES, QueueName
from datamailer_core.queues import REPLAYED_FROM_ATTRIBUTE
from datamailer_core.settings import Settings
from datamailer_workers.deps import WorkerDeps, open_deps
from datamailer_workers.monitor import DEFAULT_MONITOR_HOST, serve_monitor
from datamailer_workers.registry import HANDLERS, Handler, handled_queues
from datamailer_workers.runtime import RETRY_BASE_SECONDS, RETRY_MAX_SECONDS, process_record

logger = logging.getLogger("datamailer.workers.poller")

LONG_POLL_SECONDS: Final = 20
SQS_MAX_MESSAGES: Final = 10
DEFAULT_VISIBILITY_SECONDS: Final = 30
MAX_RECEIVE_BACKOFF_SECONDS: Final = 30.0


def resolve_queues(name: str) -> list[QueueName]:
    """`all` (every queue with a handler) or one queue name; ValueError otherwise."""
    if name == "all":
        return handled_queues()
    for queue in QUEUE_NAMES:
        if queue == name:
            if queue not in HANDLERS:
                raise ValueError(f"no handler for queue {name} yet")
            return [queue]
    raise ValueError(f"unknown queue {name!r}; one of {', '.join(QUEUE_NAMES)} or all")


class QueuePoller:
    def __init__(
        self,
        deps: WorkerDeps,
        queue: QueueName,
        *,
        concurrency: int,
        wait_seconds: int = LONG_POLL_SECONDS,
        retry_base: float = RETRY_BASE_SECONDS,
        retry_max: float = RETRY_MAX_SECONDS,
        handlers: Mapping[str, Handler] = HANDLERS,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.deps, self.queue, self.concurrency = deps, queue, concurrency
        self.wait_seconds, self.retry_base, self.retry_max = wait_seconds, retry_base, retry_max
        self.handlers = handlers
        self.sqs = deps.sqs

    async def run(self, stop: asyncio.Event) -> None:
        url = self.deps.publisher.url(self.queue)
        visibility = await self._visibility_timeout(url)
        in_flight: set[asyncio.Task[None]] = set()
        stopping = asyncio.create_task(stop.wait())
        failures = 0
        logger.info("polling %s", self.queue, extra={"concurrency": self.concurrency})
        try:
            while not stop.is_set():
                if len(in_flight) >= self.concurrency:
                    await asyncio.wait({*in_flight, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                wanted = min(SQS_MAX_MESSAGES, self.concurrency - len(in_flight))
                receiving = asyncio.create_task(self._receive(url, wanted))
                await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():
                    receiving.cancel()
                    with contextlib.suppress(BaseException):
                        await receiving
                    break
                try:
                    messages = receiving.result()
                except Exception:
                    failures += 1
                    logger.warning("receive failed on %s", self.queue, exc_info=True)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), min(MAX_RECEIVE_BACKOFF_SECONDS, 2.0**failures))
                    continue
                failures = 0
                for message in messages:
                    task = asyncio.create_task(self._handle(url, message, visibility))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
        finally:
            stopping.cancel()
            if in_flight:
                logger.info("finishing %d records in progress on %s", len(in_flight), self.queue)
                await asyncio.gather(*in_flight, return_exceptions=True)
        logger.info("stopped polling %s", self.queue)

    async def _visibility_timeout(self, url: str) -> int:
        try:
            response = await self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])
            return int(response["Attributes"]["VisibilityTimeout"])
        except Exception:
            logger.warning("could not read the visibility timeout of %s", self.queue, exc_info=True)
            return DEFAULT_VISIBILITY_SECONDS

    async def _receive(self, url: str, wanted: int) -> list[dict[str, Any]]:
        response = await self.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=wanted,
            WaitTimeSeconds=self.wait_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
            MessageAttributeNames=[REPLAYED_FROM_ATTRIBUTE],
        )
        messages: list[dict[str, Any]] = response.get("Messages", [])
        return messages

    async def _keep_invisible(self, url: str, receipt: str, visibility: int) -> None:
        """Push the record's visibility out while it is in progress, so no other
        consumer receives it meanwhile (a rate-limit wait or a slow SES call)."""
        if visibility <= 0:
            return
        while True:
            await asyncio.sleep(max(0.5, visibility / 2))
            try:
                await self.sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=receipt, VisibilityTimeout=visibility
                )
            except Exception:
                logger.warning("could not extend visibility on %s", self.queue, exc_info=True)

    async def _handle(self, url: str, message: dict[str, Any], visibility: int) -> None:
        receipt = message["ReceiptHandle"]
        attributes = message.get("Attributes", {})
        extender = asyncio.create_task(self._keep_invisible(url, receipt, visibility))
        try:
            outcome = await process_record(
                message.get("Body", ""),
                self.deps,
                queue=self.queue,
                message_id=message.get("MessageId", "?"),
                receive_count=int(attributes.get("ApproximateReceiveCount", "1")),
                replayed=REPLAYED_FROM_ATTRIBUTE in message.get("MessageAttributes", {}),
                retry_base=self.retry_base,
                retry_max=self.retry_max,
                handlers=self.handlers,
            )
        finally:
            extender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await extender
        try:
            if outcome.done:
                await self.sqs.delete_message(QueueUrl=url, ReceiptHandle=receipt)
            elif outcome.visible_after is not None:
                await self.sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=receipt, VisibilityTimeout=outcome.visible_after
                )
        except Exception:
            # The record comes back; handlers are idempotent.
            logger.warning("could not settle a record on %s", self.queue, exc_info=True)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


async def run_pollers(
    deps: WorkerDeps,
    queues: Sequence[QueueName],
    stop: asyncio.Event,
    *,
    concurrency: int,
    wait_seconds: int = LONG_POLL_SECONDS,
    retry_base: float = RETRY_BASE_SECONDS,
) -> None:
    """One poller per queue, each with its own bound, until `stop` is set."""
    for queue in queues:
        deps.publisher.url(queue)  # fail before starting any, not halfway
    pollers = [
        QueuePoller(deps, queue, concurrency=concurrency, wait_seconds=wait_seconds, retry_base=retry_base)
        for queue in queues
    ]
    await asyncio.gather(*(poller.run(stop) for poller in pollers))


async def run_workers(
    settings: Settings,
    queues: Sequence[QueueName],
    *,
    concurrency: int | None = None,
    metrics_port: int | None = None,
    metrics_host: str = DEFAULT_MONITOR_HOST,
) -> None:
    """`datamailer worker`: open the process's dependencies, poll until SIGTERM/SIGINT.
    With `metrics_port`, `/metrics` and `/health` are served on that port."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    async with open_deps(settings) as deps, contextlib.AsyncExitStack() as stack:
        if metrics_port is not None:
            await stack.enter_async_context(serve_monitor(deps, metrics_port, metrics_host))
        await run_pollers(deps, queues, stop, concurrency=concurrency or settings.delivery.worker_concurrency)
