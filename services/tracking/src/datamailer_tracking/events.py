"""Publishing tracking events without making a visitor wait for SQS.

The hot routes hand each event to `EventPublisher.submit`, which only appends to an
in-process queue and returns. A few sender tasks drain it: each takes what is waiting
(up to the ten SQS accepts per call) and sends it with one `SendMessageBatch`. At a
trickle every event leaves at once, alone; under load events pile up while the senders
are busy, so batches fill by themselves and SQS calls stay about ten times fewer than
requests (a background task per request would make one SQS call per request and let
in-flight calls grow without bound). No timer, so no added delay.

Bounded, with backpressure rather than loss: when SQS cannot keep up for long and the
queue is full, a request waits for room (its response is delayed, its event kept). The
SQS call costs far more CPU than answering the pixel (botocore: about 1 ms per batch,
next to well under 0.1 ms per request), so under sustained saturation the service's
rate is what it can publish. On shutdown (after the server stopped taking requests)
`close` waits for the queue to drain before the SQS client is closed, so a normal stop
loses nothing.
"""

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Final
from uuid import uuid4

from datamailer_core.contracts import EmailEventType, EmailEventV1
from datamailer_core.queues import SQS_BATCH_LIMIT, QueuePublisher

logger = logging.getLogger("datamailer.tracking.events")

CAPACITY: Final = 10_000
SENDERS: Final = 4
CLOSE_TIMEOUT_SECONDS: Final = 20.0
USER_AGENT_CHARS: Final = 512
FULL_LOG_EVERY_SECONDS: Final = 10.0


def tracking_event(
    kind: EmailEventType, token: str, user_agent: str | None, ip: str | None, url: str | None = None
) -> EmailEventV1:
    """The event as the `email-events` worker expects it: the raw token (the worker
    hashes it; nothing here touches the database), the user agent and client IP (which
    tell a privacy proxy's fetch from a person's open) and when it happened."""
    event_id = uuid4().hex
    metadata: dict[str, str] = {}
    if user_agent:
        metadata["user_agent"] = user_agent[:USER_AGENT_CHARS]
    if ip:
        metadata["ip"] = ip
    return EmailEventV1(
        event_id=event_id,
        event_type=kind,
        occurred_at=datetime.now(UTC),
        # The body is published once, so a redelivery carries the same key.
        idempotency_key=event_id,
        tracking_token=token,
        url=url,
        metadata=metadata,
    )


class EventPublisher:
    def __init__(
        self, publisher: QueuePublisher, *, capacity: int = CAPACITY, senders: int = SENDERS
    ) -> None:
        self.publisher = publisher
        self.senders = senders
        self.queue: asyncio.Queue[EmailEventV1] = asyncio.Queue(capacity)
        self.tasks: list[asyncio.Task[None]] = []
        self.published = self.batches = self.waited = self.failed = 0
        self._last_full_log = 0.0

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._send_loop()) for _ in range(self.senders)]

    async def submit(self, event: EmailEventV1) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.waited += 1
            now = time.monotonic()
            if now - self._last_full_log >= FULL_LOG_EVERY_SECONDS:
                self._last_full_log = now
                logger.warning(
                    "tracking event queue full: requests wait for SQS", extra={"waited": self.waited}
                )
            await self.queue.put(event)

    async def _send_loop(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < SQS_BATCH_LIMIT:
                try:
                    batch.append(self.queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            try:
                await self.publisher.publish_batch(batch)
                self.published += len(batch)
                self.batches += 1
            except Exception:  # the events are lost; the server keeps answering
                self.failed += len(batch)
                logger.exception("could not publish tracking events", extra={"events": len(batch)})
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Publish everything still queued (up to `timeout`), then stop the senders."""
        try:
            await asyncio.wait_for(self.queue.join(), timeout)
        except TimeoutError:
            logger.error("tracking events left unpublished at shutdown", extra={"events": self.queue.qsize()})
        finally:
            for task in self.tasks:
                task.cancel()
            for task in self.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
