"""The account-wide SES send rate, shared by every worker process through one PostgreSQL
row (`send_rate_state`, key `ses`): a token bucket refilled by elapsed time × rate.

- Taking tokens is one short atomic `UPDATE ... RETURNING` (the row lock lasts that
  statement only; nothing is held across the SES call). A priority taker (transactional
  mail) reserves even when the bucket is empty, leaving it in debt, and is told how long
  to sleep until its tokens exist; reservations are served in order, so the long-run
  rate across all processes never exceeds the rate. A non-priority taker (campaign
  batches) takes only tokens that already exist and otherwise waits, so it never queues
  ahead of transactional mail.
- The bucket holds at most `rate × burst_seconds` tokens: the largest burst after idling.
- Adaptive: a throttling answer multiplies the rate by 0.8 (relative to the rate the
  throttled send was granted at, so a burst of throttles seen together lowers it once),
  never below the floor, and empties the bucket; successful sending brings it back up by
  ×1.05 per second's worth of sends, never above `SES_MAX_SEND_RATE`.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from datamailer_core.metrics import Metrics
from datamailer_core.settings import Settings

DEFAULT_KEY: Final = "ses"
DECREASE_FACTOR: Final = 0.8
INCREASE_FACTOR: Final = 1.05
# A non-priority taker re-checks at least this often while it waits.
MAX_POLL_SECONDS: Final = 1.0

# asyncpg prepares statements: every parameter in arithmetic carries its type.
_N, _MAX, _MIN, _BURST, _OBSERVED = (
    f"CAST(:{p} AS float8)" for p in ("n", "max_rate", "min_rate", "burst", "observed")
)
_ELAPSED = "GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - updated_at))"
_RATE = f"LEAST(rate, {_MAX})"
_AVAILABLE = f"LEAST({_RATE} * {_BURST}, tokens + {_RATE} * {_ELAPSED})"

_INSERT = text(
    "INSERT INTO send_rate_state (key, rate, tokens, updated_at) "
    f"VALUES (:key, {_MAX}, {_MAX} * {_BURST}, clock_timestamp()) ON CONFLICT (key) DO NOTHING"
)
# Reserve: always takes, the bucket may go negative (debt = reservations not yet due).
_RESERVE = text(
    f"UPDATE send_rate_state SET tokens = {_AVAILABLE} - {_N}, rate = {_RATE}, "
    "updated_at = clock_timestamp() WHERE key = :key RETURNING tokens, rate"
)
# Take if available, in one statement (the row lock never spans a round trip): the
# subquery locks and reads the bucket, the update writes it refilled, less `n` if there.
_TRY_TAKE = text(
    "UPDATE send_rate_state s "
    f"SET tokens = c.available - CASE WHEN c.available >= {_N} THEN {_N} ELSE 0 END, "
    "rate = c.rate, updated_at = c.now "
    f"FROM (SELECT key, clock_timestamp() AS now, {_AVAILABLE} AS available, {_RATE} AS rate "
    "FROM send_rate_state WHERE key = :key FOR UPDATE) c "
    "WHERE s.key = c.key RETURNING c.available, c.rate"
)
_THROTTLED = text(
    f"UPDATE send_rate_state SET rate = GREATEST({_MIN}, LEAST(rate, {_OBSERVED} * {DECREASE_FACTOR})), "
    "tokens = LEAST(tokens, 0) WHERE key = :key RETURNING rate"
)
_SUCCEEDED = text(
    f"UPDATE send_rate_state SET rate = LEAST({_MAX}, rate * power({INCREASE_FACTOR}, {_N} / rate)) "
    f"WHERE key = :key AND rate < {_MAX} RETURNING rate"
)
_CURRENT = text("SELECT rate, tokens FROM send_rate_state WHERE key = :key")


@dataclass(frozen=True)
class Permit:
    """Tokens taken: `rate` is the account-wide rate they were granted at (pass it back to
    `throttled`), `waited` how long the taker slept for them."""

    tokens: float
    rate: float
    waited: float


@dataclass(frozen=True)
class RateState:
    rate: float
    tokens: float


class SendRateLimiter:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        max_rate: float,
        min_rate: float = 1.0,
        burst_seconds: float = 1.0,
        key: str = DEFAULT_KEY,
        metrics: Metrics | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_rate <= 0 or min_rate <= 0 or burst_seconds <= 0:
            raise ValueError("rates and burst must be positive")
        self.sessionmaker = sessionmaker
        self.max_rate = max_rate
        self.min_rate = min(min_rate, max_rate)
        self.burst_seconds = burst_seconds
        self.key = key
        self.metrics = metrics
        self._sleep = sleep

    @classmethod
    def from_settings(
        cls,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> "SendRateLimiter":
        return cls(
            sessionmaker,
            max_rate=settings.ses.max_send_rate,
            min_rate=settings.delivery.min_send_rate,
            burst_seconds=settings.delivery.send_burst_seconds,
            metrics=metrics,
        )

    @property
    def bucket_size(self) -> float:
        """Tokens a full bucket holds at the maximum rate (the largest burst)."""
        return self.max_rate * self.burst_seconds

    def _params(self, **extra: object) -> dict[str, object]:
        return {"key": self.key, "max_rate": self.max_rate, "burst": self.burst_seconds, **extra}

    async def _ensure_row(self, session: AsyncSession) -> None:
        await session.execute(_INSERT, self._params())

    def _observe(self, rate: float) -> None:
        if self.metrics is not None:
            self.metrics.send_rate.set(rate)

    async def reserve(self, n: float = 1) -> tuple[float, float]:
        """Take `n` tokens now, in debt if need be; returns (seconds until they are due,
        rate). One statement; the caller sleeps outside any transaction."""
        for _ in range(2):
            async with self.sessionmaker() as session, session.begin():
                row = (await session.execute(_RESERVE, self._params(n=float(n)))).one_or_none()
                if row is None:
                    await self._ensure_row(session)
                    continue
            tokens, rate = float(row.tokens), float(row.rate)
            self._observe(rate)
            return (max(0.0, -tokens / rate), rate)
        raise RuntimeError("send_rate_state row could not be created")  # pragma: no cover

    async def try_take(self, n: float = 1) -> tuple[bool, float, float]:
        """Take `n` tokens only if they exist now; returns (taken, seconds to wait before
        trying again when not taken, rate)."""
        for _ in range(2):
            async with self.sessionmaker() as session, session.begin():
                row = (await session.execute(_TRY_TAKE, self._params(n=float(n)))).one_or_none()
                if row is None:
                    await self._ensure_row(session)
                    continue
            available, rate = float(row.available), float(row.rate)
            taken = available >= n
            self._observe(rate)
            return (taken, 0.0 if taken else (n - available) / rate, rate)
        raise RuntimeError("send_rate_state row could not be created")  # pragma: no cover

    async def acquire(self, n: float = 1, *, priority: bool = True) -> Permit:
        """Wait until `n` tokens are ours. Transactional mail uses priority; campaign
        batches pass `priority=False` so they never delay transactional mail."""
        if priority:
            wait, rate = await self.reserve(n)
            if wait > 0:
                await self._sleep(wait)
            return Permit(tokens=n, rate=rate, waited=wait)
        waited = 0.0
        while True:
            taken, wait, rate = await self.try_take(n)
            if taken:
                return Permit(tokens=n, rate=rate, waited=waited)
            pause = min(MAX_POLL_SECONDS, max(wait, 0.01))
            await self._sleep(pause)
            waited += pause

    async def throttled(self, permit: Permit) -> float:
        """SES said slow down: ×0.8 of the rate this send was granted at; returns the rate."""
        async with self.sessionmaker() as session, session.begin():
            rate = await session.scalar(
                _THROTTLED,
                {"key": self.key, "min_rate": self.min_rate, "observed": permit.rate},
            )
        new_rate = float(rate) if rate is not None else permit.rate
        self._observe(new_rate)
        return new_rate

    async def succeeded(self, n: float = 1) -> None:
        """`n` sends went through: recover towards the maximum (no write once there)."""
        async with self.sessionmaker() as session, session.begin():
            rate = await session.scalar(
                _SUCCEEDED,
                {"key": self.key, "max_rate": self.max_rate, "n": float(n)},
            )
        if rate is not None:
            self._observe(float(rate))

    async def state(self) -> RateState | None:
        async with self.sessionmaker() as session:
            row = (await session.execute(_CURRENT, {"key": self.key})).one_or_none()
        return None if row is None else RateState(rate=float(row.rate), tokens=float(row.tokens))
