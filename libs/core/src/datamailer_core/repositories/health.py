"""The delivery health figures the stack's alarms watch (infra/cloudformation): both are
read by the scheduler and published as metrics."""

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# Both use their tables' partial indexes on unfinished rows.
_HEALTH = text(
    """
    SELECT
      (SELECT count(*) FROM campaigns
        WHERE status = 'sending'
          AND coalesce(last_enqueued_at, queued_at, updated_at) < now() - make_interval(secs => :stuck))
        AS stuck_campaigns,
      (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM transactional_messages
        WHERE status = 'queued') AS oldest_queued_seconds
    """
)


@dataclass(frozen=True)
class DeliveryHealth:
    stuck_campaigns: int
    """`sending` campaigns that were fed nothing for `stuck_after_seconds`."""
    oldest_queued_seconds: float
    """Age of the oldest transactional message not yet taken by a worker (0: none)."""


async def delivery_health(session: AsyncSession, *, stuck_after_seconds: float) -> DeliveryHealth:
    row = (await session.execute(_HEALTH, {"stuck": stuck_after_seconds})).one()
    return DeliveryHealth(int(row.stuck_campaigns), float(row.oldest_queued_seconds))
