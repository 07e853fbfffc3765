"""The account-wide token bucket in PostgreSQL: bursts, pacing, priority, adaptation,
and one limit shared by several independent processes."""

import asyncio
import time
from collections.abc import Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from datamailer_core.db.engine import create_sessionmaker
from datamailer_core.ratelimit import Permit, SendRateLimiter


def limiter(maker: async_sessionmaker[AsyncSession], max_rate: float = 10.0) -> SendRateLimiter:
    return SendRateLimiter(maker, max_rate=max_rate, min_rate=2.0, burst_seconds=1.0)


async def test_full_bucket_allows_its_burst_then_paces_at_the_rate(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    bucket = limiter(sessionmaker)
    waits = [(await bucket.reserve())[0] for _ in range(13)]

    assert waits[:10] == [0.0] * 10
    # Reservations beyond the bucket queue up one interval (1/rate) apart. The bucket
    # refills while the reservations run (slowly on a busy machine), so each wait may be
    # shorter by the time elapsed since the burst, but never longer, and the spacing holds.
    assert all(
        0 < wait <= expected + 0.02 for wait, expected in zip(waits[10:], (0.1, 0.2, 0.3), strict=True)
    )
    assert [b - a for a, b in zip(waits[10:], waits[11:], strict=False)] == pytest.approx(
        [0.1, 0.1], abs=0.02
    )


async def test_campaign_taker_waits_behind_transactional_reservations(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    bucket = limiter(sessionmaker)
    for _ in range(12):  # the burst, then two reservations in debt
        await bucket.reserve()

    taken, wait, _ = await bucket.try_take(1)

    assert not taken
    # Three tokens short at 10/s: 0.3 s, less the refill since the last reservation.
    assert 0 < wait <= 0.3
    state = await bucket.state()
    # Nothing was taken: the debt is still the two reservations (less the refill since).
    assert state is not None
    assert -2 <= state.tokens < -1.5


async def test_throttling_lowers_the_rate_once_per_observed_rate_down_to_the_floor(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    bucket = limiter(sessionmaker)
    permit = await bucket.acquire()
    assert permit.rate == 10.0

    # Three sends granted at 10/s throttled together lower the rate once.
    rates = [await bucket.throttled(permit) for _ in range(3)]
    assert rates == pytest.approx([8.0, 8.0, 8.0])
    lower = [
        await bucket.throttled(Permit(tokens=1, rate=r, waited=0)) for r in (8.0, 6.4, 5.12, 4.096, 3.2768)
    ]
    assert lower == pytest.approx([6.4, 5.12, 4.096, 3.2768, 2.62144])
    assert await bucket.throttled(Permit(tokens=1, rate=2.62144, waited=0)) == pytest.approx(2.097152)
    assert await bucket.throttled(Permit(tokens=1, rate=2.097152, waited=0)) == 2.0  # the floor
    state = await bucket.state()
    assert state is not None
    assert state.tokens <= 0


async def test_success_recovers_slowly_and_never_above_the_maximum(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    bucket = limiter(sessionmaker)
    await bucket.reserve()
    await bucket.throttled(Permit(tokens=1, rate=5.0, waited=0))  # rate 4

    for _ in range(4):  # one second's worth of sends at 4/s
        await bucket.succeeded()
    state = await bucket.state()
    assert state is not None
    assert state.rate == pytest.approx(4 * 1.05, rel=0.01)

    await bucket.succeeded(10_000)
    state = await bucket.state()
    assert state is not None
    assert state.rate == 10.0


async def test_lowering_the_configured_maximum_takes_effect_at_once(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await limiter(sessionmaker, max_rate=50.0).reserve()

    _, rate = await limiter(sessionmaker, max_rate=5.0).reserve()

    assert rate == 5.0


@pytest.fixture
def three_processes(make_database: Callable[[], str]) -> Callable[[], list[SendRateLimiter]]:
    url = make_database()

    def make() -> list[SendRateLimiter]:
        # Separate engines: separate connection pools, as separate processes have.
        engines = [create_async_engine(url, pool_size=5) for _ in range(3)]
        return [SendRateLimiter(create_sessionmaker(e), max_rate=20, burst_seconds=1.0) for e in engines]

    return make


async def test_processes_sharing_the_bucket_stay_within_one_rate(
    three_processes: Callable[[], list[SendRateLimiter]],
) -> None:
    limiters = three_processes()
    granted: list[float] = []
    start = time.monotonic()
    deadline = start + 1.5

    async def take(bucket: SendRateLimiter) -> None:
        while time.monotonic() < deadline:
            await bucket.acquire()
            granted.append(time.monotonic() - start)

    try:
        await asyncio.gather(*(take(bucket) for bucket in limiters for _ in range(5)))
    finally:
        for bucket in limiters:
            await bucket.sessionmaker.kw["bind"].dispose()

    within = [t for t in granted if t <= 1.5]
    # A bucket of 20 plus 20/s for 1.5 s: 50 at most, however many takers.
    assert 40 <= len(within) <= 51, len(within)
