"""The worker runtime shared by every queue: decode a record, run its handler, and say
what the adapter (poller or Lambda) should do with the record. Handlers are pure async
functions `(message, deps) -> None`; returning means done (delete the record), raising
means leave it on the queue (it comes back, and after `maxReceiveCount` receives it
lands in the DLQ).

Every log line of a record carries its correlation id: the one its message carries in
`metadata.correlation_id` (the API request that enqueued it), else `sqs:<MessageId>`."""

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from datamailer_core.contracts import ContractError, QueueMessage, QueueName, parse_message
from datamailer_core.logging import CORRELATION_KEY, correlation_id, usable_correlation_id
from datamailer_workers.deps import WorkerDeps, open_deps
from datamailer_workers.errors import RetryLater, UnhandledContract
from datamailer_workers.registry import HANDLERS, Handler

__all__ = [
    "RecordOutcome",
    "RetryLater",
    "UnhandledContract",
    "WorkerDeps",
    "backoff_seconds",
    "dispatch",
    "open_deps",
    "process_record",
]

logger = logging.getLogger("datamailer.workers")

RETRY_BASE_SECONDS: Final = 5.0
RETRY_MAX_SECONDS: Final = 900.0
# SQS visibility timeouts are whole seconds, at most 12 hours.
MAX_VISIBILITY_SECONDS: Final = 43_200


async def dispatch(
    body: str | bytes,
    deps: WorkerDeps,
    *,
    queue: QueueName | None = None,
    handlers: Mapping[str, Handler] = HANDLERS,
) -> None:
    """Parse one record body (ContractError for anything malformed, of an unknown
    contract or version, or of another queue than `queue`) and run its handler."""
    await _run(parse_message(body, expected=queue), deps, handlers)


async def _run(message: QueueMessage, deps: WorkerDeps, handlers: Mapping[str, Handler]) -> None:
    handler = handlers.get(message.contract)
    if handler is None:
        raise UnhandledContract(f"no handler for {message.contract}")
    await handler(message, deps)


def backoff_seconds(receive_count: int, *, base: float, cap: float) -> int:
    """Exponential backoff with jitter by how often the record was received."""
    delay = min(cap, base * 2.0 ** max(0, receive_count - 1))
    return max(1, min(MAX_VISIBILITY_SECONDS, round(delay * random.uniform(0.75, 1.0))))  # noqa: S311


@dataclass(frozen=True)
class RecordOutcome:
    """`done`: delete the record. Otherwise `visible_after` (seconds) when it should come
    back sooner or later than the queue's visibility timeout, or None to leave that."""

    done: bool
    visible_after: int | None = None


async def process_record(
    body: str | bytes,
    deps: WorkerDeps,
    *,
    queue: QueueName | None,
    message_id: str,
    receive_count: int = 1,
    replayed: bool = False,
    retry_base: float = RETRY_BASE_SECONDS,
    retry_max: float = RETRY_MAX_SECONDS,
    handlers: Mapping[str, Handler] = HANDLERS,
) -> RecordOutcome:
    """Run one record and never raise: what went wrong is logged and counted.
    `replayed`: the record was put back from its DLQ (`datamailer dlq replay`); it is
    counted once, on its first receive."""
    label = queue or "unknown"
    counter = deps.metrics.queue_messages
    counter.labels(label, "received").inc()
    if replayed and receive_count == 1:
        deps.metrics.record_dlq_replay(label)
    token = correlation_id.set(f"sqs:{message_id}")
    try:
        message = parse_message(body, expected=queue)
        if carried := usable_correlation_id(message.metadata.get(CORRELATION_KEY)):
            correlation_id.set(carried)
        await _run(message, deps, handlers)
    except ContractError as exc:
        counter.labels(label, "failed").inc()
        logger.error("bad record left for the DLQ: %s", exc.reason, extra={"queue": label, "error": str(exc)})
        return RecordOutcome(done=False)
    except UnhandledContract as exc:
        counter.labels(label, "failed").inc()
        logger.error("record left for the DLQ: %s", exc, extra={"queue": label})
        return RecordOutcome(done=False)
    except RetryLater as exc:
        counter.labels(label, "retried").inc()
        delay = exc.delay
        visible_after = (
            max(1, min(MAX_VISIBILITY_SECONDS, round(delay)))
            if delay is not None
            else backoff_seconds(receive_count, base=retry_base, cap=retry_max)
        )
        logger.warning(
            "record retried in %ss: %s",
            visible_after,
            exc.reason,
            extra={"queue": label, "receives": receive_count},
        )
        return RecordOutcome(done=False, visible_after=visible_after)
    except Exception:  # a handler bug or an outage: the record stays, the worker goes on
        counter.labels(label, "failed").inc()
        logger.exception("record failed", extra={"queue": label})
        return RecordOutcome(done=False)
    finally:
        correlation_id.reset(token)
    counter.labels(label, "acked").inc()
    return RecordOutcome(done=True)
