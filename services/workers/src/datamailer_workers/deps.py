"""The dependencies every handler receives, opened once per process (poller) or per
container (Lambda) and reused for every record."""

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from datamailer_core.aws import aws_client, aws_session
from datamailer_core.db.engine import create_engine, create_sessionmaker
from datamailer_core.metrics import Metrics
from datamailer_core.queues import QueuePublisher
from datamailer_core.ratelimit import SendRateLimiter
from datamailer_core.settings import Settings

# SES calls give up early enough for the lease and the queue's visibility to hold.
SES_CONNECT_TIMEOUT_SECONDS = 5
SES_READ_TIMEOUT_SECONDS = 20


@dataclass(frozen=True)
class WorkerDeps:
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    sqs: Any
    sesv2: Any
    publisher: QueuePublisher
    rate_limiter: SendRateLimiter
    metrics: Metrics
    # This process, as lease owners and logs name it (`host:pid:random`).
    worker_id: str

    def lease_owner(self) -> str:
        """A fresh owner per claim, so two records in one process never share a lease."""
        return f"{self.worker_id}:{uuid.uuid4().hex[:8]}"


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@asynccontextmanager
async def open_deps(settings: Settings, *, metrics: Metrics | None = None) -> AsyncIterator[WorkerDeps]:
    """Engine, SQS and SES v2 clients for the lifetime of the context (one per process)."""
    # Records worked at once per queue, plus the rate limiter's and the poller's own.
    engine = create_engine(settings.database, min_pool_size=settings.delivery.worker_concurrency + 2)
    sessionmaker = create_sessionmaker(engine)
    metrics = metrics or Metrics()
    try:
        async with AsyncExitStack() as stack:
            session = aws_session(settings.aws)
            sqs = await stack.enter_async_context(aws_client(session, settings.aws, "sqs"))
            sesv2 = await stack.enter_async_context(
                aws_client(
                    session,
                    settings.aws,
                    "sesv2",
                    connect_timeout=SES_CONNECT_TIMEOUT_SECONDS,
                    read_timeout=SES_READ_TIMEOUT_SECONDS,
                )
            )
            yield WorkerDeps(
                settings=settings,
                sessionmaker=sessionmaker,
                sqs=sqs,
                sesv2=sesv2,
                publisher=QueuePublisher(sqs, settings.queues),
                rate_limiter=SendRateLimiter.from_settings(sessionmaker, settings, metrics),
                metrics=metrics,
                worker_id=new_worker_id(),
            )
    finally:
        await engine.dispose()
