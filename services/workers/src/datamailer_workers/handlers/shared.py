"""What both send handlers share: short transactions retried while the database is
briefly unavailable, and the send-rate adaptation after an SES call."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.ratelimit import Permit
from datamailer_workers.deps import WorkerDeps

logger = logging.getLogger("datamailer.workers")

T = TypeVar("T")

# Recording an outcome after SES accepted the mail is retried before giving up: a lost
# `sent` would mean a second send once the lease expires.
RECORD_ATTEMPTS: Final = 4
RECORD_RETRY_SECONDS: Final = 0.5


async def in_transaction(deps: WorkerDeps, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            async with deps.sessionmaker() as session, session.begin():
                return await work(session)
        except (OperationalError, InterfaceError, OSError):
            if attempt == RECORD_ATTEMPTS:
                raise
            logger.warning("database unavailable, retrying", exc_info=True)
            await asyncio.sleep(RECORD_RETRY_SECONDS * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


async def adapt_rate(deps: WorkerDeps, permit: Permit, *, throttled: bool) -> None:
    # The send's outcome stands whatever happens here.
    if not throttled and permit.rate >= deps.rate_limiter.max_rate:
        return  # granted at the maximum already: nothing to recover
    try:
        if throttled:
            await deps.rate_limiter.throttled(permit)
        else:
            await deps.rate_limiter.succeeded(permit.tokens)
    except Exception:
        logger.warning("could not update the send rate", exc_info=True)
