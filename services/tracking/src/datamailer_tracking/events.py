"""Publishing tracking events without making a visitor wait for SQS.

The hot routes turn each event into its `email-events` v1 body (`tracking_event`) and
hand it to an `EventSink`. By default that is `publisher.EventProcess`, a pipe to a
child process that publishes (SQS calls cost far more CPU than answering: botocore
spends about 1.2 ms per `SendMessageBatch`, next to well under 0.1 ms per request, so
in the serving process they set its rate). `EventPublisher`, here, is the publishing
itself: the child runs one, and `TRACKING_EVENT_PUBLISHER=inline` runs one in the
serving process instead.

`EventPublisher.submit` only appends to an in-process queue and returns. A few sender
tasks drain it: each takes what is waiting (up to the ten SQS accepts per call) and
sends it with one `SendMessageBatch`. At a trickle every event leaves at once, alone;
under load events pile up while the senders are busy, so batches fill by themselves and
SQS calls stay about ten times fewer than events (a background task per event would
make one SQS call per event and let in-flight calls grow without bound). No timer, so
no added delay.

Bounded, with backpressure rather than loss: when SQS cannot keep up for long and the
queue is full, `submit` waits for room (inline, the request's response is delayed; in
the child, reading the pipe stops, and the pipe's backpressure reaches the requests).
`close` waits for the queue to drain before the SQS client is closed, so a normal stop
loses nothing.
"""

import asyncio
import contextlib
import json
import logging
import time
from datetime import UTC, datetime
from typing import Final, Protocol
from uuid import uuid4

from datamailer_core.contracts import EmailEventType
from datamailer_core.queues import SQS_BATCH_LIMIT, QueuePublisher

logger = logging.getLogger("datamailer.tracking.events")

CAPACITY: Final = 10_000
SENDERS: Final = 4
CLOSE_TIMEOUT_SECONDS: Final = 20.0
USER_AGENT_CHARS: Final = 512
FULL_LOG_EVERY_SECONDS: Final = 10.0
QUEUE: Final = "email-events"
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def tracking_event(
    kind: EmailEventType, token: str, user_agent: str | None, ip: str | None, url: str | None = None
) -> str:
    """The `email-events` v1 body the worker expects: the raw token (the worker hashes
    it; nothing here touches the database), the user agent and client IP (which tell a
    privacy proxy's fetch from a person's open) and when it happened.

    The same JSON `EmailEventV1.model_dump_json` writes (same fields in the same order,
    nulls included), built without the model: on the pixel the model cost about a tenth
    of the request. The inputs are already valid (a checked token, an http(s) link, the
    event type from the route), so there is nothing for the model to refuse; the worker
    validates the body against the contract in any case."""
    event_id = uuid4().hex
    metadata: dict[str, str] = {}
    if user_agent:
        metadata["user_agent"] = user_agent[:USER_AGENT_CHARS]
    if ip:
        metadata["ip"] = ip
    return _encode(
        {
            "contract": QUEUE,
            "version": 1,
            "event_id": event_id,
            "event_type": kind,
            # isoformat ends in +00:00; the model writes Z.
            "occurred_at": datetime.now(UTC).isoformat()[:-6] + "Z",
            # The body is published once, so a redelivery carries the same key.
            "idempotency_key": event_id,
            "campaign_id": None,
            "campaign_recipient_id": None,
            "transactional_message_id": None,
            "contact_id": None,
            "client_id": None,
            "audience_id": None,
            "tracking_token": token,
            "url": url,
            "metadata": metadata,
        }
    )


class EventSink(Protocol):
    """Where the routes hand event bodies: `submit` returns once the body is held (it
    may wait for room, never drop it); `close` publishes what is held."""

    async def submit(self, body: str) -> None: ...

    async def close(self) -> None: ...


class EventPublisher:
    """Bodies of `email-events` messages, published to SQS by a few sender tasks."""

    def __init__(
        self, publisher: QueuePublisher, *, capacity: int = CAPACITY, senders: int = SENDERS
    ) -> None:
        self.publisher = publisher
        self.senders = senders
        self.queue: asyncio.Queue[str] = asyncio.Queue(capacity)
        self.tasks: list[asyncio.Task[None]] = []
        self.published = self.batches = self.waited = self.failed = 0
        self._last_full_log = 0.0

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._send_loop()) for _ in range(self.senders)]

    async def submit(self, body: str) -> None:
        try:
            self.queue.put_nowait(body)
        except asyncio.QueueFull:
            self.waited += 1
            now = time.monotonic()
            if now - self._last_full_log >= FULL_LOG_EVERY_SECONDS:
                self._last_full_log = now
                logger.warning("tracking event queue full: waiting for SQS", extra={"waited": self.waited})
            await self.queue.put(body)

    async def _send_loop(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < SQS_BATCH_LIMIT:
                try:
                    batch.append(self.queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            try:
                await self.publisher.publish_bodies(QUEUE, batch)
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
            self.failed += self.queue.qsize()
            logger.error("tracking events left unpublished at shutdown", extra={"events": self.queue.qsize()})
        finally:
            for task in self.tasks:
                task.cancel()
            for task in self.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
